"""Hypothesis profiles for the fuzz suite: the default runs a few thousand examples in CI; ``long``
(``pytest --hypothesis-profile=long tests/web/test_fuzz.py``) runs for hours by hand."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("long", max_examples=1_000_000, deadline=None)
