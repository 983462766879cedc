"""Fixtures for the graph tests (a pytest plugin registered in tests/conftest.py)."""
