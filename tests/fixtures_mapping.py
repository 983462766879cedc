"""Fixtures for the mapping tests (a pytest plugin registered in tests/conftest.py)."""
