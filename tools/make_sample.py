#!/usr/bin/env python
"""Rebuild ``ddpm_ref/assets/cifar10_sample.npz``, the small pixel-exact CIFAR-10 sample.

The sample is cut from ``cifar10_lossless_subset.npz`` (real CIFAR-10 images recovered from
lossless PNG sources and checked pixel by pixel; see ``ddpm_ref/assets/README.md``). That file is
not part of the repository, so its path is an argument::

    python tools/make_sample.py /path/to/cifar10_lossless_subset.npz
    python tools/make_sample.py /path/to/cifar10_lossless_subset.npz --check

What is kept:

* ``x_train`` uint8 [1024, 32, 32, 3]: official training images 0..1023, original order;
  ``y_train`` (uint8 labels) and ``train_index`` (int64, = 0..1023).
* ``x_test`` uint8 [256, 32, 32, 3]: the first 256 test images present in the source file
  (ascending official test index), with ``y_test`` and ``test_index``.

The container is the one ``np.savez_compressed`` writes (a zip of deflated ``.npy`` members)
but written with a fixed member order and fixed timestamps, so the same source gives the same
bytes and the same sha256 on every machine. ``--check`` rebuilds in memory and compares the
arrays (exactly) and the sha256 with the existing file instead of writing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

N_TRAIN = 1024
N_TEST = 256
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "ddpm_ref" / "assets" / "cifar10_sample.npz"
_KEYS = ("x_train", "y_train", "train_index", "x_test", "y_test", "test_index")
# 1980-01-01 00:00:00 is the earliest date a zip header can hold; any fixed value would do.
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def select_sample(source: dict, n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict:
    """Pick the shipped arrays out of the lossless source arrays (a dict of numpy arrays).

    Raises ValueError if the source does not hold training images 0..n_train-1 in order, or
    holds fewer than n_test test images, or has inconsistent shapes.
    """
    for key in _KEYS:
        if key not in source:
            raise ValueError(f"source lacks array {key!r}; expected keys {_KEYS}")
    train_index = np.asarray(source["train_index"])
    if train_index.shape[0] < n_train or not np.array_equal(
        train_index[:n_train], np.arange(n_train)
    ):
        raise ValueError(
            f"source train_index must start with 0..{n_train - 1} in order "
            f"(got first entries {train_index[:8].tolist()})"
        )
    test_index = np.asarray(source["test_index"])
    if test_index.shape[0] < n_test:
        raise ValueError(f"source has {test_index.shape[0]} test images, need {n_test}")
    order = np.argsort(test_index, kind="stable")[:n_test]
    out = {
        "x_train": np.ascontiguousarray(source["x_train"][:n_train], dtype=np.uint8),
        "y_train": np.asarray(source["y_train"][:n_train], dtype=np.uint8),
        "train_index": np.arange(n_train, dtype=np.int64),
        "x_test": np.ascontiguousarray(source["x_test"][order], dtype=np.uint8),
        "y_test": np.asarray(source["y_test"][order], dtype=np.uint8),
        "test_index": np.asarray(test_index[order], dtype=np.int64),
    }
    for split, n in (("train", n_train), ("test", n_test)):
        x = out[f"x_{split}"]
        if x.shape != (n, 32, 32, 3):
            raise ValueError(f"x_{split} has shape {x.shape}, expected ({n}, 32, 32, 3)")
        y = out[f"y_{split}"]
        if y.shape != (n,) or int(y.max()) > 9:
            raise ValueError(f"y_{split} must hold {n} labels in 0..9")
    return out


def npz_bytes(arrays: dict) -> bytes:
    """Serialise arrays as a deterministic compressed .npz (same layout np.savez_compressed
    writes, readable by np.load) and return the bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in _KEYS:
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def build(source_path: str | Path) -> bytes:
    """Return the bytes of the sample file built from the lossless source .npz."""
    source_path = Path(source_path)
    if not source_path.is_file():
        raise FileNotFoundError(f"source file not found: {source_path}")
    with np.load(source_path, allow_pickle=False) as src:
        arrays = select_sample({k: src[k] for k in _KEYS})
    return npz_bytes(arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="path to cifar10_lossless_subset.npz")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output .npz path")
    parser.add_argument(
        "--check", action="store_true", help="compare with the existing --out file, write nothing"
    )
    args = parser.parse_args(argv)
    data = build(args.source)
    digest = hashlib.sha256(data).hexdigest()
    out = Path(args.out)
    if args.check:
        if not out.is_file():
            print(f"missing: {out}", file=sys.stderr)
            return 1
        with np.load(out, allow_pickle=False) as have, np.load(io.BytesIO(data)) as want:
            if sorted(have.files) != sorted(want.files):
                print(f"MISMATCH: {out} holds {sorted(have.files)}", file=sys.stderr)
                return 1
            for key in want.files:
                a, b = have[key], want[key]
                if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b):
                    print(f"MISMATCH: {out}: array {key!r} differs", file=sys.stderr)
                    return 1
        have_digest = hashlib.sha256(out.read_bytes()).hexdigest()
        if have_digest != digest:
            print(
                f"arrays identical, bytes differ (zlib build?): {out} sha256 {have_digest}, "
                f"rebuilt {digest}"
            )
        else:
            print(f"OK: {out} arrays identical, sha256 {digest}")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes) sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
