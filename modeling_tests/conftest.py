"""Shared pytest configuration: tests never reach the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "distributed: runs several training processes (slowish; deselect with -m 'not distributed')"
    )
