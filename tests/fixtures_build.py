"""Fixtures for the build tests."""
