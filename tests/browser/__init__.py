"""End-to-end tests in headless Chromium (a package so its conftest does not shadow tests/conftest.py)."""
