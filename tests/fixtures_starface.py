"""Fixtures for the starface tests (a pytest plugin registered in tests/conftest.py)."""
