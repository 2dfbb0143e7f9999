"""Data specs: the strings the command line's ``--data`` takes, and the images they name.

``sample[:train|test]``, ``cifar10:<root>``, ``folder:<dir>``, ``npz:<file>[:key]`` (see
:func:`load_images`). Every failure names the file and says what was expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import describe_arrays, npz_contents, npz_load
from ..errors import FileFormatError
from .cifar10 import load_cifar10
from .folder import load_image_folder
from .sample import load_sample

__all__ = ["DATA_SPECS", "load_images", "load_npz_images"]

#: The forms of a data spec, as shown in messages and help texts.
DATA_SPECS = "sample[:train|test], cifar10:<root>, folder:<dir> or npz:<file>[:key]"

_NPZ_EXPECTED = "expected an .npz file (numpy.savez) holding uint8 [N, H, W, 3] images"


def load_npz_images(path: str, key: str = "", split: str = "train") -> tuple[np.ndarray, str]:
    """The uint8 ``[N, H, W, 3]`` image array of an ``.npz`` file, and its key.

    Without ``key``: ``x_<split>`` if present, else the file's only uint8 ``[N, H, W, 3]`` array.
    Raises :class:`~ddpm_ref.errors.FileFormatError` naming the file (and the array) for a
    missing, damaged or wrongly shaped file, with the ``npz:<file>:<key>`` form as the fix where
    a key would help."""
    contents = npz_contents(path, expected=_NPZ_EXPECTED)
    if key:
        if key not in contents:
            raise FileFormatError(
                f"{path}: has no array {key!r} (it has {describe_arrays(contents)}); use npz:{path}:<key>"
            )
    elif f"x_{split}" in contents:
        key = f"x_{split}"
    else:
        rgb = [k for k, (shape, dt) in contents.items() if len(shape) == 4 and shape[-1] == 3]
        if len(rgb) == 1:
            key = rgb[0]
        elif len(rgb) > 1:
            raise FileFormatError(
                f"{path}: holds several image arrays ({', '.join(rgb)}); choose one with npz:{path}:<key>"
            )
        elif len(contents) == 1:
            key = next(iter(contents))
        else:
            raise FileFormatError(
                f"{path}: no [N, H, W, 3] image array among {describe_arrays(contents)}; {_NPZ_EXPECTED} "
                f"(choose an array with npz:{path}:<key>)"
            )
    shape, dtype = contents[key]
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1):
        raise FileFormatError(
            f"{path}[{key}]: is {dtype} {list(shape)}, single-channel (greyscale) images; expected RGB images "
            "uint8 [N, H, W, 3] (repeat the channel three times)"
        )
    if len(shape) == 4 and shape[1] == 3 and shape[-1] != 3:
        raise FileFormatError(
            f"{path}[{key}]: is {dtype} {list(shape)}, channels first; expected channels last, uint8 "
            "[N, H, W, 3] (transpose with x.transpose(0, 2, 3, 1))"
        )
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise FileFormatError(f"{path}[{key}]: is {dtype} {list(shape)}; expected uint8 [N, H, W, 3] images in 0..255")
    images = npz_load(path, [key], expected=_NPZ_EXPECTED)[key]
    return images, key


def load_images(
    spec: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    download: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Load uint8 NHWC images from a data spec.

    ``spec`` is one of:

    - ``"sample"`` / ``"sample:train"`` / ``"sample:test"``: the pixel-exact CIFAR-10 sample shipped
      in the package (1024 training, 256 test images); without a suffix, ``split`` decides;
    - ``"cifar10:<root>"``: the official CIFAR-10 python archive under ``root``
      (:func:`ddpm_ref.data.load_cifar10`; ``download=True`` fetches it), split ``split``;
    - ``"folder:<dir>"``: ``dir/<class>/<image>.png|jpg`` (:func:`ddpm_ref.data.load_image_folder`);
      images must already be ``image_size`` square (any one size if ``image_size`` is None);
    - ``"npz:<file>"`` or ``"npz:<file>:<key>"``: a uint8 [N, H, W, 3] array in an .npz file (default
      key ``x_<split>``, or the file's only [N, H, W, 3] array; :func:`load_npz_images`).

    Returns ``(images, info)`` with ``info = {"source", "split", "num_images", "pixel_exact"}``;
    ``pixel_exact`` is False for JPEG folders (never compute FID reference statistics from them).
    Raises ``ValueError`` (:class:`~ddpm_ref.errors.FileFormatError` for files) for a bad spec,
    missing path or unreadable file, :class:`ddpm_ref.data.DataFileError` (an ``OSError``) for a
    damaged CIFAR-10 archive or image file.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--data {spec!r}: empty data spec; expected {DATA_SPECS}")
    kind, _, arg = spec.partition(":")
    pixel_exact = True
    if kind == "sample":
        sp = arg or split
        if sp not in ("train", "test"):
            raise ValueError(f"data spec {spec!r}: the shipped sample has splits 'train' and 'test', got {sp!r}")
        images = load_sample(sp)[0]
        split = sp
    elif kind == "cifar10":
        if not arg:
            raise ValueError("data spec 'cifar10:<root>' needs the directory, e.g. cifar10:data/cifar10")
        images = load_cifar10(arg, split, download=download, progress=progress)[0]
    elif kind == "folder":
        if not arg:
            raise ValueError("data spec 'folder:<dir>' needs the directory, e.g. folder:data/images")
        images, _, info = load_image_folder(arg, image_size=image_size, return_info=True, progress=progress)
        pixel_exact = bool(info["lossless"])
    elif kind == "npz":
        path, _, key = arg.partition(":")
        if not path:
            raise ValueError("data spec 'npz:<file>[:key]' needs the file, e.g. npz:data/images.npz")
        if not Path(path).is_file():
            raise FileFormatError(f"{path}: npz file not found; {_NPZ_EXPECTED}")
        images, _ = load_npz_images(path, key, split)
    else:
        raise ValueError(f"unknown data spec {spec!r}; expected {DATA_SPECS}")
    if images.shape[0] == 0:
        raise ValueError(f"data spec {spec!r}: holds no images; give a data set with at least one image")
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        raise ValueError(
            f"data spec {spec!r}: images are {images.shape[1]}x{images.shape[2]}, but the model expects "
            f"{image_size}x{image_size}; use {image_size}x{image_size} images (to train a model at their size: "
            f"--set model.resolution={images.shape[1]})"
        )
    info = {"source": spec, "split": split, "num_images": int(images.shape[0]), "pixel_exact": pixel_exact}
    return images, info
