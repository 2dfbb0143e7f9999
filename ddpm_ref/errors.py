"""The package's error types, and how the command line turns any error into one line.

Every failure a user can cause -- a bad option, a damaged or wrong file, a full disk, a target
that already exists -- is raised as one of these (or as a plain ``ValueError``/``OSError`` from
lower layers) with a message in the house format::

    <what>: <why>; <what to do>

e.g. ``runs/a/samples.npz: already exists; pass --force to overwrite it, or choose another --out``.
``python -m ddpm_ref`` prints it as ``error: <message>`` on one line of stderr and exits with
code 2 (:func:`one_line` normalises messages of lower layers). Exit code 1 is reserved for a
training run that diverged (:class:`ddpm_ref.train.NonFiniteLossError`).

- :class:`UsageError`: options or state that do not fit together (a ``ValueError``).
- :class:`FileFormatError`: a file that exists but cannot be read as what it should be:
  truncated, bit-flipped, another format, wrong keys, dtype, shape or resolution (a ``ValueError``).
- :class:`OutputError`: a file that cannot be written: disk full, permissions, read-only file
  system (an ``OSError``, raised with the file named and the cause in words).
- :class:`DataFileError`: a data set file is missing, truncated or corrupted (an ``OSError``;
  re-exported by :mod:`ddpm_ref.data`).
"""

from __future__ import annotations

import errno
import re

__all__ = [
    "UsageError",
    "FileFormatError",
    "OutputError",
    "DataFileError",
    "short_reason",
    "find_os_error",
    "describe_os_error",
    "one_line",
]


class UsageError(ValueError):
    """Options or state that do not fit together; the message names the CLI flags involved."""


class FileFormatError(ValueError):
    """A file exists but cannot be read as what it should be; the message names the file."""


class OutputError(OSError):
    """A file cannot be written (disk full, permissions, read-only); the message names the file."""

    def __str__(self) -> str:  # OSError's own __str__ would prepend "[Errno n]"
        return self.args[0] if self.args else ""


class DataFileError(OSError):
    """A data file is missing, truncated, corrupted or not in the expected format.

    The message names the file and says what was expected (size, checksum, keys, shape).
    Bad *arguments* (an unknown split, a wrong dtype) raise ``ValueError`` instead.
    """


# Phrases of third-party error messages that are not useful to a user of this tool.
_NOISE = (
    r"\s*Please file an issue[^.]*\.?",
    r"\s*Check the recorded stack trace[^.]*\.?",
    r"\s*\(Triggered internally at [^)]*\)",
    r"\s*In PyTorch 2\.6, we changed the default value[^.]*\.",
)


def short_reason(exc: BaseException, limit: int = 120, path=None) -> str:
    """A short one-line description of ``exc`` for a message: its type and the first line of
    its text, without advice meant for library developers (and without ``path``, which the
    message names already), cut to ``limit`` characters."""
    text = str(exc).strip()
    if path is not None:
        text = re.sub(r"\s*['\"]?" + re.escape(str(path)) + r"['\"]?", "", text)
    for pat in _NOISE:
        text = re.sub(pat, "", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if len(first) > limit:
        first = first[: limit - 3].rstrip() + "..."
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def find_os_error(exc: BaseException | None) -> OSError | None:
    """The first ``OSError`` with an errno in ``exc``'s chain (``__cause__``/``__context__``).

    torch reports a failed write as a ``RuntimeError`` chained to the real ``OSError``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


_WRITE_HINTS = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another --out"),
    errno.EFBIG: ("file too large (file system or 'ulimit -f' limit)", "choose another --out"),
    errno.EACCES: ("permission denied", "choose a writable --out"),
    errno.EPERM: ("operation not permitted", "choose a writable --out"),
    errno.EROFS: ("read-only file system", "choose a writable --out"),
    errno.ENOTDIR: ("a parent of it is a file, not a directory", "choose another --out"),
    errno.EISDIR: ("it is a directory", "choose a file name for --out"),
    errno.EEXIST: ("it already exists as a file", "choose another --out"),
}


def describe_os_error(exc: BaseException) -> tuple[str, str]:
    """``(why, what to do)`` in words for an error while writing a file."""
    os_err = find_os_error(exc)
    if os_err is not None and os_err.errno in _WRITE_HINTS:
        return _WRITE_HINTS[os_err.errno]
    text = str(exc)
    for code, phrase in ((errno.ENOSPC, "No space left"), (errno.EFBIG, "File too large"),
                         (errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")):
        if phrase in text:
            return _WRITE_HINTS[code]
    if os_err is not None:
        return (os_err.strerror or short_reason(os_err), "check the path and free space, or choose another --out")
    return (short_reason(exc), "check the path and free space, or choose another --out")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (what ``python -m ddpm_ref`` prints after ``error: ``).

    A bare ``OSError`` of the standard library (``[Errno 2] No such file or directory: 'x'``)
    becomes ``x: No such file or directory``."""
    if isinstance(exc, OSError) and not isinstance(exc, (OutputError, DataFileError)) and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        msg = f"{name}: {exc.strerror}" if name else exc.strerror
        if exc.errno in _WRITE_HINTS:
            msg += "; " + _WRITE_HINTS[exc.errno][1]
    else:
        msg = str(exc)
        if isinstance(exc, KeyError) and exc.args:  # KeyError's str() is the repr of the key
            msg = str(exc.args[0])
    msg = " ".join(msg.split())
    return msg or type(exc).__name__
