"""State files that hold secrets (control tokens, passwords): readable by their owner only."""

from __future__ import annotations

from pathlib import Path


def write_secret(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600, set before any secret byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text, encoding="utf-8")
    return path
