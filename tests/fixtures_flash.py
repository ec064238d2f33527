"""Fixtures for the flash tests."""
