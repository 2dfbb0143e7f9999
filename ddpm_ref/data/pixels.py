"""Pixel conventions and image grids.

A uint8 pixel ``v`` in {0..255} becomes ``x = v / 127.5 - 1`` in [-1, 1] (:func:`from_uint8`); a
model output ``x`` goes back with ``round((x + 1) * 127.5)`` clipped to [0, 255] (:func:`to_uint8`).
:func:`make_grid`, :func:`save_image_grid`: PNG grids with Pillow (no torchvision).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["from_uint8", "to_uint8", "make_grid", "save_image_grid"]

def _as_uint8_nhwc(images, name: str = "images") -> np.ndarray:
    """Validate uint8 ``[N, H, W, 3]`` (numpy or CPU/GPU torch) and return a numpy array."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"{name} must be uint8, got torch {images.dtype}")
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in 0..255, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [N, H, W, 3] (NHWC, RGB), got {images.shape}")
    return images


def from_uint8(images) -> torch.Tensor:
    """uint8 NHWC pixels -> float32 NCHW in [-1, 1]: ``x = v / 127.5 - 1``.

    Args:
        images: numpy array or tensor, uint8, ``[N, H, W, 3]`` or ``[H, W, 3]``.

    Returns:
        float32 tensor ``[N, 3, H, W]`` (or ``[3, H, W]``) on the input's device (CPU for numpy).
    """
    single = getattr(images, "ndim", 0) == 3
    if single:
        images = images[None]
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 [N, H, W, 3], got {images.dtype} {tuple(images.shape)}"
            )
        t = images
    else:
        t = torch.from_numpy(np.ascontiguousarray(_as_uint8_nhwc(images)))
    x = t.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0
    x = x.contiguous()
    return x[0] if single else x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC numpy: ``clip(round((x + 1) * 127.5), 0, 255)``.

    Rounding is to nearest, ties to even (``torch.round``, like ``np.round`` and ``tf.round``;
    ties are rare: ``x = 0`` gives 127.5 -> 128, where all conventions agree), computed in
    float64 so the result depends on the input precision only through the input itself.
    This inverts :func:`from_uint8` exactly: ``to_uint8(from_uint8(v)) == v`` for every
    uint8 ``v``. Values outside [-1, 1] are clipped.

    Note: the original TF code fed *unquantised* float samples (clipped to [-1, 1]) to its
    in-training Inception metrics and truncated (``astype(uint8)`` after clipping) for image
    summaries; this function is the conventional round-to-nearest used when samples are saved
    as images (PNG) and when FID is computed from uint8 images.

    Args:
        x: float tensor ``[N, 3, H, W]`` or ``[3, H, W]``, finite.

    Returns:
        numpy uint8 ``[N, H, W, 3]`` (or ``[H, W, 3]``).
    """
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        raise ValueError(f"x must be a floating-point torch tensor, got {type(x).__name__}"
                         f"{' ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [N, 3, H, W] or [3, H, W], got {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    v = torch.round((x + 1.0) * 127.5).clamp_(0, 255).to(torch.uint8)
    out = v.permute(0, 2, 3, 1).contiguous().numpy()
    return out[0] if single else out


def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile uint8 NHWC images into one uint8 ``[H', W', 3]`` image, row by row.

    ``nrow`` images per row; ``ceil(N / nrow)`` rows; ``padding`` pixels of ``pad_value``
    between images and around the border. Empty cells of the last row stay ``pad_value``.
    """
    images = _as_uint8_nhwc(images)
    n, h, w, _ = images.shape
    if n == 0:
        raise ValueError("make_grid needs at least one image")
    if not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    if not 0 <= int(pad_value) <= 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value!r}")
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = np.full(
        (nrows * (h + padding) + padding, ncol * (w + padding) + padding, 3),
        pad_value,
        dtype=np.uint8,
    )
    for i in range(n):
        r, c = divmod(i, ncol)
        y0, x0 = padding + r * (h + padding), padding + c * (w + padding)
        grid[y0 : y0 + h, x0 : x0 + w] = images[i]
    return grid


def save_image_grid(
    images, path: str | os.PathLike, nrow: int = 8, padding: int = 2, pad_value: int = 0
) -> Path:
    """Save :func:`make_grid` of uint8 NHWC images as a PNG at ``path`` (parents created; written
    atomically with the umask's file mode, :func:`ddpm_ref._io.atomic_write`)."""
    from PIL import Image

    from .._io import atomic_write

    path = Path(path)
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    image = Image.fromarray(grid, mode="RGB")
    return atomic_write(path, lambda f: image.save(f, format="PNG"), what="PNG image")
