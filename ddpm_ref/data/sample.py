"""The small pixel-exact CIFAR-10 sample shipped in ``ddpm_ref/assets`` (training images
0..1023 and test images 0..255; provenance in ``assets/README.md``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataFileError

__all__ = ["SAMPLE_PATH", "SAMPLE_SOURCE", "load_sample"]

#: The shipped pixel-exact sample (see ``ddpm_ref/assets/README.md``).
SAMPLE_PATH = Path(__file__).resolve().parents[1] / "assets" / "cifar10_sample.npz"
#: Provenance string to pass as ``source`` when computing FID statistics from the sample.
SAMPLE_SOURCE = "ddpm_ref/assets/cifar10_sample.npz (pixel-exact CIFAR-10 subset)"


def load_sample(split: str = "train", return_index: bool = False):
    """Load the pixel-exact CIFAR-10 sample shipped with the package.

    Args:
        split: ``"train"`` (official training images 0..1023, original order) or ``"test"``
            (official test images 0..255).
        return_index: also return the official image indices.

    Returns:
        ``(images, labels)`` or ``(images, labels, index)``: images uint8 ``[N, 32, 32, 3]``
        (NHWC, RGB), labels int64 ``[N]`` in 0..9 (names in :data:`CIFAR10_CLASSES`), index int64
        ``[N]`` (position in the official split).

    Raises:
        ValueError: unknown split. DataFileError: the shipped file is missing or damaged.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not SAMPLE_PATH.is_file():
        raise DataFileError(
            f"shipped sample not found: {SAMPLE_PATH} (reinstall the package, or rebuild it "
            "with tools/make_sample.py)"
        )
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as f:
            images = f[f"x_{split}"]
            labels = f[f"y_{split}"].astype(np.int64)
            index = f[f"{split}_index"].astype(np.int64)
    except (KeyError, ValueError, OSError, EOFError) as exc:
        raise DataFileError(
            f"cannot read {SAMPLE_PATH}: {exc}; expected arrays x_{split}, y_{split}, "
            f"{split}_index"
        ) from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataFileError(
            f"{SAMPLE_PATH}: x_{split} is {images.dtype} {images.shape}, expected uint8 "
            "[N, 32, 32, 3]"
        )
    if labels.shape != (images.shape[0],) or index.shape != (images.shape[0],):
        raise DataFileError(f"{SAMPLE_PATH}: labels/index do not match {images.shape[0]} images")
    return (images, labels, index) if return_index else (images, labels)
