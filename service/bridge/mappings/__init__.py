"""Built-in mapping tables (``default.de.toml``, ``default.en.toml``), read by ``service.bridge.mapping``.

They are package data so that ``importlib.resources`` finds them in an installed wheel, and they
double as the documented example an administrator copies and edits.
"""
