"""Single units of the console: language choice, cookie signing, redirect targets, password hashes."""

from __future__ import annotations

import pytest

from service.console import i18n
from service.console.context import safe_next
from service.console.sessions import CookieSigner
from service.core.passwords import check_format, hash_password, verify_password


@pytest.mark.parametrize(
    ("cookie", "header", "chosen"),
    [
        (None, "de-DE,de;q=0.9,en;q=0.8", "de"),
        (None, "fr-FR,en-GB;q=0.8", "en"),
        ("de", "en-US", "de"),
        ("xx", "", "en"),
    ],
)
def test_language_choice(cookie: str | None, header: str, chosen: str) -> None:
    assert i18n.choose(cookie, header) == chosen


def test_every_text_exists_in_both_languages() -> None:
    assert set(i18n.TEXTS["en"]) == set(i18n.TEXTS["de"])
    assert i18n.translator("de")("no.such.key") == "no.such.key"


def test_cookie_signature_is_checked() -> None:
    signer = CookieSigner("k" * 40)
    signed = signer.sign("abc")
    assert signer.unsign(signed) == "abc"
    assert signer.unsign(signed[:-1] + ("0" if signed[-1] != "0" else "1")) is None
    assert CookieSigner("j" * 40).unsign(signed) is None
    assert signer.unsign("no-dot") is None


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("/users?q=a", "/users?q=a"),
        ("//evil.example", "/"),
        ("https://evil.example", "/"),
        ("/\\evil", "/"),
        ("", "/"),
    ],
)
def test_only_local_paths_are_redirect_targets(given: str, kept: str) -> None:
    assert safe_next(given) == kept


def test_password_hashes() -> None:
    stored = hash_password("a long passphrase")
    assert verify_password("a long passphrase", stored)
    assert not verify_password("a long passphras", stored)
    for bad in ("plain", "scrypt$3$8$1$c2FsdA$aGFzaA", "scrypt$16384$8$1$!!$??"):
        with pytest.raises(ValueError, match="console hash-password"):
            check_format(bad)
