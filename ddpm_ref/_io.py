"""Reading and writing files so that every failure names the file.

- :func:`reading`: a context manager that turns any exception raised while a file is parsed
  (``zipfile.BadZipFile`` of a truncated ``.npz``, ``SafetensorError``, torch's ``RuntimeError``
  of a damaged ``.pt``, ``KeyError``, ``EOFError``, ...) into one
  :class:`~ddpm_ref.errors.FileFormatError` ``<file>: not a readable <kind> (<reason>); expected
  <what>``.
- :func:`atomic_write`: write a file through a temporary file in the same directory, flushed and
  fsync-ed, then renamed over the target (``os.replace``): a crash, a full disk or an exception
  never leaves a half-written target, and an existing target stays as it was until the new one
  is complete. The file gets the mode a plain ``open()`` would give it (``0o666`` minus the
  umask), not ``mkstemp``'s ``0o600``, so a shared output directory stays readable by the
  group. Write failures become :class:`~ddpm_ref.errors.OutputError` with the cause in words
  (``no space left on the device``) even when torch buries it in a chained ``RuntimeError``.
- :func:`check_new_file`, :func:`check_output_dir`: refuse to overwrite what a user made unless
  ``--force`` was given (the CLI calls them before any work is done).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import DataFileError, FileFormatError, OutputError, UsageError, describe_os_error, short_reason

__all__ = [
    "reading",
    "current_umask",
    "file_mode",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_dir",
    "check_new_file",
    "check_output_dir",
]


@contextlib.contextmanager
def reading(path, kind: str, expected: str):
    """Translate any failure inside the block into ``FileFormatError`` naming ``path``.

    ``kind`` says what the file should be (``".npz archive"``), ``expected`` what to give or run
    instead. Errors that already name the file (``FileFormatError``, ``DataFileError``, other
    ``ValueError`` subclasses raised deliberately by this package) pass through unchanged;
    ``MemoryError`` and ``KeyboardInterrupt`` too."""
    try:
        yield
    except (FileFormatError, DataFileError, UsageError, MemoryError):
        raise
    except FileNotFoundError as exc:
        raise FileFormatError(f"{path}: file not found; {expected}") from exc
    except IsADirectoryError as exc:
        raise FileFormatError(f"{path}: is a directory, not a {kind}; {expected}") from exc
    except PermissionError as exc:
        raise FileFormatError(f"{path}: permission denied; make it readable") from exc
    except Exception as exc:
        raise FileFormatError(
            f"{path}: not a readable {kind} ({short_reason(exc, path=path)}; truncated, corrupted or another format); "
            f"{expected}"
        ) from exc


def current_umask() -> int:
    """The process's umask, read without changing it where possible (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # pragma: no cover - non-Linux
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode of a new regular file: ``0o666`` minus the umask (what ``open(path, "w")`` gives)."""
    return 0o666 & ~current_umask()


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why, todo = describe_os_error(exc)
        raise OutputError(f"{path}: cannot create its directory {path.parent} ({why}); {todo}") from exc


def atomic_write(path: str | os.PathLike, write: Callable, *, what: str = "file") -> Path:
    """Call ``write(f)`` on a binary file object and move the result to ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was; ``OSError``s
    (and errors chained to one, as torch raises them) become :class:`OutputError` naming
    ``path`` and the cause. ``what`` names the file in messages (``"checkpoint"``)."""
    path = Path(path)
    _make_parent(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except Exception as exc:
        if isinstance(exc, (UsageError, FileFormatError)) or not _is_io_failure(exc):
            raise
        why, todo = describe_os_error(exc)
        kept = " (the previous file is unchanged)" if path.exists() else ""
        raise OutputError(f"{path}: cannot write the {what}{kept}: {why}; {todo}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def _is_io_failure(exc: BaseException) -> bool:
    """True for an OSError, or an error chained to one / mentioning a failed write (torch)."""
    from .errors import find_os_error

    if isinstance(exc, OSError) or find_os_error(exc) is not None:
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "File too large", "file write failed", "Permission denied",
                                   "Read-only file system", "Disk quota"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), what=what)


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), what=what)


def atomic_write_json(path: str | os.PathLike, obj, *, what: str = "JSON file") -> Path:
    """Write ``obj`` as indented JSON (with a final newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n", what=what)


def check_new_file(path: str | os.PathLike, *, force: bool, flag: str = "--out") -> Path:
    """Refuse (``UsageError``) if ``path`` exists and ``force`` is false, or if it is a directory."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; give {flag} a file name")
    if path.exists() and not force:
        raise UsageError(f"{path}: already exists; pass --force to overwrite it, or choose another {flag}")
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"{path.parent}: is a file, not a directory; choose another {flag}")
    return path


def check_output_dir(directory: str | os.PathLike, names: Iterable[str], *, force: bool,
                     flag: str = "--out") -> Path:
    """Refuse if ``directory`` is a file, or if it holds any of ``names`` and ``force`` is false."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: is a file, not a directory; give {flag} a directory")
    for parent in directory.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{parent}: is a file, not a directory; choose another {flag}")
            break
    if not force:
        present = [n for n in names if (directory / n).exists()]
        if present:
            raise UsageError(
                f"{directory / present[0]}: already exists; pass --force to overwrite it, or choose another {flag}"
            )
    return directory


# ----------------------------------------------------------------------------------------- .npz files
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


def _check_npz_magic(path: Path, expected: str) -> None:
    if not path.exists():
        raise FileFormatError(f"{path}: file not found; {expected}")
    if path.is_dir():
        raise FileFormatError(f"{path}: is a directory, not an .npz file; {expected}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot be read ({short_reason(exc)}); {expected}") from exc
    if head.startswith(_ZIP_MAGIC):
        return
    if head.startswith(_NPY_MAGIC):
        raise FileFormatError(f"{path}: is a single .npy array, not an .npz archive; {expected}")
    what = "empty" if not head else "not an .npz archive (no zip header)"
    raise FileFormatError(f"{path}: {what}; {expected}")


def npz_contents(path: str | os.PathLike, *, expected: str) -> dict:
    """``{name: (shape, dtype)}`` of the arrays in an ``.npz`` file, read from their headers
    (no array data is loaded). Any damage raises :class:`FileFormatError` naming the file."""
    import numpy as np

    path = Path(path)
    _check_npz_magic(path, expected)
    out = {}
    with reading(path, ".npz archive", expected), np.load(path, allow_pickle=False) as f:
        for name in f.files:
            with f.zip.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(member)
            out[name] = (tuple(shape), np.dtype(dtype))
    return out


def npz_load(path: str | os.PathLike, names, *, expected: str) -> dict:
    """Load the arrays ``names`` of an ``.npz`` file (every byte is CRC-checked by ``zipfile``).
    A missing name or any damage raises :class:`FileFormatError` naming the file."""
    import numpy as np

    path = Path(path)
    _check_npz_magic(path, expected)
    with reading(path, ".npz archive", expected), np.load(path, allow_pickle=False) as f:
        missing = [n for n in names if n not in f.files]
        if missing:
            raise FileFormatError(f"{path}: has no array(s) {missing} (it has {f.files}); {expected}")
        return {n: f[n] for n in names}


def describe_arrays(contents: dict) -> str:
    """``"x: uint8 [10, 32, 32, 3], y: int64 [10]"`` for :func:`npz_contents` output."""
    return ", ".join(f"{k}: {dt} {list(shape)}" for k, (shape, dt) in contents.items()) or "no arrays"
