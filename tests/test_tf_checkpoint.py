"""ddpm_ref.tf_checkpoint: the original TensorFlow checkpoints, read without TensorFlow.

The fixture ``tests/fixtures/tf_ddpm_small`` was written once by real TensorFlow
(``tools/make_tf_checkpoint.py``; versions in its README) in the original code's exact variable
layout, together with TensorFlow's own forward pass of the network on fixed inputs, once with the
raw weights and once with their EMA shadows. These tests convert it (through the CLI) and match
those outputs, check the three layouts (TF checkpoint, pytorch_diffusion state dict, diffusers
folder) of the same weights convert to bit-identical tensors, and check every refusal. The slow
test at the end runs TensorFlow live when it can find it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_ref.__main__ import main
from ddpm_ref.convert import from_diffusers, from_pesser, load_pretrained, load_unet
from ddpm_ref.tf_checkpoint import (
    TFCheckpointError,
    TFCheckpointReader,
    classify_variable,
    crc32c,
    is_tf_checkpoint,
    load_tf_unet,
    mask_crc32c,
    read_unet_state,
    resolve_prefix,
    tf_to_ddpm_ref_name,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tf_ddpm_small"
PREFIX = FIXTURE / "model.ckpt-3"
DATA = FIXTURE / "model.ckpt-3.data-00000-of-00001"
RES = 32  # the fixture is no named configuration: convert needs --resolution
N_MODEL = 142  # variables of the fixture's network


@pytest.fixture(scope="module")
def forward():
    return dict(np.load(FIXTURE / "forward.npz"))


# ------------------------------------------------------------------------------------ crc32c


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C one bit at a time (the definition; no tables), for comparison."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_values():
    # RFC 3720 (iSCSI), appendix B.4, and the common check value of "123456789"
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(b"") == 0


def test_crc32c_is_not_zlib_crc32():
    """The check must be able to fail: CRC-32 (zlib's polynomial) gives other values."""
    import zlib as z

    assert crc32c(b"123456789") != z.crc32(b"123456789") == 0xCBF43926


def crc32c_table_loop(data: bytes) -> int:
    """CRC-32C one byte at a time through a 256-entry table built from the bitwise definition."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("n", [*range(0, 70), 127, 128, 129, 1000, 4095, 4096, 4097, 65539, 262147])
def test_crc32c_equals_the_definition_across_lane_boundaries(n):
    """Every length around the vectorised path's boundaries (lanes, padding, the 4-byte words)."""
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    reference = crc32c_bitwise(data) if n <= 4097 else crc32c_table_loop(data)
    assert crc32c(data) == reference
    # array input (a memory-mapped shard is read as a uint8 array view) gives the same value
    assert crc32c(np.frombuffer(data, dtype=np.uint8)) == reference


def test_mask_is_leveldb_mask():
    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF):
        rot = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
        assert mask_crc32c(crc) == (rot + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------ reader


def test_reader_reads_every_fixture_tensor_with_tensorflows_crc():
    """All 571 tensors verify against the crc32c TensorFlow stored, and the scalars are right."""
    with TFCheckpointReader(PREFIX) as r:
        assert r.num_shards == 1 and r.version["producer"] == 1
        names = r.names()
        assert names == sorted(names) and len(names) == 4 * N_MODEL + 3
        kinds = [classify_variable(n)[0] for n in names]
        assert {k: kinds.count(k) for k in set(kinds)} == {"model": N_MODEL, "ema": N_MODEL, "adam": 2 * N_MODEL,
                                                           "scalar": 3}
        arrays = {n: r.read(n) for n in names}
    assert arrays["global_step"].dtype == np.int64 and int(arrays["global_step"]) == 3
    # Adam's bias-correction powers start at beta and are multiplied by beta after each of the 3 steps
    assert abs(float(arrays["beta1_power"]) - 0.9 ** 4) < 1e-6
    assert abs(float(arrays["beta2_power"]) - 0.999 ** 4) < 1e-6
    w = arrays["model/down_0/block_0/conv1/W"]
    assert w.shape == (3, 3, 32, 32) and w.dtype == np.float32  # HWIO
    assert arrays["model/down_1/attn_0/q/W"].shape == (32, 32)
    assert arrays["model/up_0/block_0/nin_shortcut/W"].shape == (64, 32)  # [in, out]
    # the EMA shadows differ from the raw weights (the fixture would not tell them apart otherwise)
    raw, ema = arrays["model/conv_out/W"], arrays["model/conv_out/W/ExponentialMovingAverage"]
    assert np.abs(raw - ema).max() > 1e-3


def test_resolve_prefix_forms(tmp_path):
    for form in (FIXTURE, PREFIX, f"{PREFIX}.index", DATA, f"{PREFIX}.meta"):
        assert resolve_prefix(form) == PREFIX, form
        assert is_tf_checkpoint(form), form
    assert not is_tf_checkpoint(FIXTURE / "forward.npz")
    assert not is_tf_checkpoint(tmp_path / "nothing.ckpt")
    (tmp_path / "config.json").write_text("{}")
    assert not is_tf_checkpoint(tmp_path)  # a diffusers folder


def test_names_map_to_the_unet():
    assert tf_to_ddpm_ref_name("model/down_1/attn_0/q/W") == "down.1.attn.0.q.weight"
    assert tf_to_ddpm_ref_name("model/mid/block_1/norm1/gamma") == "mid.block_1.norm1.weight"
    assert tf_to_ddpm_ref_name("model/mid/attn_1/proj_out/b") == "mid.attn_1.proj_out.bias"
    assert tf_to_ddpm_ref_name("model/up_3/upsample/conv/W") == "up.3.upsample.conv.weight"
    assert tf_to_ddpm_ref_name("model/temb/dense1/b") == "temb.dense1.bias"
    assert tf_to_ddpm_ref_name("model/norm_out/beta") == "norm_out.bias"
    for bad in ("dense/kernel", "model/conv_in/kernel", "model/a b/W", "model/W"):
        assert tf_to_ddpm_ref_name(bad) is None, bad
    assert classify_variable("model/conv_in/W/ExponentialMovingAverage") == ("ema", "model/conv_in/W")
    assert classify_variable("model/conv_in/W/Adam_1") == ("adam", "model/conv_in/W")
    assert classify_variable("global_step") == ("scalar", None)


# ------------------------------------------------------------------------------------ conversion


def _convert(tmp_path, name, *extra):
    out = tmp_path / f"{name}.safetensors"
    assert main(["convert", str(FIXTURE), "--out", str(out), "--resolution", str(RES), *extra]) == 0
    return out


def _eps(model, fwd) -> np.ndarray:
    x = torch.from_numpy(fwd["x"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        return model(x, torch.from_numpy(fwd["t"])).permute(0, 2, 3, 1).numpy()


def _temb(model, fwd) -> np.ndarray:
    """The output of the network's timestep-embedding MLP during the forward pass (a hook)."""
    seen = []
    handle = model.temb.dense1.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    try:
        _eps(model, fwd)
    finally:
        handle.remove()
    return seen[0].numpy()


def test_converted_fixture_matches_tensorflows_forward_ema_and_raw(tmp_path, forward, capsys):
    """The CLI's EMA conversion reproduces TF's EMA outputs, --no-ema the raw ones; not swapped."""
    models = {"ema": load_unet(_convert(tmp_path, "ema")), "raw": load_unet(_convert(tmp_path, "raw", "--no-ema"))}
    out = capsys.readouterr().out
    assert "ema weights of model.ckpt-3, step 3" in out and "raw weights of model.ckpt-3" in out
    gap = np.abs(forward["eps_ema"] - forward["eps_raw"]).max()
    assert gap > 0.5  # the two weight sets give clearly different outputs
    for kind, model in models.items():
        eps = _eps(model, forward)
        other = "raw" if kind == "ema" else "ema"
        assert np.abs(eps - forward[f"eps_{kind}"]).max() < 1e-4, kind
        assert np.abs(eps - forward[f"eps_{other}"]).max() > 0.5, f"{kind} looks like {other}: swapped?"
        # the timestep path: at this width (one channel per GroupNorm group) eps does not depend on t,
        # so the embedding MLP's output is compared on its own
        assert np.abs(_temb(model, forward) - forward[f"temb_{kind}"]).max() < 1e-4, kind
    x = torch.from_numpy(forward["x"][:1]).permute(0, 3, 1, 2)
    with torch.no_grad():
        e0, e1 = (models["ema"](x, torch.tensor([s])) for s in (0, 999))
    assert torch.allclose(e0, e1, atol=1e-4)  # why eps alone cannot check the timestep path here
    assert np.abs(forward["temb_ema"][0] - forward["temb_ema"][-1]).max() > 0.1  # temb does depend on t
    # the file records where the weights came from
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ema.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["ddpm_ref"])
    assert meta["source"]["weights"] == "ema" and meta["source"]["global_step"] == 3
    assert meta["source"]["layout"] == "tensorflow" and meta["source"]["tensors"]["adam"] == 2 * N_MODEL


def test_python_api_and_load_pretrained(forward):
    model, info = load_tf_unet(PREFIX, resolution=RES, backend="ddpm_ref")
    assert info["named_config"] == [] and info["parameters"] == 285_667 and info["backend"] == "ddpm_ref"
    assert np.abs(_eps(model, forward) - forward["eps_ema"]).max() < 1e-4
    via_dispatch = load_pretrained(f"{PREFIX}.index", resolution=RES)  # EMA, like every converter
    for (k, a), b in zip(model.state_dict().items(), via_dispatch.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


# ---- cross-layout: the same weights written as TF checkpoint, pesser state dict, diffusers folder


def _level(name: str) -> tuple[str, ...]:
    return tuple(name.split("/"))


def tf_to_pesser(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """pytorch_diffusion's Model layout, written here from its structure (the TF scopes with dots,
    ``temb.dense.<0|1>``; q/k/v/proj_out/nin_shortcut are 1x1 convolutions)."""
    out = {}
    for name, a in arrays.items():
        parts = name.split("/")[1:]
        leaf = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}[parts[-1]]
        scope = ".".join(parts[:-1])
        scope = re.sub(r"\b(down|up|block|attn)_(\d+)\b", r"\1.\2", scope)
        scope = scope.replace("mid.block.", "mid.block_").replace("mid.attn.", "mid.attn_")
        scope = scope.replace("temb.dense0", "temb.dense.0").replace("temb.dense1", "temb.dense.1")
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        elif a.ndim == 2:
            dense = scope.startswith("temb") or scope.endswith("temb_proj")
            a = a.T if dense else a.T[:, :, None, None]
        out[f"{scope}.{leaf}"] = torch.from_numpy(np.array(a, order="C"))
    return out


# diffusers' UNet2DModel for the fixture's network, written out independently of ddpm_ref
FIXTURE_DIFFUSERS = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
    act_fn="silu", norm_num_groups=32, dropout=0.0,
)


def tf_to_diffusers(arrays: dict[str, np.ndarray], levels: int) -> dict[str, torch.Tensor]:
    """diffusers' names: decoder level i is up_blocks.<levels-1-i>; resnets/attentions lists."""
    res = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
           "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
    att = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    fixed = {"temb/dense0": "time_embedding.linear_1", "temb/dense1": "time_embedding.linear_2",
             "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}
    out = {}
    for name, a in arrays.items():
        parts = name.split("/")[1:]
        leaf = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}[parts[-1]]
        scope = "/".join(parts[:-1])
        if scope in fixed:
            key = fixed[scope]
        elif m := re.fullmatch(r"(down|up)_(\d+)/block_(\d+)/(\w+)", scope):
            blocks = "down_blocks" if m[1] == "down" else "up_blocks"
            idx = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
            key = f"{blocks}.{idx}.resnets.{m[3]}.{res[m[4]]}"
        elif m := re.fullmatch(r"(down|up)_(\d+)/attn_(\d+)/(\w+)", scope):
            blocks = "down_blocks" if m[1] == "down" else "up_blocks"
            idx = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
            key = f"{blocks}.{idx}.attentions.{m[3]}.{att[m[4]]}"
        elif m := re.fullmatch(r"down_(\d+)/downsample/conv", scope):
            key = f"down_blocks.{m[1]}.downsamplers.0.conv"
        elif m := re.fullmatch(r"up_(\d+)/upsample/conv", scope):
            key = f"up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv"
        elif m := re.fullmatch(r"mid/block_(\d)/(\w+)", scope):
            key = f"mid_block.resnets.{int(m[1]) - 1}.{res[m[2]]}"
        elif m := re.fullmatch(r"mid/attn_1/(\w+)", scope):
            key = f"mid_block.attentions.0.{att[m[1]]}"
        else:
            raise AssertionError(name)
        if a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        elif a.ndim == 2:
            a = a.T[:, :, None, None] if scope.endswith("nin_shortcut") else a.T
        out[f"{key}.{leaf}"] = torch.from_numpy(np.array(a, order="C"))
    return out


def test_three_layouts_convert_to_bit_identical_tensors(tmp_path, forward):
    """One set of weights (the fixture's raw ones) as TF checkpoint, pytorch_diffusion .ckpt and
    diffusers folder: the three conversions are equal bit for bit. The diffusers copy is checked
    against TensorFlow's forward pass through diffusers' own network, so the test's mappings are
    themselves checked, not assumed."""
    from diffusers import UNet2DModel

    with TFCheckpointReader(PREFIX) as r:
        arrays = {n: np.array(r.read(n)) for n in r.names() if classify_variable(n)[0] == "model"}
    # pytorch_diffusion layout
    pesser = tmp_path / "model-3.ckpt"
    torch.save(tf_to_pesser(arrays), pesser)
    # diffusers layout: load into diffusers' own UNet2DModel (strict), run it, save the folder
    ref = UNet2DModel(**FIXTURE_DIFFUSERS).eval()
    ref.load_state_dict(tf_to_diffusers(arrays, levels=2), strict=True)
    with torch.no_grad():
        x = torch.from_numpy(forward["x"]).permute(0, 3, 1, 2)
        eps = ref(x, torch.from_numpy(forward["t"])).sample.permute(0, 2, 3, 1).numpy()
    assert np.abs(eps - forward["eps_raw"]).max() < 1e-4  # diffusers(our copy) == TensorFlow
    ref.save_pretrained(tmp_path / "diffusers")

    outs = {}
    for name, src, extra in (("tf", FIXTURE, ["--no-ema", "--resolution", str(RES)]),
                             ("pesser", pesser, ["--resolution", str(RES)]),
                             ("diffusers", tmp_path / "diffusers", [])):
        out = tmp_path / f"{name}.safetensors"
        assert main(["convert", str(src), "--out", str(out), *extra]) == 0, name
        outs[name] = load_unet(out).state_dict()
    assert set(outs["tf"]) == set(outs["pesser"]) == set(outs["diffusers"])
    for key, a in outs["tf"].items():
        assert torch.equal(a, outs["pesser"][key]) and torch.equal(a, outs["diffusers"][key]), key
    # and equal to the checkpoint's own numbers (only transposed)
    w = arrays["model/down_1/attn_0/q/W"]
    assert np.array_equal(outs["tf"]["down.1.attn.0.q.weight"].numpy(), w.T)
    # the Python entry points agree too
    for a, b in zip(from_pesser(pesser, resolution=RES).state_dict().values(),
                    from_diffusers(tmp_path / "diffusers").state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---- a named configuration is recognised without --resolution


def _write_bundle(prefix: Path, tensors: dict[str, np.ndarray], *, header: bytes | None = None,
                  entry_patch=None) -> None:
    """A TF V2 tensor bundle written from the format description (for tests that need a checkpoint
    TensorFlow would not write, or one too large to commit): one data shard, an SSTable index
    with one data block, no prefix compression. ``entry_patch(name, fields) -> fields`` can alter
    a BundleEntryProto before it is encoded."""

    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                return bytes(out)

    def field(num: int, wire: int, payload) -> bytes:
        key = varint(num << 3 | wire)
        if wire == 0:
            return key + varint(payload)
        if wire == 5:
            return key + struct.pack("<I", payload)
        return key + varint(len(payload)) + payload

    dtypes = {np.dtype("float32"): 1, np.dtype("int64"): 9, np.dtype("float64"): 2}
    data, entries, offset = bytearray(), [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        fields = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "offset": offset, "size": len(raw),
                  "crc": mask_crc32c(crc32c(raw)), "slices": False}
        if entry_patch:
            fields = entry_patch(name, fields)
        shape = b"".join(field(2, 2, field(1, 0, d)) for d in fields["shape"])
        value = (field(1, 0, fields["dtype"]) + field(2, 2, shape) + field(4, 0, fields["offset"])
                 + field(5, 0, fields["size"]) + field(6, 5, fields["crc"])
                 + (field(7, 2, b"") if fields["slices"] else b""))
        entries.append((name.encode(), value))
        data += raw
        offset += len(raw)
    if header is None:
        header = field(1, 0, 1) + field(3, 2, field(1, 0, 1))  # 1 shard, little-endian, version 1
    entries.insert(0, (b"", header))

    def block(items) -> bytes:
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in items)
        return body + struct.pack("<II", 0, 1)

    table = bytearray()

    def put(b: bytes) -> tuple[int, int]:
        start = len(table)
        table.extend(b + b"\x00" + struct.pack("<I", mask_crc32c(crc32c(b + b"\x00"))))
        return start, len(b)

    d_off, d_size = put(block(entries))
    m_off, m_size = put(block([]))
    i_off, i_size = put(block([(entries[-1][0], varint(d_off) + varint(d_size))]))
    footer = varint(m_off) + varint(m_size) + varint(i_off) + varint(i_size)
    table.extend(footer.ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57))
    Path(f"{prefix}.index").write_bytes(bytes(table))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))


def ddpm_ref_to_tf(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The inverse naming, for writing a ddpm_ref network as an original-layout checkpoint."""
    out = {}
    for key, v in state.items():
        *scope, leaf = key.split(".")
        is_norm = "norm" in scope[-1]
        leaf = {"weight": "gamma" if is_norm else "W", "bias": "beta" if is_norm else "b"}[leaf]
        path = "/".join(scope)
        path = re.sub(r"\b(down|up|block|attn)/(\d+)\b", r"\1_\2", path)
        a = v.numpy()
        if a.ndim == 4:
            a = a[:, :, 0, 0].T if a.shape[2:] == (1, 1) and scope[-1] == "nin_shortcut" else a.transpose(2, 3, 1, 0)
        elif a.ndim == 2:
            a = a.T
        out[f"model/{path}/{leaf}"] = np.array(a, order="C")
    return out


def test_named_configuration_needs_no_resolution(tmp_path):
    """A checkpoint of the 'tiny' network (same naming) is recognised as a named configuration."""
    from ddpm_ref.unet import build_unet

    torch.manual_seed(0)
    tiny = build_unet("tiny", dropout=0.0)
    tensors = ddpm_ref_to_tf(tiny.state_dict())
    tensors.update({f"{k}/ExponentialMovingAverage": v + 1 for k, v in list(tensors.items())})
    tensors["global_step"] = np.array(12, dtype=np.int64)
    (tmp_path / "ckpt").mkdir()
    _write_bundle(tmp_path / "ckpt" / "model.ckpt-12", tensors)
    out = tmp_path / "tiny.safetensors"
    assert main(["convert", str(tmp_path / "ckpt"), "--out", str(out), "--no-ema"]) == 0
    back = load_unet(out)
    assert back.config["resolution"] == 32 and back.config["ch_mult"] == (1, 2)
    for k, v in tiny.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    model, info = load_tf_unet(tmp_path / "ckpt")  # EMA: every weight + 1
    assert info["named_config"] == ["tiny"] and info["global_step"] == 12
    assert torch.equal(model.state_dict()["conv_in.weight"], tiny.state_dict()["conv_in.weight"] + 1)


# ------------------------------------------------------------------------------------ refusals


def _copy_fixture(tmp_path) -> Path:
    d = tmp_path / "ckpt"
    d.mkdir()
    for f in (f"{PREFIX}.index", DATA):
        shutil.copy(f, d)
    return d / PREFIX.name


def _fixture_tensors() -> dict[str, np.ndarray]:
    with TFCheckpointReader(PREFIX) as r:
        return {n: np.array(r.read(n)) for n in r.names()}


def _refused(tmp_path, capsys, source, *extra) -> str:
    """Run the CLI; it must exit 2 with one stderr line 'error: ...' and write nothing."""
    out = tmp_path / "out.safetensors"
    code = main(["convert", str(source), "--out", str(out), "--resolution", str(RES), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert not out.exists()
    return lines[0]


def test_refuses_missing_data_shard(tmp_path, capsys):
    prefix = _copy_fixture(tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    line = _refused(tmp_path, capsys, prefix)
    assert f"{prefix}.data-00000-of-00001: missing" in line


def test_refuses_truncated_shard(tmp_path, capsys):
    prefix = _copy_fixture(tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-1000])
    line = _refused(tmp_path, capsys, prefix.parent)
    assert f"{data}: truncated" in line and "fetch the checkpoint again" in line


@pytest.mark.parametrize("ema", [True, False])
def test_refuses_crc_mismatch(tmp_path, capsys, ema):
    """One flipped bit in a tensor that is read (an EMA shadow, or a raw weight) is caught."""
    prefix = _copy_fixture(tmp_path)
    name = "model/mid/attn_1/q/W" + ("/ExponentialMovingAverage" if ema else "")
    entry = TFCheckpointReader(prefix).entries[name]
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    line = _refused(tmp_path, capsys, prefix, *([] if ema else ["--no-ema"]))
    assert f"{data}: crc32c mismatch in tensor '{name}'" in line


def test_refuses_damaged_index(tmp_path, capsys):
    prefix = _copy_fixture(tmp_path)
    index = Path(f"{prefix}.index")
    raw = bytearray(index.read_bytes())
    raw[100] ^= 0x01  # inside the first data block: its block crc fails
    index.write_bytes(bytes(raw))
    assert f"{index}: not a TensorFlow checkpoint index (block at offset 0 fails its crc32c check)" in \
        _refused(tmp_path, capsys, prefix)
    index.write_bytes(b"not an sstable at all, just text" * 3)
    assert "no table magic number" in _refused(tmp_path, capsys, prefix)


def test_refuses_unknown_dtype(tmp_path, capsys):
    tensors = _fixture_tensors()

    def as_string(name, f):
        return dict(f, dtype=7) if name == "model/conv_in/W/ExponentialMovingAverage" else f

    _write_bundle(tmp_path / "model.ckpt-3", tensors, entry_patch=as_string)
    line = _refused(tmp_path, capsys, tmp_path / "model.ckpt-3")
    assert f"{tmp_path / 'model.ckpt-3.index'}: tensor 'model/conv_in/W/ExponentialMovingAverage' has dtype " \
           "string, expected float32" in line
    # the reader itself refuses dtypes it does not know, e.g. bfloat16 for a scalar
    _write_bundle(tmp_path / "b16", {"x": np.zeros(2, np.float32)}, entry_patch=lambda n, f: dict(f, dtype=14))
    with pytest.raises(TFCheckpointError, match="dtype bfloat16, which this reader does not read"):
        TFCheckpointReader(tmp_path / "b16").read("x")


def test_refuses_unknown_version_endianness_and_slices(tmp_path, capsys):
    def varint_field(num, v):
        return bytes([num << 3, v])

    tensors = _fixture_tensors()
    newer = varint_field(1, 1) + bytes([3 << 3 | 2, 4]) + varint_field(1, 2) + varint_field(2, 2)
    _write_bundle(tmp_path / "v2", tensors, header=newer)
    assert "tensor bundle format version" in _refused(tmp_path, capsys, tmp_path / "v2")
    big = varint_field(1, 1) + varint_field(2, 1) + bytes([3 << 3 | 2, 2]) + varint_field(1, 1)
    _write_bundle(tmp_path / "big", tensors, header=big)
    assert "big-endian" in _refused(tmp_path, capsys, tmp_path / "big")
    _write_bundle(tmp_path / "sliced", {"x": np.zeros(3, np.float32)}, entry_patch=lambda n, f: dict(f, slices=True))
    with pytest.raises(TFCheckpointError, match="partitioned variable"):
        TFCheckpointReader(tmp_path / "sliced").read("x")


def test_refuses_other_networks(tmp_path, capsys):
    # a classifier's checkpoint: variables outside model/
    _write_bundle(tmp_path / "clf", {"dense/kernel": np.zeros((4, 2), np.float32),
                                     "global_step": np.array(5, np.int64)})
    line = _refused(tmp_path, capsys, tmp_path / "clf")
    assert f"{tmp_path / 'clf.index'}: not a checkpoint of the original DDPM U-Net (variables outside model/: " \
           "dense/kernel)" in line
    # model/ variables of another shape of network (no attention, odd leaves)
    _write_bundle(tmp_path / "odd", {"model/conv_in/kernel": np.zeros((3, 3, 3, 8), np.float32)})
    assert "unexpected variables model/conv_in/kernel" in _refused(tmp_path, capsys, tmp_path / "odd")
    # the original naming, but an incomplete network: missing blocks
    tensors = {k: v for k, v in _fixture_tensors().items() if "up_0/block_1" not in k}
    _write_bundle(tmp_path / "partial", tensors)
    assert "not a checkpoint of the original DDPM U-Net (weights do not fit the UNet" in \
        _refused(tmp_path, capsys, tmp_path / "partial")
    # the fixture without --resolution: a U-Net, but no named configuration
    out = tmp_path / "o.safetensors"
    assert main(["convert", str(FIXTURE), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {PREFIX}.index: a U-Net of 285,667 parameters (ch 32, ch_mult (1, 1), num_res_blocks "
                   "1) that is no named configuration (cifar10: 35,746,307 parameters; celebahq256/lsun256: "
                   "113,673,219); pass --resolution to convert it anyway")


def test_refuses_missing_ema(tmp_path, capsys):
    tensors = {k: v for k, v in _fixture_tensors().items() if not k.endswith("ExponentialMovingAverage")}
    _write_bundle(tmp_path / "noema", tensors)
    assert "no EMA shadows" in _refused(tmp_path, capsys, tmp_path / "noema")
    assert main(["convert", str(tmp_path / "noema"), "--out", str(tmp_path / "raw.safetensors"),
                 "--resolution", str(RES), "--no-ema"]) == 0


def test_refuses_directories_with_no_or_several_checkpoints(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _refused(tmp_path, capsys, empty)
    assert f"{empty}: no TensorFlow checkpoint (*.index) and no diffusers config.json" in line
    two = tmp_path / "two"
    two.mkdir()
    for step in (3, 5):
        shutil.copy(f"{PREFIX}.index", two / f"model.ckpt-{step}.index")
    line = _refused(tmp_path, capsys, two)
    assert f"{two}: 2 checkpoints in this directory (model.ckpt-3.index, model.ckpt-5.index)" in line
    assert "pass one of them" in line


def test_refusal_from_a_real_process(tmp_path):
    """``python -m ddpm_ref convert`` itself: exit 2, one line on stderr naming the file."""
    prefix = _copy_fixture(tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "ddpm_ref", "convert", str(prefix.parent), "--out",
                           str(tmp_path / "o.safetensors")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {prefix}.data-00000-of-00001: missing (the index lists tensors in this "
                                   f"data shard); copy it next to {prefix.name}.index")


def test_read_unet_state_rejects_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        read_unet_state(PREFIX, backend="torch")


# ------------------------------------------------------------------------------------ live TensorFlow


def _tensorflow_python() -> str | None:
    """An interpreter with TensorFlow: this one, $DDPM_TF_PYTHON, or the repository's .venv-tf."""
    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    for cand in (os.environ.get("DDPM_TF_PYTHON"), str(FIXTURE.parents[2] / ".venv-tf" / "bin" / "python")):
        if cand and Path(cand).is_file():
            return cand
    return None


@pytest.mark.slow
def test_live_tensorflow_checkpoint_and_reader(tmp_path):
    """A fresh checkpoint written by TensorFlow now (another seed): its forward outputs are
    reproduced after conversion, and TensorFlow's own reader returns the same bytes as ours for
    every tensor (and, when TensorFlow is importable here, backend="tensorflow" converts equal)."""
    python = _tensorflow_python()
    if python is None:
        pytest.skip("TensorFlow not found (install tensorflow-cpu, or set DDPM_TF_PYTHON)")
    repo = FIXTURE.parents[2]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([python, str(repo / "tools" / "make_tf_checkpoint.py"), "--config", "small", "--seed", "7",
                    "--steps", "2", "--out", str(tmp_path / "ckpt")], check=True, capture_output=True, env=env)
    dump = tmp_path / "tf_tensors.npz"
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "r = tf.train.load_checkpoint(sys.argv[1])\n"
            "np.savez(sys.argv[2], **{n.replace('/', '|'): r.get_tensor(n) for n in r.get_variable_to_shape_map()})\n")
    subprocess.run([python, "-c", code, str(tmp_path / "ckpt" / "model.ckpt-2"), str(dump)], check=True,
                   capture_output=True, env=env)
    theirs = {k.replace("|", "/"): v for k, v in np.load(dump).items()}
    with TFCheckpointReader(tmp_path / "ckpt") as r:
        assert sorted(theirs) == r.names()
        for name in r.names():
            ours = r.read(name)
            assert ours.dtype == theirs[name].dtype and np.array_equal(ours, theirs[name]), name
    fwd = dict(np.load(tmp_path / "ckpt" / "forward.npz"))
    for ema in (True, False):
        model, info = load_tf_unet(tmp_path / "ckpt", ema=ema, resolution=RES, backend="ddpm_ref")
        assert info["global_step"] == 2
        assert np.abs(_eps(model, fwd) - fwd["eps_ema" if ema else "eps_raw"]).max() < 1e-4
        assert np.abs(_temb(model, fwd) - fwd["temb_ema" if ema else "temb_raw"]).max() < 1e-4
        if python == sys.executable:
            tf_model, tf_info = load_tf_unet(tmp_path / "ckpt", ema=ema, resolution=RES, backend="tensorflow")
            assert tf_info["backend"] == "tensorflow"
            for (k, a), b in zip(model.state_dict().items(), tf_model.state_dict().values(), strict=True):
                assert torch.equal(a, b), k
    if python == sys.executable:  # TensorFlow's reader checks the crc32c too; its error is one line
        data = tmp_path / "ckpt" / "model.ckpt-2.data-00000-of-00001"
        entry = TFCheckpointReader(tmp_path / "ckpt").entries["model/conv_out/W/ExponentialMovingAverage"]
        raw = bytearray(data.read_bytes())
        raw[entry.offset + 3] ^= 0x01
        data.write_bytes(bytes(raw))
        with pytest.raises(TFCheckpointError, match=re.escape(f"{data}: TensorFlow cannot read tensor")):
            load_tf_unet(tmp_path / "ckpt", resolution=RES, backend="tensorflow")
        with pytest.raises(TFCheckpointError, match=re.escape(f"{data}: crc32c mismatch")):
            load_tf_unet(tmp_path / "ckpt", resolution=RES, backend="ddpm_ref")
