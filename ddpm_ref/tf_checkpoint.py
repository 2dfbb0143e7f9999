"""Reading the original TensorFlow checkpoints (hojonathanho/diffusion) into :class:`ddpm_ref.unet.UNet`.

The paper's released weights (``diffusion_cifar10_model/model.ckpt-790000``, the LSUN and
CelebA-HQ models) are TensorFlow "V2" checkpoints, as the original training code saved them with
``tf.train.Saver``. This module reads them without TensorFlow, checks them, and maps the variables
onto ddpm_ref's names and tensor layouts.

The file format (TensorFlow's *tensor bundle*)
    ``<prefix>.index`` is a sorted-key table in leveldb's SSTable format: data blocks of
    prefix-compressed ``(key, value)`` entries, an index block pointing at them, and a 48-byte
    footer ending in the magic number ``0xdb4775248b80fb57``. Each block is followed by a type
    byte (0: uncompressed, the only kind TensorFlow writes here) and the masked CRC-32C of the
    block and that byte. The empty key ``""`` holds a ``BundleHeaderProto`` (number of shards,
    endianness, format version); every other key is a tensor name whose value is a
    ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC-32C of the bytes).
    ``<prefix>.data-SSSSS-of-NNNNN`` holds the raw little-endian tensor bytes. The ``.meta`` file
    (the graph) is not needed. :class:`TFCheckpointReader` parses the index (protobuf wire format
    decoded here: no protobuf dependency), memory-maps each data shard, and checks every tensor it
    returns against its CRC-32C.
CRC-32C
    :func:`crc32c` is the Castagnoli CRC (polynomial 0x1EDC6F41, reflected 0x82F63B78, as iSCSI
    and TensorFlow use) in NumPy: the data is cut into up to 16,384 contiguous lanes whose CRC
    registers advance in parallel, four bytes per step through two 65,536-entry tables; the lane
    registers are then combined, using the linearity of the CRC over GF(2) (the register of
    ``A + B`` is the register of ``A`` advanced over ``len(B)`` zero bytes, XOR that of ``B``).
    About 0.2 GB/s on one core: fast enough to check the 286 MB of model and EMA weights of the
    CIFAR-10 checkpoint in under two seconds, with no compiled dependency. (PyPI has C
    implementations, ``crc32c`` and ``google-crc32c``; they are faster but would be one more
    binary dependency for a check that runs once per conversion.) TensorFlow stores
    ``mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32).

The variables (design notes §11)
    Scope ``model/``; leaves ``W``/``b`` (conv, dense, 1x1 "nin") and ``gamma``/``beta``
    (GroupNorm). ``<var>/ExponentialMovingAverage`` is the EMA shadow of each trainable variable
    (the weights behind the paper's FID 3.17), ``<var>/Adam`` and ``<var>/Adam_1`` Adam's moments;
    ``beta1_power``, ``beta2_power`` and ``global_step`` are scalars. Layouts: conv ``W`` is HWIO
    ``[kh, kw, in, out]`` (PyTorch's OIHW is the transpose ``(3, 2, 0, 1)``), dense and nin ``W``
    are ``[in, out]`` (PyTorch ``[out, in]``; a 1x1 ``nin_shortcut`` becomes ``[out, in, 1, 1]``).
    Names: ``model/down_1/attn_0/q/W`` is ``down.1.attn.0.q.weight``; ``model/mid/block_1`` stays
    ``mid.block_1``; ``gamma``/``beta`` are ``weight``/``bias``. Only transposes: the converted
    tensors are bit-identical to the checkpoint's.

The network is inferred from the variables (:func:`ddpm_ref.convert.infer_unet_config`: widths,
levels, blocks, attention; the resolution from the original's attention-at-16x16 convention) and
must be one of the named configurations of :data:`ddpm_ref.unet.UNET_CONFIGS` (``cifar10``,
35,746,307 parameters; ``celebahq256``/``lsun256``, 113,673,219), unless the resolution is given
explicitly (then any well-formed U-Net of the original code is accepted).

Entry points: :func:`load_tf_unet` (path -> UNet + description), :func:`read_unet_state`
(path -> ddpm_ref state dict + description), :class:`TFCheckpointReader`, :func:`resolve_prefix`,
:func:`is_tf_checkpoint`, :func:`crc32c`. With TensorFlow installed (``pip install
ddpm_ref[tf]``), ``backend="tensorflow"`` reads the tensors with ``tf.train.load_checkpoint``
instead (after the same structural checks); the default ``"auto"`` uses it when TensorFlow is
importable. Every bad input raises :class:`TFCheckpointError` (a ``ValueError``) with a one-line
message ``<file>: <what is wrong>; <what to do>``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TFCheckpointError",
    "crc32c",
    "mask_crc32c",
    "TensorEntry",
    "TFCheckpointReader",
    "resolve_prefix",
    "is_tf_checkpoint",
    "tf_to_ddpm_ref_name",
    "classify_variable",
    "read_unet_state",
    "load_tf_unet",
]


class TFCheckpointError(ValueError):
    """A TensorFlow checkpoint that cannot be read or is not the original DDPM U-Net."""


def _err(path, what: str, todo: str) -> TFCheckpointError:
    return TFCheckpointError(f"{path}: {what}; {todo}")


# --------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), vectorised with NumPy
# --------------------------------------------------------------------------------------------

_POLY = 0x82F63B78  # reflected 0x1EDC6F41
_MASK_DELTA = 0xA282EAD8
_MAX_LANES = 16384
_SMALL = 64  # below this many bytes a plain loop is faster


def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> np.uint32(1)) ^ np.uint32(_POLY), t >> np.uint32(1)).astype(np.uint32)
    return t


_T0 = _byte_table()  # register update for one byte
_T1 = (_T0 >> 8) ^ _T0[_T0 & 0xFF]  # a byte followed by one more byte, ...
_T2 = (_T1 >> 8) ^ _T0[_T1 & 0xFF]
_T3 = (_T2 >> 8) ^ _T0[_T2 & 0xFF]
_I16 = np.arange(65536, dtype=np.uint32)
_LO16 = (_T3[_I16 & 0xFF] ^ _T2[_I16 >> 8]).astype(np.uint32)  # low half of a 4-byte word
_HI16 = (_T1[_I16 & 0xFF] ^ _T0[_I16 >> 8]).astype(np.uint32)  # high half
del _I16
_T0_LIST = _T0.tolist()
# A linear map of the 32-bit register is stored as 4 tables of 256 entries: its value on each
# byte of the register (byte k = 0..3 holding value b). _ZERO_BYTE: advance over one zero byte.
_BASIS = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None])
_ZERO_BYTE = (_T0[_BASIS & 0xFF] ^ (_BASIS >> 8)).astype(np.uint32)


def _apply(tables: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The linear map ``tables`` ([4, 256]) applied to registers ``v`` (uint32 array)."""
    return (tables[0][v & 0xFF] ^ tables[1][(v >> 8) & 0xFF] ^ tables[2][(v >> 16) & 0xFF]
            ^ tables[3][v >> 24])


@functools.lru_cache(maxsize=512)
def _advance(nbytes: int) -> np.ndarray:
    """Tables of the map "advance the register over ``nbytes`` zero bytes" (square and multiply)."""
    result, power, n = None, _ZERO_BYTE, nbytes
    while n:
        if n & 1:
            result = power if result is None else _apply(power, result)
        n >>= 1
        if n:
            power = _apply(power, power)
    return result


def _crc32c_loop(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _T0_LIST
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32c(data) -> int:
    """CRC-32C of a bytes-like object or uint8 array (standard: initial and final XOR 0xFFFFFFFF).

    ``crc32c(b"123456789") == 0xE3069283``. The data is split into ``K`` contiguous lanes of
    ``M`` four-byte words (zeros prepended to fill them: leading zeros leave a zero register
    unchanged), the initial register 0xFFFFFFFF is XOR-ed into the first four data bytes (the
    same thing for a reflected CRC), all lanes advance together, and the lane registers are
    combined pairwise with :func:`_advance`.
    """
    b = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if b.dtype != np.uint8:
        b = b.view(np.uint8)
    n = b.size
    if n < _SMALL:
        return _crc32c_loop(b.tobytes())
    words = -(-n // 4)
    lanes = 1
    while lanes * 2 <= _MAX_LANES and lanes * 2 * 16 <= words:
        lanes *= 2
    steps = -(-words // lanes)
    pad = lanes * steps * 4 - n
    buf = np.zeros(lanes * steps * 4, dtype=np.uint8)
    buf[pad:] = b
    buf[pad:pad + 4] ^= 0xFF
    cols = buf.view("<u4").reshape(lanes, steps).T.copy()  # [steps, lanes]: one row per step
    r = np.zeros(lanes, dtype=np.uint32)
    lo = np.empty(lanes, dtype=np.uint32)
    hi = np.empty(lanes, dtype=np.uint32)
    for j in range(steps):
        np.bitwise_xor(r, cols[j], out=r)
        np.bitwise_and(r, 0xFFFF, out=lo)
        np.right_shift(r, 16, out=r)
        np.take(_HI16, r, out=hi)
        np.take(_LO16, lo, out=r)
        np.bitwise_xor(r, hi, out=r)
    span = 4 * steps
    while r.size > 1:  # lane 2i is followed by lane 2i+1 (span bytes)
        r = _apply(_advance(span), r[0::2]) ^ r[1::2]
        span *= 2
    return int(r[0]) ^ 0xFFFFFFFF


def mask_crc32c(crc: int) -> int:
    """TensorFlow's (and leveldb's) masked CRC: rotate right by 15 bits, add 0xa282ead8."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Protobuf wire format (only what the bundle protos use)
# --------------------------------------------------------------------------------------------


class _Malformed(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Malformed("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, list]:
    """Field number -> list of values (ints for varint/fixed, bytes for length-delimited)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _Malformed("truncated fixed64")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise _Malformed("truncated field")
            value = bytes(buf[pos:pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _Malformed("truncated fixed32")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise _Malformed(f"wire type {wire}")
        out.setdefault(field, []).append(value)
    return out


def _one(fields: dict, number: int, default=0):
    values = fields.get(number)
    return values[-1] if values else default


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# --------------------------------------------------------------------------------------------
# The SSTable of <prefix>.index
# --------------------------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_BLOCK_TRAILER = 5


def _block_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int) -> bytes:
    end = offset + size + _BLOCK_TRAILER
    if offset < 0 or end > len(data):
        raise _Malformed(f"block at {offset}+{size} beyond the end of the file")
    block = data[offset:offset + size]
    kind = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if mask_crc32c(crc32c(data[offset:offset + size + 1])) != stored:
        raise _Malformed(f"block at offset {offset} fails its crc32c check")
    if kind != 0:
        raise _Malformed(f"block compression type {kind} (only uncompressed blocks are read)")
    return block


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise _Malformed("block shorter than its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        raise _Malformed("bad restart count")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise _Malformed("bad block entry")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


def _table_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    if len(data) < _FOOTER:
        raise _Malformed(f"{len(data)} bytes, shorter than a table footer")
    footer = data[-_FOOTER:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER - 8)
    if magic != _TABLE_MAGIC:
        raise _Malformed("no table magic number at the end")
    _, _, pos = _block_handle(footer, 0)  # metaindex (unused)
    index_offset, index_size, _ = _block_handle(footer, pos)
    entries = []
    for _, handle in _block_entries(_read_block(data, index_offset, index_size)):
        offset, size, _ = _block_handle(handle, 0)
        entries.extend(_block_entries(_read_block(data, offset, size)))
    return entries


# --------------------------------------------------------------------------------------------
# Bundle entries and the reader
# --------------------------------------------------------------------------------------------

# TensorFlow DataType enum values read here (types.proto), little-endian NumPy dtypes.
_DTYPES = {
    1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2",
    19: "<f2", 22: "<u4", 23: "<u8",
}
_DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
                7: "string", 8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16",
                18: "complex128", 19: "float16", 20: "resource", 21: "variant", 22: "uint32",
                23: "uint64"}
_BUNDLE_VERSION = 1  # TensorFlow's kTensorBundleVersion: the version this reader implements


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the bundle: its BundleEntryProto."""

    name: str
    dtype: int  # TensorFlow DataType enum
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES.get(self.dtype, f"DataType {self.dtype}")


def _parse_entry(name: str, value: bytes) -> TensorEntry:
    f = _fields(value)
    shape = ()
    if 2 in f:
        sf = _fields(f[2][-1])
        if _one(sf, 3):
            raise _Malformed(f"tensor {name!r} has an unknown rank")
        shape = tuple(_signed64(_one(_fields(d), 1)) for d in sf.get(2, []))
    return TensorEntry(name=name, dtype=_one(f, 1), shape=shape, shard_id=_one(f, 3),
                       offset=_signed64(_one(f, 4)), size=_signed64(_one(f, 5)),
                       crc32c=_one(f, 6), sliced=bool(f.get(7)))


def _shard_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


class TFCheckpointReader:
    """A TensorFlow V2 checkpoint (tensor bundle), read without TensorFlow.

    Opening parses ``<prefix>.index`` (every block's crc32c checked), checks the header (one
    endianness and format version this reader knows), checks that every data shard exists and is
    long enough for the tensors the index places in it, and memory-maps the shards.
    :meth:`read` returns a tensor as a NumPy array after checking its bytes' crc32c.

    Args:
        prefix: the checkpoint prefix (``.../model.ckpt-790000``); see :func:`resolve_prefix`
            for the other accepted forms.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = resolve_prefix(prefix)
        self.index_path = Path(f"{self.prefix}.index")
        try:
            data = self.index_path.read_bytes()
        except OSError as exc:
            raise _err(self.index_path, f"cannot be read ({exc.strerror or exc})",
                       "check the path and its permissions") from None
        try:
            raw = _table_entries(data)
        except _Malformed as exc:
            raise _err(self.index_path, f"not a TensorFlow checkpoint index ({exc})",
                       "pass the .index file of a checkpoint saved by tf.train.Saver (format V2)") from None
        if not raw or raw[0][0] != b"":
            raise _err(self.index_path, "no bundle header (the empty key) in the index",
                       "pass the .index file of a checkpoint saved by tf.train.Saver (format V2)")
        try:
            header = _fields(raw[0][1])
            version = _fields(_one(header, 3, b""))
        except _Malformed as exc:
            raise _err(self.index_path, f"unreadable bundle header ({exc})",
                       "the index is damaged; copy the checkpoint again") from None
        self.num_shards = _one(header, 1)
        endianness = _one(header, 2)
        self.version = {"producer": _one(version, 1), "min_consumer": _one(version, 2),
                        "bad_consumers": list(version.get(3, []))}
        if endianness != 0:
            raise _err(self.index_path, "a big-endian tensor bundle",
                       "re-save the checkpoint on a little-endian machine (x86-64, ARM)")
        if (self.version["min_consumer"] > _BUNDLE_VERSION or _BUNDLE_VERSION in self.version["bad_consumers"]
                or self.version["producer"] < 1):
            raise _err(self.index_path, f"tensor bundle format version {self.version} is not the one this "
                       f"reader knows (version {_BUNDLE_VERSION})",
                       "read it with TensorFlow (pip install ddpm_ref[tf]) or re-save it with tf.train.Saver")
        if self.num_shards < 1:
            raise _err(self.index_path, f"bundle header says {self.num_shards} data shards",
                       "the index is damaged; copy the checkpoint again")
        self.entries: dict[str, TensorEntry] = {}
        for key, value in raw[1:]:
            try:
                name = key.decode("utf-8")
                entry = _parse_entry(name, value)
            except (UnicodeDecodeError, _Malformed) as exc:
                raise _err(self.index_path, f"unreadable entry {key[:60]!r} ({exc})",
                           "the index is damaged; copy the checkpoint again") from None
            if not 0 <= entry.shard_id < self.num_shards or entry.offset < 0 or entry.size < 0:
                raise _err(self.index_path, f"entry {name!r} points outside the data shards",
                           "the index is damaged; copy the checkpoint again")
            self.entries[name] = entry
        self.shard_paths = [_shard_path(self.prefix, i, self.num_shards) for i in range(self.num_shards)]
        self._maps: dict[int, np.ndarray] = {}
        ends = [0] * self.num_shards
        for e in self.entries.values():
            ends[e.shard_id] = max(ends[e.shard_id], e.offset + e.size)
        for i, path in enumerate(self.shard_paths):
            if not path.is_file():
                raise _err(path, "missing (the index lists tensors in this data shard)",
                           f"copy it next to {self.index_path.name}")
            size = path.stat().st_size
            if size < ends[i]:
                raise _err(path, f"truncated: {size:,} bytes, the index needs {ends[i]:,}",
                           "the download or copy was cut short; fetch the checkpoint again")

    # ---- access ----
    def names(self) -> list[str]:
        """Tensor names in the index's (sorted) order."""
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._maps:
            path = self.shard_paths[i]
            if path.stat().st_size == 0:
                self._maps[i] = np.zeros(0, dtype=np.uint8)
            else:
                try:
                    self._maps[i] = np.memmap(path, dtype=np.uint8, mode="r")
                except OSError as exc:
                    raise _err(path, f"cannot be memory-mapped ({exc.strerror or exc})",
                               "check the file and its permissions") from None
        return self._maps[i]

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """The tensor ``name`` as a read-only NumPy array (a view of the memory-mapped shard).

        Raises TFCheckpointError for an unknown name, a dtype this reader does not read (strings,
        bfloat16, resources, ...), a partitioned (sliced) variable, a size that does not match
        the shape, or (``verify``) bytes whose crc32c differs from the index's.
        """
        if name not in self.entries:
            raise _err(self.index_path, f"no tensor {name!r}", "list the names with TFCheckpointReader.names()")
        e = self.entries[name]
        shard = self.shard_paths[e.shard_id]
        if e.sliced:
            raise _err(self.index_path, f"tensor {name!r} is a partitioned variable (slices)",
                       "read it with TensorFlow (pip install ddpm_ref[tf])")
        if e.dtype not in _DTYPES:
            raise _err(self.index_path, f"tensor {name!r} has dtype {e.dtype_name}, which this reader "
                       f"does not read", "only numeric dtypes are supported (float32 for the DDPM weights)")
        dtype = np.dtype(_DTYPES[e.dtype])
        count = math.prod(e.shape)
        if count * dtype.itemsize != e.size:
            raise _err(self.index_path, f"tensor {name!r}: {e.size} bytes for shape {list(e.shape)} of "
                       f"{e.dtype_name}", "the index is damaged; copy the checkpoint again")
        view = self._shard(e.shard_id)[e.offset:e.offset + e.size]
        if verify and mask_crc32c(crc32c(view)) != e.crc32c:
            raise _err(shard, f"crc32c mismatch in tensor {name!r} (bytes {e.offset:,}..{e.offset + e.size:,})",
                       "the file is corrupted; fetch the checkpoint again")
        return np.frombuffer(view, dtype=dtype, count=count).reshape(e.shape)

    def close(self) -> None:
        self._maps.clear()

    def __enter__(self) -> TFCheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Finding the checkpoint
# --------------------------------------------------------------------------------------------

_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


def resolve_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix for a prefix, its ``.index``/``.data-*``/``.meta`` file, or a directory.

    A directory must hold exactly one ``*.index`` (the release folders have no ``checkpoint``
    state file, so TensorFlow's ``latest_checkpoint`` finds nothing there).
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.index"))
        if not found:
            raise _err(p, "no TensorFlow checkpoint (*.index) and no diffusers config.json in this directory",
                       "pass a checkpoint prefix such as <dir>/model.ckpt-790000, a diffusers folder or a weights file")
        if len(found) > 1:
            names = ", ".join(f.name for f in found[:6]) + (" ..." if len(found) > 6 else "")
            raise _err(p, f"{len(found)} checkpoints in this directory ({names})",
                       "pass one of them as <dir>/<name> without the .index suffix")
        return found[0].with_suffix("")
    name = p.name
    for suffix in (".index", ".meta"):
        if name.endswith(suffix):
            return p.with_name(name[: -len(suffix)])
    if _DATA_SUFFIX.search(name):
        return p.with_name(_DATA_SUFFIX.sub("", name))
    if Path(f"{p}.index").is_file():
        return p
    raise _err(p, "no such checkpoint (neither this path nor its .index exists)",
               "pass the checkpoint prefix, e.g. diffusion_cifar10_model/model.ckpt-790000, or its directory")


def is_tf_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` should be read as a TensorFlow checkpoint (for dispatch by the converters).

    True for a file named ``*.index``/``*.meta``/``*.data-NNNNN-of-NNNNN``, a prefix whose
    ``.index`` exists, and a directory with ``*.index`` files or with nothing a diffusers folder
    has (no ``config.json`` and no ``unet/``), so that such a directory gets this module's error.
    """
    p = Path(path)
    if p.is_dir():
        if any(p.glob("*.index")):
            return True
        return not (p / "config.json").exists() and not (p / "unet").is_dir()
    name = p.name
    if name.endswith((".index", ".meta")) or _DATA_SUFFIX.search(name):
        return True
    return not p.exists() and Path(f"{p}.index").is_file()


# --------------------------------------------------------------------------------------------
# Variables -> ddpm_ref state dict
# --------------------------------------------------------------------------------------------

_SCALARS = ("global_step", "beta1_power", "beta2_power")
_LEAVES = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}


def classify_variable(name: str) -> tuple[str, str | None]:
    """``(kind, base)`` of a checkpoint variable: kind ``"model"`` (base = name), ``"ema"`` (base
    = the variable it shadows), ``"adam"`` (moment slots), ``"scalar"`` (global_step,
    beta1/beta2_power) or ``"other"``."""
    if name in _SCALARS:
        return "scalar", None
    for suffix, kind in (("/ExponentialMovingAverage", "ema"), ("/Adam", "adam"), ("/Adam_1", "adam")):
        if name.endswith(suffix):
            return kind, name[: -len(suffix)]
    if name.startswith("model/"):
        return "model", name
    return "other", None


def tf_to_ddpm_ref_name(name: str) -> str | None:
    """ddpm_ref name of a ``model/...`` variable, e.g. ``model/down_1/attn_0/q/W`` ->
    ``down.1.attn.0.q.weight``, ``model/mid/block_1/norm1/gamma`` -> ``mid.block_1.norm1.weight``;
    None if the name is not of the original U-Net's form."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != "model" or parts[-1] not in _LEAVES:
        return None
    out: list[str] = []
    for part in parts[1:-1]:
        m = re.fullmatch(r"(down|up|block|attn)_(\d+)", part)
        if m and not (out and out[0] == "mid"):
            out += [m.group(1), m.group(2)]
        elif re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", part):
            out.append(part)
        else:
            return None
    return ".".join(out + [_LEAVES[parts[-1]]])


def _to_torch(key: str, value: np.ndarray) -> torch.Tensor:
    """TF layout -> PyTorch layout: HWIO -> OIHW for convs, [in, out] -> [out, in] for dense
    and nin (a nin_shortcut becomes a 1x1 conv [out, in, 1, 1]); vectors unchanged. Exact."""
    if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
        value = value.T
        if key.endswith("nin_shortcut.weight"):
            value = value[:, :, None, None]
    return torch.from_numpy(np.array(value, dtype=value.dtype.newbyteorder("="), order="C", copy=True))


def _tensorflow_getter(prefix: Path, reader: TFCheckpointReader):
    """A function name -> ndarray using ``tf.train.load_checkpoint`` (TF verifies crc32c too)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TensorFlow's C++ logging writes start-up lines to file descriptor 2 before its log level
    # applies (absl, oneDNN): keep them off the CLI's one-line error path.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow as tf
    finally:
        os.dup2(saved, 2)
        os.close(saved)

    try:
        tf_reader = tf.train.load_checkpoint(str(prefix))
    except Exception as exc:  # noqa: BLE001 - TF's errors are many; the message is kept
        raise _err(reader.index_path, f"TensorFlow cannot open it ({type(exc).__name__}: "
                   f"{str(exc).splitlines()[0][:200]})", "check the checkpoint files") from None

    def get(name: str) -> np.ndarray:
        try:
            return np.asarray(tf_reader.get_tensor(name))
        except Exception as exc:  # noqa: BLE001
            shard = reader.shard_paths[reader.entries[name].shard_id]
            raise _err(shard, f"TensorFlow cannot read tensor {name!r} ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:200]})",
                       "the file is corrupted; fetch the checkpoint again") from None
    return get


def _backend(backend: str) -> str:
    if backend not in ("auto", "ddpm_ref", "tensorflow"):
        raise ValueError(f"backend must be 'auto', 'ddpm_ref' or 'tensorflow', got {backend!r}")
    if backend == "auto":
        return "tensorflow" if importlib.util.find_spec("tensorflow") is not None else "ddpm_ref"
    return backend


def read_unet_state(path: str | os.PathLike, ema: bool = True, backend: str = "auto"
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """The U-Net weights of an original-code checkpoint as a ddpm_ref state dict.

    Args:
        path: checkpoint prefix, one of its files, or a directory holding exactly one checkpoint.
        ema: the EMA shadows (``<var>/ExponentialMovingAverage``, the paper's evaluation weights;
            default) or, if False, the raw trained variables.
        backend: ``"ddpm_ref"`` (this module's reader), ``"tensorflow"`` (``tf.train.
            load_checkpoint``, needs TensorFlow) or ``"auto"`` (TensorFlow when importable).
    Returns:
        ``(state, info)``: ddpm_ref-named float32 tensors in PyTorch layout, and a JSON-ready
        description (prefix, weights "ema"/"raw", global_step, counts of each kind of variable,
        backend).
    Raises:
        TFCheckpointError for every unreadable file and for a checkpoint whose variables are not
        those of the original U-Net (Adam slots, beta1/beta2_power and global_step are skipped).
    """
    backend = _backend(backend)
    reader = TFCheckpointReader(path)
    index = reader.index_path
    kinds: dict[str, list[str]] = {"model": [], "ema": [], "adam": [], "scalar": [], "other": []}
    for name in reader.names():
        kinds[classify_variable(name)[0]].append(name)
    if kinds["other"] or not kinds["model"]:
        sample = ", ".join(kinds["other"][:4]) or ", ".join(reader.names()[:4]) or "no tensors"
        raise _err(index, f"not a checkpoint of the original DDPM U-Net (variables outside model/: {sample})",
                   "convert takes checkpoints saved by hojonathanho/diffusion's training code")
    unknown = [n for n in kinds["model"] if tf_to_ddpm_ref_name(n) is None]
    if unknown:
        raise _err(index, f"not a checkpoint of the original DDPM U-Net (unexpected variables "
                   f"{', '.join(unknown[:4])})", "convert takes checkpoints saved by hojonathanho/diffusion's "
                   "training code")
    shadows = {classify_variable(n)[1]: n for n in kinds["ema"]}
    if ema:
        if not shadows:
            raise _err(index, "no EMA shadows (<variable>/ExponentialMovingAverage) in this checkpoint",
                       "add --no-ema to convert its raw weights")
        missing = [n for n in kinds["model"] if n not in shadows]
        if missing:
            raise _err(index, f"{len(missing)} variable(s) without an EMA shadow, e.g. {missing[0]}",
                       "add --no-ema to convert the raw weights")
        extra = sorted(set(shadows) - set(kinds["model"]))
        if extra:
            raise _err(index, f"EMA shadows of variables that are not in the checkpoint, e.g. {extra[0]}",
                       "convert takes checkpoints saved by hojonathanho/diffusion's training code")
    get = _tensorflow_getter(reader.prefix, reader) if backend == "tensorflow" else reader.read
    state: dict[str, torch.Tensor] = {}
    for name in kinds["model"]:
        source = shadows[name] if ema else name
        entry = reader.entries[source]
        if entry.dtype != 1:
            raise _err(index, f"tensor {source!r} has dtype {entry.dtype_name}, expected float32",
                       "convert takes checkpoints saved by hojonathanho/diffusion's training code")
        if reader.entries[name].shape != entry.shape:
            raise _err(index, f"EMA shadow {source!r} has shape {list(entry.shape)}, its variable "
                       f"{list(reader.entries[name].shape)}", "the checkpoint is inconsistent")
        key = tf_to_ddpm_ref_name(name)
        state[key] = _to_torch(key, get(source))
    step = None
    if "global_step" in reader.entries:
        gs = get("global_step")
        step = int(np.asarray(gs).reshape(-1)[0]) if np.asarray(gs).size == 1 else None
    info = {
        "layout": "tensorflow",
        "checkpoint": reader.prefix.name,
        "weights": "ema" if ema else "raw",
        "global_step": step,
        "tensors": {k: len(v) for k, v in kinds.items() if k != "other"},
        "backend": backend,
    }
    reader.close()
    return state, info


def _match_named(cfg: Mapping) -> list[str]:
    from ddpm_ref.unet import UNET_CONFIGS

    def norm(c):
        return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in c.items() if k != "dropout"}

    return [name for name, named in UNET_CONFIGS.items() if norm(named) == norm(cfg)]


def load_tf_unet(path: str | os.PathLike, ema: bool = True, resolution: int | None = None,
                 backend: str = "auto"):
    """A :class:`ddpm_ref.unet.UNet` holding an original-code TF checkpoint's weights.

    The configuration is inferred from the variables; it must be a named configuration
    (``cifar10``, ``celebahq256``/``lsun256``, or the small ``tiny``) unless ``resolution`` is
    given (the resolution is not stored in the checkpoint: without it, the original's convention
    of attention at 16x16 decides, which only the named configurations are known to follow).

    Returns ``(model, info)``: the UNet in eval mode and :func:`read_unet_state`'s description
    plus ``named_config`` (list of matching names, empty for a custom network) and ``parameters``.
    """
    from ddpm_ref.convert import infer_unet_config, load_state_dict_strict
    from ddpm_ref.unet import UNET_CONFIGS, UNet

    state, info = read_unet_state(path, ema=ema, backend=backend)
    index = Path(f"{resolve_prefix(path)}.index")
    try:
        cfg = infer_unet_config(state, resolution=resolution)
    except (ValueError, KeyError) as exc:
        raise _err(index, f"not a checkpoint of the original DDPM U-Net ({exc})",
                   "convert takes checkpoints saved by hojonathanho/diffusion's training code") from None
    names = _match_named(cfg)
    if names:
        cfg["dropout"] = UNET_CONFIGS[names[0]]["dropout"]
    elif resolution is None:
        n = sum(v.numel() for v in state.values())
        raise _err(index, f"a U-Net of {n:,} parameters (ch {cfg['ch']}, ch_mult {tuple(cfg['ch_mult'])}, "
                   f"num_res_blocks {cfg['num_res_blocks']}) that is no named configuration (cifar10: "
                   "35,746,307 parameters; celebahq256/lsun256: 113,673,219)",
                   "pass --resolution to convert it anyway")
    try:
        model = load_state_dict_strict(UNet(**cfg), state).eval()
    except ValueError as exc:
        raise _err(index, f"not a checkpoint of the original DDPM U-Net ({exc})",
                   "convert takes checkpoints saved by hojonathanho/diffusion's training code") from None
    info = dict(info, named_config=names, parameters=sum(p.numel() for p in model.parameters()))
    return model, info
