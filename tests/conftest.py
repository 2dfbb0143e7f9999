"""Shared pytest set-up for tests/.

* The Hugging Face hub is never reached: ``HF_HUB_OFFLINE=1`` (diffusers is a test oracle
  only, loaded from weights the tests make themselves).
* ``repo_root`` is the repository's top folder, for tests that read its files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
