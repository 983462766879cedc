"""The TLS context the bridge uses as a client of Graph, Entra and STARFACE."""

from __future__ import annotations

import ssl
from pathlib import Path


def client_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """System trust plus, when given, one extra CA file (a sandbox's, or a private PKI's)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context
