"""Training checkpoints: atomic writes, safe loading, and the random-number-generator states.

A checkpoint written by :mod:`ddpm_ref.train` is one ``torch.save`` file holding only tensors and
plain Python values (dicts, lists, str, int, float, bool, None), so it loads with
``torch.load(weights_only=True)``: opening a checkpoint never runs code from the file.
Its keys (see :func:`check_train_checkpoint`):

``format``, ``version``
    :data:`FORMAT` and :data:`VERSION`.
``step``
    Number of optimizer updates done.
``config``
    The :class:`ddpm_ref.config.Config` as a dict (:func:`ddpm_ref.config.config_to_dict`).
``model``, ``ema``
    ``state_dict`` of the U-Net and of its exponential moving average (float32 master copies).
``optimizer``
    Adam's ``state_dict`` (moments and step counts).
``data_stream``
    :meth:`ddpm_ref.data.BatchStream.state_dict` (epoch and position of the data order).
``generator``
    State of the ``torch.Generator`` that draws the timesteps t and the noise eps.
``rng``
    A list with one entry per process (rank) of the global generators: torch CPU, torch CUDA
    (dropout uses the global torch generator), numpy and Python's ``random``, each converted to
    tensors / lists by :func:`capture_global_rng`.
``world_size``, ``torch_version``, ``metrics``
    Process count of the run, the torch version, and the last logged scalars.

Writing (:func:`atomic_save`): the object goes to a temporary file in the destination's
directory, is flushed and ``fsync``-ed, and only then renamed over the destination with
``os.replace`` (atomic on POSIX and Windows); the directory is ``fsync``-ed too. A crash or an
exception while saving leaves the previous file intact; the temporary file is removed on an
exception (a hard kill can leave a ``.<name>.*.tmp`` file behind, which is harmless). The file
gets the umask's mode, like any file ``open()`` creates. A full disk or a permission problem is
reported as :class:`~ddpm_ref.errors.OutputError` naming the file and the cause.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write
from .errors import FileFormatError, short_reason

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "atomic_save",
    "load_checkpoint",
    "torch_load",
    "check_train_checkpoint",
    "capture_global_rng",
    "restore_global_rng",
    "numpy_rng_to_dict",
    "numpy_rng_from_dict",
    "python_rng_to_dict",
    "python_rng_from_dict",
]

FORMAT = "ddpm_ref.train_checkpoint"
VERSION = 1
_REQUIRED = ("format", "version", "step", "config", "model", "ema", "optimizer", "data_stream",
             "generator", "rng", "world_size")


class CheckpointError(FileFormatError):
    """A checkpoint file is missing, unreadable (truncated, not a torch file) or lacks keys
    (a :class:`~ddpm_ref.errors.FileFormatError`, hence a ``ValueError``)."""


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, flush, fsync,
    ``os.replace`` (:func:`ddpm_ref._io.atomic_write`). The file gets the umask's mode (as
    ``open()`` would give it). On any exception the temp file is removed and ``path`` is left as
    it was; a failed write (disk full, permissions) raises :class:`~ddpm_ref.errors.OutputError`
    naming the file and the cause (torch reports it as a chained ``RuntimeError``)."""
    return atomic_write(path, lambda f: torch.save(obj, f), what="checkpoint")


def load_checkpoint(path: str | os.PathLike, map_location="cpu", *, check: bool = True) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    With ``check`` (default) the result must be a training checkpoint of this package
    (:func:`check_train_checkpoint`). Raises :class:`CheckpointError` (a ``ValueError``) naming the
    file if it is missing, truncated, not a torch file, or lacks required keys.
    """
    path = Path(path)
    if not path.is_file():
        where = "is a directory, not a checkpoint file" if path.is_dir() else "checkpoint not found"
        raise CheckpointError(f"{path}: {where}; expected a training checkpoint (<run>/checkpoints/last.pt)")
    obj = torch_load(path, map_location, what="torch checkpoint",
                     expected="expected a training checkpoint written by 'python -m ddpm_ref train'")
    if check:
        check_train_checkpoint(obj, path)
    return obj


def torch_load(path: str | os.PathLike, map_location="cpu", *, what: str = "torch file",
               expected: str = "expected a file written by torch.save") -> object:
    """``torch.load(path, weights_only=True)`` with every failure as :class:`CheckpointError` naming
    the file: not a torch file (text, random bytes), truncated archive, objects other than tensors
    and plain values (never unpickled, so a file cannot run code), or -- checked here because
    ``torch.load`` does not -- a CRC-32 mismatch in the zip archive (a flipped bit)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # truncated zips surface as RuntimeError, KeyError, EOFError, ...
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            found = re.search(r"(?:[Uu]nsupported global:? GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
            obj = f" (a {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refusing to load Python objects other than tensors and plain values{obj} (loading them "
                f"could run code); {expected}"
            ) from exc
        raise CheckpointError(f"{path}: {_diagnose_torch_file(path, exc, what)}; {expected}") from exc
    bad = _zip_crc_failure(path)
    if bad is not None:  # torch.load does not check the archive's CRC-32s: a flipped bit loads silently
        raise CheckpointError(f"{path}: corrupted data (CRC-32 mismatch in {bad}); {expected} (use an intact copy)")
    return obj


def _zip_crc_failure(path: Path) -> str | None:
    """The first member of a zip-format torch file whose CRC-32 does not match, else None
    (also None for the legacy non-zip format, which has no checksums)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":
                return None
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"the archive ({short_reason(exc, path=path)})"


def _diagnose_torch_file(path: Path, exc: BaseException, what: str) -> str:
    """Why ``torch.load`` failed, in words: empty, not a torch file, a damaged zip archive."""
    import zipfile

    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not head:
        return "is empty"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            return f"not a readable {what}: its zip archive is truncated or damaged"
        if bad is not None:
            return f"not a readable {what}: corrupted data (checksum mismatch in {bad})"
        return f"not a readable {what} ({short_reason(exc, path=path)})"
    if head[:1] == b"\x80":  # a pickle (torch's legacy format)
        return f"not a readable {what} (legacy pickle: {short_reason(exc, path=path)}; truncated or corrupted?)"
    printable = all(32 <= c < 127 or c in (9, 10, 13) for c in head)
    kind = "a text file" if printable else "unrecognised bytes"
    return f"not a {what} (it starts like {kind}: {head!r})"


def check_train_checkpoint(obj, path: str | os.PathLike = "<checkpoint>") -> dict:
    """Raise :class:`CheckpointError` unless ``obj`` is a training checkpoint of this package."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a ddpm_ref training checkpoint (no format={FORMAT!r} entry); expected a checkpoint "
            "written by 'python -m ddpm_ref train' (for other weights: 'python -m ddpm_ref convert')"
        )
    if obj.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint version {obj.get('version')!r}; expected version {VERSION} "
            "(written by another release of ddpm_ref)"
        )
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks entries {missing}; expected a complete training checkpoint")
    return obj


# --------------------------------------------------------------------------------------- RNG states
def numpy_rng_to_dict() -> dict:
    """numpy's legacy global generator state (``np.random.get_state()``) as tensors/primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "kind": str(kind),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def numpy_rng_from_dict(d: dict) -> None:
    """Inverse of :func:`numpy_rng_to_dict`."""
    keys = d["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((d["kind"], keys, int(d["pos"]), int(d["has_gauss"]), float(d["cached_gaussian"])))


def python_rng_to_dict() -> dict:
    """Python's ``random`` state (version, 625 ints, gauss_next) as tensors/primitives."""
    version, internal, gauss_next = random.getstate()
    return {
        "version": int(version),
        "state": torch.tensor(internal, dtype=torch.int64),
        "gauss_next": None if gauss_next is None else float(gauss_next),
    }


def python_rng_from_dict(d: dict) -> None:
    """Inverse of :func:`python_rng_to_dict`."""
    internal = tuple(int(v) for v in d["state"].tolist())
    random.setstate((int(d["version"]), internal, d["gauss_next"]))


def capture_global_rng() -> dict:
    """This process's global generators: ``{"torch", "cuda", "numpy", "python"}``.

    ``cuda`` is the list of per-device states (empty if CUDA is not initialised).
    """
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": numpy_rng_to_dict(),
        "python": python_rng_to_dict(),
    }


def restore_global_rng(state: dict) -> None:
    """Inverse of :func:`capture_global_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():  # a GPU run resumed on a CPU skips them
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)
    numpy_rng_from_dict(state["numpy"])
    python_rng_from_dict(state["python"])
