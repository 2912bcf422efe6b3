"""Shared fixtures: the real scans in ``../shared/data`` beside the project root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("NAPARI_MEDSAM_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def case_dir(name: str) -> Path:
    """Return the folder of a real case, failing loudly when the data is missing."""
    path = DATA_DIR / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"real test data {path} is missing: the tests need ../shared/data beside the project"
        )
    return path


def label_names(name: str) -> dict[int, str]:
    meta = json.loads((case_dir(name) / "labels.json").read_text())
    return {int(k): v for k, v in meta.get("labels", {}).items()}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        raise FileNotFoundError(f"real test data folder {DATA_DIR} is missing")
    return DATA_DIR
