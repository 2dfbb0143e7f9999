"""Data for DDPM: CIFAR-10 (official archive, shipped sample), image folders, training batches.

Pixel convention (paper Section 4, original ``normalize_data``): a uint8 pixel ``v`` in
{0..255} becomes ``x = v / 127.5 - 1`` in [-1, 1] (:func:`from_uint8`); a model output
``x`` goes back with ``round((x + 1) * 127.5)`` clipped to [0, 255] (:func:`to_uint8`). The
paper's decoder (Eq. 13) treats exactly these 256 values ``v / 127.5 - 1`` as the data grid.

Layouts: arrays of *stored* images are uint8 NHWC ``[N, H, W, 3]`` (numpy), as in the CIFAR-10
files and in PNGs; tensors fed to the network are float32 NCHW ``[N, 3, H, W]`` in [-1, 1].

What lives here:

* :func:`load_sample`: the small pixel-exact CIFAR-10 sample shipped in ``ddpm_ref/assets``
  (training images 0..1023 and test images 0..255; provenance in ``assets/README.md``).
* :func:`download_cifar10`, :func:`load_cifar10`: the official CIFAR-10 python archive
  (URL, size and MD5 below), checked before use; a missing, truncated or corrupted archive or
  batch file raises :class:`DataFileError` naming the file and what was expected.
* :func:`load_image_folder`: ``root/<class>/<image>.png|jpg`` -> uint8 NHWC + labels.
* :class:`BatchStream`: the deterministic, resumable, DDP-aware stream of augmented training
  batches (random left-right flip as in the original recipe).
* :class:`ImageDataset`: a plain ``torch.utils.data.Dataset`` for evaluation passes.
* :func:`make_grid`, :func:`save_image_grid`: PNG grids with Pillow (no torchvision).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "CIFAR10_ARCHIVE_SIZE",
    "CIFAR10_ARCHIVE_NAME",
    "CIFAR10_DIRNAME",
    "CIFAR10_BATCH_MD5",
    "SAMPLE_PATH",
    "SAMPLE_SOURCE",
    "DataFileError",
    "load_sample",
    "md5_file",
    "verify_archive",
    "download_cifar10",
    "extract_cifar10",
    "read_cifar10_batch",
    "load_cifar10",
    "load_image_folder",
    "from_uint8",
    "to_uint8",
    "make_grid",
    "save_image_grid",
    "ImageDataset",
    "BatchStream",
]

#: Label index -> class name, in the official order of ``batches.meta``.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: The official CIFAR-10 "python version" archive (Krizhevsky 2009).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE_SIZE = 170_498_071  # bytes
CIFAR10_ARCHIVE_NAME = "cifar-10-python.tar.gz"
CIFAR10_DIRNAME = "cifar-10-batches-py"
#: MD5 of each extracted batch file of the official archive.
CIFAR10_BATCH_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_SPLIT_FILES = {
    "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    "test": ("test_batch",),
}
#: Images per batch file in the official archive (5 x 10000 train, 1 x 10000 test).
CIFAR10_IMAGES_PER_BATCH = 10_000

#: The shipped pixel-exact sample (see ``ddpm_ref/assets/README.md``).
SAMPLE_PATH = Path(__file__).resolve().parent / "assets" / "cifar10_sample.npz"
#: Provenance string to pass as ``source`` when computing FID statistics from the sample.
SAMPLE_SOURCE = "ddpm_ref/assets/cifar10_sample.npz (pixel-exact CIFAR-10 subset)"


class DataFileError(OSError):
    """A data file is missing, truncated, corrupted or not in the expected format.

    The message names the file and says what was expected (size, checksum, keys, shape).
    Bad *arguments* (an unknown split, a wrong dtype) raise ``ValueError`` instead.
    """


# --------------------------------------------------------------------------------------------
# the shipped sample
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# the official CIFAR-10 archive
# --------------------------------------------------------------------------------------------


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def verify_archive(
    path: str | os.PathLike, md5: str = CIFAR10_MD5, size: int | None = CIFAR10_ARCHIVE_SIZE
) -> Path:
    """Check that ``path`` is the expected archive: it exists, has ``size`` bytes (if given)
    and the MD5 ``md5``. Returns the path; raises :class:`DataFileError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"archive not found: {path}")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        kind = "truncated" if actual_size < size else "too large"
        raise DataFileError(
            f"{path} is {kind}: {actual_size} bytes, expected {size} bytes "
            f"(delete it and download again from {CIFAR10_URL})"
        )
    actual_md5 = md5_file(path)
    if actual_md5 != md5.lower():
        raise DataFileError(
            f"{path} is corrupted: MD5 {actual_md5}, expected {md5.lower()} "
            "(delete it and download again)"
        )
    return path


def download_cifar10(
    root: str | os.PathLike,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    size: int | None = CIFAR10_ARCHIVE_SIZE,
    progress: bool = True,
) -> Path:
    """Download, verify and extract the official CIFAR-10 python archive into ``root``.

    The archive is streamed to ``root/cifar-10-python.tar.gz.part`` (with a tqdm progress bar),
    its size and MD5 are checked, and only then is it renamed and extracted to
    ``root/cifar-10-batches-py``. An archive already in ``root`` that passes the check is reused;
    one that fails it is replaced. ``url``, ``md5`` and ``size`` exist so that tests and mirrors
    can point elsewhere (``file://`` URLs work).

    Returns:
        The extracted directory ``root/cifar-10-batches-py``.

    Raises:
        DataFileError: the download fails or the downloaded file has the wrong size/MD5.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / CIFAR10_ARCHIVE_NAME
    if archive.is_file():
        try:
            verify_archive(archive, md5=md5, size=size)
        except DataFileError as exc:
            tqdm.write(f"existing archive rejected ({exc}); downloading again")
            archive.unlink()
    if not archive.is_file():
        part = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                total = response.headers.get("Content-Length")
                total = int(total) if total is not None else size
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {CIFAR10_ARCHIVE_NAME}",
                    disable=not progress,
                ) as bar:
                    while True:
                        block = response.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
                        bar.update(len(block))
        except OSError as exc:  # URLError, HTTPError, timeouts, disk errors
            part.unlink(missing_ok=True)
            raise DataFileError(f"download of {url} to {part} failed: {exc}") from exc
        try:
            verify_archive(part, md5=md5, size=size)
        except DataFileError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, archive)
    return extract_cifar10(archive, root)


def extract_cifar10(archive: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Extract ``cifar-10-batches-py/`` from a (verified) archive into ``root``.

    Extraction goes to a temporary directory inside ``root`` first and is moved into place
    only when complete, so an interrupted run never leaves a half-filled directory. Members
    outside ``cifar-10-batches-py/`` or that are not regular files/directories are refused.

    Raises:
        DataFileError: the archive cannot be read as gzip/tar or lacks the batch files.
    """
    archive, root = Path(archive), Path(root)
    target = root / CIFAR10_DIRNAME
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-extract-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for m in members:
                    name = m.name.lstrip("./")
                    if not (name == CIFAR10_DIRNAME or name.startswith(CIFAR10_DIRNAME + "/")):
                        raise DataFileError(
                            f"{archive}: unexpected member {m.name!r}; expected only "
                            f"{CIFAR10_DIRNAME}/..."
                        )
                    if not (m.isfile() or m.isdir()):
                        raise DataFileError(f"{archive}: member {m.name!r} is not a plain file")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4; members were checked above
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, DataFileError):
                raise
            raise DataFileError(
                f"cannot extract {archive}: {exc} (expected a gzip-compressed tar archive "
                f"holding {CIFAR10_DIRNAME}/)"
            ) from exc
        extracted = tmp / CIFAR10_DIRNAME
        missing = [
            n for files in _SPLIT_FILES.values() for n in files if not (extracted / n).is_file()
        ]
        if missing:
            raise DataFileError(f"{archive} lacks batch files {missing} under {CIFAR10_DIRNAME}/")
        if target.exists():
            shutil.rmtree(target)
        os.replace(extracted, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only builds what CIFAR-10 batch files contain (dicts, lists, bytes and
    numpy arrays), so a tampered file cannot run code when it is read."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a CIFAR-10 batch")
        if module == "numpy.core.multiarray":  # pickles written with numpy 1.x
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar10_batch(
    path: str | os.PathLike, expected_images: int | None = CIFAR10_IMAGES_PER_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR-10 batch file (``data_batch_i`` or ``test_batch``).

    The file is a pickled dict (bytes keys) with ``data``: uint8 ``[n, 3072]``, each row the
    1024 red, then 1024 green, then 1024 blue values of a 32x32 image in row-major order; and
    ``labels``: n ints in 0..9.

    Returns:
        images uint8 ``[n, 32, 32, 3]`` (NHWC) and labels int64 ``[n]``.

    Raises:
        DataFileError: missing, truncated or malformed file (the message names the file and
        the expected keys/shape).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"CIFAR-10 batch file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataFileError(
            f"{path} is truncated or not a CIFAR-10 batch pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(obj, dict):
        raise DataFileError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    entries = {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}
    missing = [k for k in ("data", "labels") if k not in entries]
    if missing:
        raise DataFileError(
            f"{path}: missing keys {missing}; expected keys 'data' and 'labels' "
            f"(found {sorted(entries)})"
        )
    data, labels = entries["data"], entries["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataFileError(
            f"{path}: 'data' must be a uint8 array [n, 3072], got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    n = data.shape[0]
    if data.shape[1] != 3072 or (expected_images is not None and n != expected_images):
        want = f"[{expected_images if expected_images is not None else 'n'}, 3072]"
        raise DataFileError(f"{path}: 'data' has shape {list(data.shape)}, expected {want}")
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFileError(f"{path}: 'labels' must be {n} integers, got shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise DataFileError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    images = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


def load_cifar10(
    root: str | os.PathLike,
    split: str = "train",
    download: bool = False,
    verify_checksums: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load an official CIFAR-10 split as uint8 NHWC images and int64 labels.

    Looks for ``root/cifar-10-batches-py``; if it is absent, extracts
    ``root/cifar-10-python.tar.gz`` after verifying its size and MD5; if that is absent too and
    ``download`` is true, downloads it (:func:`download_cifar10`).

    Args:
        root: directory holding the archive and/or the extracted ``cifar-10-batches-py``.
        split: ``"train"`` (50000 images, batches 1..5 in order) or ``"test"`` (10000).
        download: fetch the archive from :data:`CIFAR10_URL` if it is not there.
        verify_checksums: check each batch file's MD5 against :data:`CIFAR10_BATCH_MD5`
            (about 0.1 s per file). Turn off only for data you built yourself.
        progress: show a progress bar while downloading.

    Returns:
        images uint8 ``[N, 32, 32, 3]``, labels int64 ``[N]``, in the official order.

    Raises:
        ValueError: unknown split. DataFileError: data missing (and ``download`` false),
        truncated or corrupted.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    directory = root / CIFAR10_DIRNAME
    if not directory.is_dir():
        archive = root / CIFAR10_ARCHIVE_NAME
        if download:  # reuses a valid archive, replaces a damaged one
            download_cifar10(root, progress=progress)
        elif archive.is_file():
            verify_archive(archive)
            extract_cifar10(archive, root)
        else:
            raise DataFileError(
                f"CIFAR-10 not found under {root}: expected {directory} or {archive} "
                f"(pass download=True, or fetch {CIFAR10_URL} yourself)"
            )
    images, labels = [], []
    for name in _SPLIT_FILES[split]:
        path = directory / name
        if not path.is_file():
            raise DataFileError(
                f"CIFAR-10 batch file not found: {path} (expected {', '.join(_SPLIT_FILES[split])}"
                f" in {directory}; delete the directory to re-extract)"
            )
        if verify_checksums:
            actual = md5_file(path)
            if actual != CIFAR10_BATCH_MD5[name]:
                raise DataFileError(
                    f"{path} is corrupted or not the official file: MD5 {actual}, expected "
                    f"{CIFAR10_BATCH_MD5[name]} (delete {directory} to re-extract)"
                )
        x, y = read_cifar10_batch(path, CIFAR10_IMAGES_PER_BATCH)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_LOSSLESS_EXTENSIONS = (".png",)


def load_image_folder(
    root: str | os.PathLike,
    image_size: int | tuple[int, int] = 32,
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
        image_size: ``S`` or ``(height, width)`` every image must have (default 32x32).
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
        raise ValueError(f"image folder not found or not a directory: {root}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
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
        raise ValueError(f"no images with extensions {exts} in class subfolders of {root}")
    images = np.empty((len(files), height, width, 3), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc=f"reading {root.name}", disable=not progress)):
        try:
            with Image.open(path) as im:
                if im.size != (width, height):
                    raise DataFileError(
                        f"{path}: image is {im.size[0]}x{im.size[1]} (width x height), expected "
                        f"{width}x{height}; resize the images or pass image_size"
                    )
                if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise DataFileError(
                        f"{path}: {im.mode!r} images (16/32-bit) are not supported; expected "
                        "8-bit RGB, RGBA, greyscale or palette"
                    )
                images[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except DataFileError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataFileError(f"cannot read image {path}: {exc}") from exc
    labels = np.asarray(labels, dtype=np.int64)
    if return_info:
        info = {
            "classes": list(classes),
            "files": [str(p) for p in files],
            "lossless": all(p.suffix.lower() in _LOSSLESS_EXTENSIONS for p in files),
        }
        return images, labels, info
    return images, labels


# --------------------------------------------------------------------------------------------
# pixel conversions and grids
# --------------------------------------------------------------------------------------------


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
    """Save :func:`make_grid` of uint8 NHWC images as a PNG at ``path`` (parents created)."""
    from PIL import Image

    path = Path(path)
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid, mode="RGB").save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------
# torch data utilities
# --------------------------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset over uint8 NHWC images for evaluation passes (no augmentation).

    ``ds[i]`` is ``(x, y)``: x float32 ``[3, H, W]`` in [-1, 1] (:func:`from_uint8`), y the
    int64 label (0 if no labels were given). Use with ``torch.utils.data.DataLoader`` (and a
    ``DistributedSampler`` for multi-GPU evaluation). Training uses :class:`BatchStream`.
    """

    def __init__(self, images, labels=None):
        self.images = torch.from_numpy(np.ascontiguousarray(_as_uint8_nhwc(images)))
        n = self.images.shape[0]
        if labels is None:
            labels = np.zeros(n, dtype=np.int64)
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {n} integers, got {labels.dtype} {labels.shape}")
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        x = self.images[i].permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0
        return x, self.labels[i]


def _derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit generator seed derived from (seed, epoch, stream) with numpy's SeedSequence,
    so that nearby user seeds/epochs give unrelated generator states."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


class BatchStream:
    """Deterministic, resumable, DDP-aware stream of augmented training batches.

    **Order.** The stream is the endless concatenation of per-epoch permutations
    ``pi_0, pi_1, ...`` of the N image indices; ``pi_e = torch.randperm(N)`` drawn from a
    ``torch.Generator`` seeded from ``(seed, e)``. The sample at global stream position
    ``g = 0, 1, 2, ...`` is image ``pi_{g // N}[g % N]``. Batches run across epoch boundaries
    (no sample is dropped, every batch is full), much like the original
    ``repeat().shuffle().batch(drop_remainder=True)`` input pipeline.

    **Flips.** Random left-right flip (the paper's only augmentation) is decided *per stream
    position*: a Bernoulli(1/2) vector ``f_e`` of length N from a second generator seeded from
    ``(seed, e)``; the sample at position g is flipped iff ``f_{g // N}[g % N]``. So the flip of
    a sample does not depend on which rank draws it.

    **Global batch and ranks.** Global batch k is positions ``[k B, (k + 1) B)`` with
    ``B = batch_size`` (the global batch, 128 in the paper). With ``world_size`` W (B % W == 0)
    rank r receives the contiguous slice ``[k B + r B/W, k B + (r + 1) B/W)``; concatenating the
    ranks' micro-batches in rank order gives exactly the single-process batch k, bit for bit,
    for any W. Every rank computes the same permutation locally: no communication is needed.

    **Resume.** :meth:`state_dict` holds ``epoch`` and ``position`` (index within the epoch
    of the next global batch), plus the seed, N and B for checking. It is identical on every
    rank and independent of ``world_size``, so a run can resume on a different number of
    GPUs. :meth:`load_state_dict` into a fresh stream continues with the same batches.

    Usage in a training loop::

        stream = BatchStream(images_uint8, batch_size=128, seed=0, rank=rank, world_size=ws)
        x0 = stream.next()                  # float32 [128 // ws, 3, 32, 32] in [-1, 1]
        ckpt["data"] = stream.state_dict()  # ... later: stream.load_state_dict(ckpt["data"])

    Args:
        images: uint8 ``[N, H, W, 3]`` (numpy or CPU tensor), e.g. from :func:`load_cifar10`.
        batch_size: the *global* batch size B.
        seed: non-negative int; fixes the whole stream.
        rank, world_size: this process's place in DDP (``torch.distributed`` rank/world size).
        flip: apply random left-right flips.
        device: where :meth:`next` puts the batch (``None``: CPU). Pinned memory and a
            non-blocking copy are used for CUDA.
    """

    _STATE_VERSION = 1

    def __init__(
        self,
        images,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
        device: str | torch.device | None = None,
    ):
        images = _as_uint8_nhwc(images)
        if images.shape[0] < 1:
            raise ValueError("images must hold at least one image")
        for name, v in (("batch_size", batch_size), ("seed", seed), ("world_size", world_size)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if batch_size < 1 or world_size < 1 or seed < 0:
            raise ValueError(
                f"need batch_size >= 1, world_size >= 1, seed >= 0; got {batch_size}, "
                f"{world_size}, {seed}"
            )
        if batch_size % world_size:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by world_size {world_size}"
            )
        if not isinstance(rank, int | np.integer) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
        self.images = np.ascontiguousarray(images)  # uint8 NHWC, kept in numpy
        self.num_images = int(images.shape[0])
        self.batch_size = int(batch_size)
        self.local_batch_size = int(batch_size) // int(world_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.flip = bool(flip)
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self.position = 0
        self._cache_epoch = -1
        self._perm = self._flips = None

    # -- the deterministic order -------------------------------------------------------------

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pi_e, f_e)``: the permutation (int64 [N]) and flip flags (bool [N]) of an epoch."""
        if epoch == self._cache_epoch:
            return self._perm, self._flips
        g = torch.Generator(device="cpu")
        g.manual_seed(_derived_seed(self.seed, epoch, 0))
        perm = torch.randperm(self.num_images, generator=g)
        g.manual_seed(_derived_seed(self.seed, epoch, 1))
        flips = torch.rand(self.num_images, generator=g) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        self._cache_epoch, self._perm, self._flips = epoch, perm, flips
        return perm, flips

    def _positions(self, start_epoch: int, start_pos: int, count: int):
        """Image indices and flip flags of ``count`` consecutive stream positions."""
        idx, flp = [], []
        epoch, pos = start_epoch, start_pos
        while count > 0:
            perm, flips = self.epoch_order(epoch)
            take = min(count, self.num_images - pos)
            idx.append(perm[pos : pos + take])
            flp.append(flips[pos : pos + take])
            count -= take
            pos += take
            if pos == self.num_images:
                epoch, pos = epoch + 1, 0
        return torch.cat(idx), torch.cat(flp)

    def _advance(self, epoch: int, pos: int, count: int) -> tuple[int, int]:
        g = epoch * self.num_images + pos + count
        return g // self.num_images, g % self.num_images

    # -- the public interface ----------------------------------------------------------------

    @property
    def step(self) -> int:
        """Number of global batches served so far (``(epoch N + position) / B``)."""
        return (self.epoch * self.num_images + self.position) // self.batch_size

    def next_with_indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`next`, also returning this rank's image indices (int64 [B_local]) and
        flip flags (bool [B_local])."""
        start_epoch, start_pos = self._advance(
            self.epoch, self.position, self.rank * self.local_batch_size
        )
        idx, flp = self._positions(start_epoch, start_pos, self.local_batch_size)
        # Gather, flip and transpose the uint8 pixels in numpy (single-threaded and cheap);
        # the float conversion happens on the target device, so a GPU receives 1 byte/pixel.
        idx_np, flp_np = idx.numpy(), flp.numpy()
        x = self.images[idx_np]  # uint8 [b, H, W, 3], a copy
        if flp_np.any():
            x[flp_np] = x[flp_np, :, ::-1]  # reverse the W axis of NHWC
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        if self.device is not None and self.device.type != "cpu":
            if self.device.type == "cuda":
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True)
            x = x.to(torch.float32) / 127.5 - 1.0
        else:  # numpy float math: same IEEE float32 results as torch, no thread start-up cost
            x = torch.from_numpy(x.numpy().astype(np.float32) / np.float32(127.5) - np.float32(1.0))
        self.epoch, self.position = self._advance(self.epoch, self.position, self.batch_size)
        return x, idx, flp

    def next(self) -> torch.Tensor:
        """This rank's part of the next global batch: float32 ``[B / world_size, 3, H, W]`` in
        [-1, 1] (``v / 127.5 - 1``), on ``device``. Advances the stream by one global batch."""
        return self.next_with_indices()[0]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        return self.next()

    def state_dict(self) -> dict:
        """Plain-python state: ``{"version", "seed", "num_images", "batch_size", "flip",
        "epoch", "position", "step"}``; the same on every rank, independent of world size."""
        return {
            "version": self._STATE_VERSION,
            "seed": self.seed,
            "num_images": self.num_images,
            "batch_size": self.batch_size,
            "flip": self.flip,
            "epoch": self.epoch,
            "position": self.position,
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output. The seed, N, batch size and flip setting must
        match this stream (else ``ValueError``); rank and world size may differ."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        need = ("version", "seed", "num_images", "batch_size", "flip", "epoch", "position")
        missing = [k for k in need if k not in state]
        if missing:
            raise ValueError(f"BatchStream state lacks keys {missing}")
        if state["version"] != self._STATE_VERSION:
            raise ValueError(f"unsupported BatchStream state version {state['version']}")
        for key in ("seed", "num_images", "batch_size", "flip"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"BatchStream state has {key}={state[key]!r} but this stream has "
                    f"{key}={getattr(self, key)!r}; the data order would not continue"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.num_images:
            raise ValueError(f"invalid epoch/position {epoch}/{position} for N={self.num_images}")
        if (epoch * self.num_images + position) % self.batch_size:
            raise ValueError("epoch/position is not at a global batch boundary")
        self.epoch, self.position = epoch, position
