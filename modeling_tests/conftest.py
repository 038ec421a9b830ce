"""Shared pytest configuration: tests never reach the network."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: The original-tiny fixture (ground truth from the original implementation), shared next to the repository.
FIXTURE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original-tiny"
