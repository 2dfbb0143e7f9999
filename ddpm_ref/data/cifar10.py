"""The official CIFAR-10 "python version" archive (Krizhevsky 2009): download, checks, batch files.

:func:`download_cifar10`, :func:`load_cifar10`: the archive (URL, size and MD5 below) is checked
before use; a missing, truncated or corrupted archive or batch file raises
:class:`~ddpm_ref.errors.DataFileError` naming the file and what was expected. Batch files are
unpickled with an allow-list (:class:`_BatchUnpickler`), so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from .._progress import progress as _progress
from ..errors import DataFileError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "CIFAR10_ARCHIVE_SIZE",
    "CIFAR10_ARCHIVE_NAME",
    "CIFAR10_DIRNAME",
    "CIFAR10_BATCH_MD5",
    "CIFAR10_IMAGES_PER_BATCH",
    "md5_file",
    "verify_archive",
    "download_cifar10",
    "extract_cifar10",
    "read_cifar10_batch",
    "load_cifar10",
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

    The archive is streamed to ``root/cifar-10-python.tar.gz.part`` (with a progress bar),
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
            print(f"existing archive rejected ({exc}); downloading again", file=sys.stderr)
            archive.unlink()
    if not archive.is_file():
        part = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
                total = response.headers.get("Content-Length")
                total = int(total) if total is not None else size
                with _progress(
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
