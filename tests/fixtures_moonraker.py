"""Fixtures for the moonraker tests."""
