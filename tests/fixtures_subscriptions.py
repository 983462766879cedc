"""Fixtures for the subscriptions tests (a pytest plugin registered in tests/conftest.py)."""
