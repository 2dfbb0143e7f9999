"""Shared pytest set-up for tests/.

* The Hugging Face hub is never reached: ``HF_HUB_OFFLINE=1`` (diffusers is a test oracle
  only, loaded from weights the tests make themselves).
* ``repo_root`` is the repository's top folder, for tests that read its files.
* ``one_thread``: torch on one thread for a test module (bit-exact comparisons need a fixed
  thread count, and small tensors run fastest on one thread); use it with
  ``pytestmark = pytest.mark.usefixtures("one_thread")``.
* ``toy_feature_net``: a small TorchScript stand-in for the Inception network, for fast FID
  plumbing tests.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class _ToyFeatures(torch.nn.Module):
    """[N, 3, 299, 299] -> [N, 16]: a fixed random conv, tanh, spatial mean."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 7, stride=4)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture
def toy_feature_net(tmp_path) -> Path:
    """Path of a TorchScript file with a small stand-in for Inception (fast FID plumbing tests)."""
    path = tmp_path / "toy_features.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.10, still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_ToyFeatures().eval()), str(path))
    return path
