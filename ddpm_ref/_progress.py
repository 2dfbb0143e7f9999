"""Progress bars that suit both a terminal and a log file.

On a terminal, :func:`progress` is a ``tqdm`` bar. When stderr is not a terminal (a cluster job's
log, ``2> log.txt``, a pipe), a redrawing bar writes carriage returns into the file; there it
prints plain lines instead, each complete and newline-terminated::

    train: 1200/800000 step (0.2%), 9.81 step/s, elapsed 0:02:03, ETA 22:38:01, loss=0.0412

at every tenth of the total and at least every ``interval`` seconds (default 60, or the
environment variable ``DDPM_REF_PROGRESS_INTERVAL``), and once at the end.
"""

from __future__ import annotations

import math
import os
import sys
import time

from tqdm import tqdm

__all__ = ["progress", "PlainProgress"]


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class PlainProgress:
    """A tqdm-like counter that prints plain lines (see the module docs). Supports the part of
    tqdm's interface this package uses: ``update``, ``set_postfix``, ``close``, iteration and
    ``with``."""

    def __init__(self, iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0,
                 file=None, interval: float | None = None, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start_n = int(initial)
        self.file = file if file is not None else sys.stderr
        if interval is None:
            interval = float(os.environ.get("DDPM_REF_PROGRESS_INTERVAL", "60"))
        self.interval = float(interval)
        self._t0 = self._last_print = time.monotonic()
        self._last_decile = self._decile(self.n)
        self._postfix = ""
        self._printed_n = self.n
        self._closed = False

    def _decile(self, n: int) -> int:
        return int(10 * n // self.total) if self.total else 0

    def _line(self) -> str:
        elapsed = time.monotonic() - self._t0
        done = self.n - self._start_n
        rate = done / elapsed if elapsed > 0 else float("nan")
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.1f}%)"
        if math.isfinite(rate):
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {_fmt_time(elapsed)}")
        if self.total and math.isfinite(rate) and rate > 0:
            parts.append(f"ETA {_fmt_time((self.total - self.n) / rate)}")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def _print(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self._last_print = time.monotonic()
        self._printed_n = self.n

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        decile = self._decile(self.n)
        if decile > self._last_decile or time.monotonic() - self._last_print >= self.interval:
            self._last_decile = decile
            self._print()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._printed_n:
            self._print()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", disable: bool = False,
             initial: int = 0, **tqdm_kwargs):
    """A progress bar on stderr: ``tqdm`` on a terminal, :class:`PlainProgress` otherwise.

    ``disable=True`` gives a silent tqdm object (same interface)."""
    isatty = getattr(sys.stderr, "isatty", None)
    if disable or (isatty is not None and isatty()):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial, **tqdm_kwargs)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
