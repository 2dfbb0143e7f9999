"""Image folders: ``root/<class>/<image>.png|jpg`` -> uint8 NHWC + labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._progress import progress as _progress
from ..errors import DataFileError, short_reason

__all__ = ["load_image_folder"]

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_LOSSLESS_EXTENSIONS = (".png",)


def load_image_folder(
    root: str | os.PathLike,
    image_size: int | tuple[int, int] | None = 32,
    classes: Sequence[str] | None = None,
    extensions: Sequence[str] = _IMAGE_EXTENSIONS,
    return_info: bool = False,
    progress: bool = True,
):
    """Read ``root/<class>/<file>`` images into uint8 NHWC with integer labels.

    Class folders are the subdirectories of ``root``; labels index ``classes`` (default: the
    folder names sorted). Files inside a class are read in sorted name order; names starting
    with ``.`` are skipped, as are files whose extension is not in ``extensions``. Every image
    is converted to RGB with Pillow (greyscale is replicated, palette images expanded, an alpha
    channel dropped). Images are never resized: each must already be ``image_size``.

    Args:
        root: the folder.
        image_size: ``S`` or ``(height, width)`` every image must have (default 32x32); ``None``:
            the size of the first image (all must have it).
        classes: label order, e.g. :data:`CIFAR10_CLASSES` for a CIFAR-10 export; each must be
            a subfolder and no other subfolder may hold images.
        extensions: accepted file extensions (case-insensitive).
        return_info: also return a dict with ``classes``, ``files`` (paths in array order) and
            ``lossless`` (True only if every file is PNG; JPEG is lossy, so such a folder must
            not be used for FID reference statistics).
        progress: show a progress bar.

    Returns:
        ``(images uint8 [N, H, W, 3], labels int64 [N])`` or ``(images, labels, info)``.

    Raises:
        ValueError: bad arguments, no images found, unknown class folders.
        DataFileError: an unreadable file or one of the wrong size (named in the message).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise ValueError(
            f"{root}: image folder not found or not a directory; expected folder:<dir> with images in "
            "<dir>/<class>/*.png"
        )
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if image_size is None:
        image_size = _first_image_size(root, classes, extensions)
    if (
        len(image_size) != 2
        or not all(isinstance(s, int | np.integer) and s > 0 for s in image_size)
    ):
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    height, width = int(image_size[0]), int(image_size[1])
    exts = tuple(e.lower() for e in extensions)
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = subdirs
    else:
        classes = list(classes)
        missing = [c for c in classes if c not in subdirs]
        if missing:
            raise ValueError(f"{root}: class folders {missing} not found (have {subdirs})")
    files, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts:
                files.append(p)
                labels.append(label)
    extra = [
        d
        for d in subdirs
        if d not in classes and any(p.suffix.lower() in exts for p in (root / d).iterdir())
    ]
    if extra:
        raise ValueError(f"{root}: folders {extra} hold images but are not in classes {classes}")
    if not files:
        loose = any(p.is_file() and p.suffix.lower() in exts for p in root.iterdir())
        where = "its images are not in class subfolders" if loose else "no images in class subfolders"
        raise ValueError(f"{root}: {where}; expected <dir>/<class>/<image>{'|'.join(exts)}")
    images = np.empty((len(files), height, width, 3), dtype=np.uint8)
    for i, path in enumerate(_progress(files, desc=f"reading {root.name}", disable=not progress)):
        try:
            with Image.open(path) as im:
                if im.size != (width, height):
                    w, h = im.size
                    todo = (f"resize the images, or train at their size with --set model.resolution={w}"
                            if w == h else "resize the images to a square size")
                    raise DataFileError(
                        f"{path}: image is {w}x{h} (width x height), expected {width}x{height} "
                        f"(the model's resolution); {todo}"
                    )
                if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise DataFileError(
                        f"{path}: {im.mode!r} images (16/32-bit) are not supported; expected "
                        "8-bit RGB, RGBA, greyscale or palette"
                    )
                images[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except DataFileError:
            raise
        except MemoryError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataFileError(
                f"{path}: cannot read the image ({short_reason(exc, path=path)}); expected a PNG or JPEG file"
            ) from exc
    labels = np.asarray(labels, dtype=np.int64)
    if return_info:
        info = {
            "classes": list(classes),
            "files": [str(p) for p in files],
            "lossless": all(p.suffix.lower() in _LOSSLESS_EXTENSIONS for p in files),
        }
        return images, labels, info
    return images, labels


def _first_image_size(root: Path, classes, extensions) -> tuple[int, int]:
    """(height, width) of the first image of the folder (in reading order), or (1, 1) if none."""
    from PIL import Image

    exts = tuple(e.lower() for e in extensions)
    names = list(classes) if classes is not None else sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    for name in names:
        if not (root / name).is_dir():
            continue
        for p in sorted((root / name).iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts:
                try:
                    with Image.open(p) as im:
                        return int(im.size[1]), int(im.size[0])
                except Exception as exc:
                    raise DataFileError(
                        f"{p}: cannot read the image ({short_reason(exc, path=p)}); expected a PNG or JPEG file"
                    ) from exc
    return (1, 1)  # no images: the caller reports that
