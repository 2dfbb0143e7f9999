"""Tests of ddpm_ref.convert: diffusers and pesser layouts give the same function as ours."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from ddpm_ref.convert import (
    FORMAT_TAG,
    detect_layout,
    diffusers_config_to_unet,
    from_diffusers,
    from_hub,
    from_pesser,
    load_pretrained,
    load_unet,
    save_unet,
)
from ddpm_ref.unet import build_unet, count_parameters

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DModel  # noqa: E402

# The google/ddpm-cifar10-32 configuration (design.md section 2), written out independently
# of ddpm_ref so that the test does not depend on the code under test.
CIFAR10_DIFFUSERS = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    attention_head_dim=None, act_fn="silu", norm_num_groups=32, dropout=0.1,
)
# A small configuration with every block type: 32x32, widths 32/64, attention at 16x16.
SMALL_DIFFUSERS = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
    block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_eps=1e-6, downsample_padding=0,
    flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None, act_fn="silu",
    norm_num_groups=32, dropout=0.0,
)


def random_diffusers(config: dict, seed: int = 0) -> UNet2DModel:
    """A diffusers UNet2DModel whose every weight is random (no near-zero layer stays ~0)."""
    torch.manual_seed(seed)
    model = UNet2DModel(**config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


def compare(ref: UNet2DModel, ours, batch: int = 3, seed: int = 1) -> float:
    g = torch.Generator().manual_seed(seed)
    res = ref.config.sample_size
    x = torch.randn(batch, ref.config.in_channels, res, res, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    with torch.no_grad():
        a = ref(x, t).sample
        b = ours(x, t)
    assert a.abs().max() > 0.1  # outputs are O(1): the comparison is not vacuous
    return (a - b).abs().max().item()


# ------------------------------------------------------------------ diffusers layout


def test_small_diffusers_directory_round_trip(tmp_path):
    ref = random_diffusers(SMALL_DIFFUSERS)
    ref.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    ours = from_diffusers(tmp_path)
    assert not ours.training
    assert ours.config["attn_resolutions"] == (16,) and ours.config["ch_mult"] == (1, 2)
    assert compare(ref, ours) < 1e-4
    # the detecting loader reaches the same weights
    assert compare(ref, load_pretrained(tmp_path)) < 1e-4


def test_cifar10_diffusers_directory_matches(tmp_path):
    ref = random_diffusers(CIFAR10_DIFFUSERS, seed=3)
    assert sum(p.numel() for p in ref.parameters()) == 35_746_307
    ref.save_pretrained(tmp_path)
    ours = from_diffusers(tmp_path)
    assert count_parameters(ours) == 35_746_307
    assert ours.config == build_unet("cifar10").config  # same architecture, dropout 0.1 too
    assert compare(ref, ours, batch=2) < 1e-4


def test_bin_weights_and_pipeline_folder(tmp_path):
    ref = random_diffusers(SMALL_DIFFUSERS, seed=4)
    unet_dir = tmp_path / "pipe" / "unet"
    ref.save_pretrained(unet_dir, safe_serialization=False)
    assert (unet_dir / "diffusion_pytorch_model.bin").is_file()
    assert compare(ref, from_diffusers(tmp_path / "pipe")) < 1e-4
    # a pipeline folder whose root config.json is not a UNet's still resolves to unet/
    (tmp_path / "pipe" / "config.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    assert compare(ref, from_diffusers(tmp_path / "pipe")) < 1e-4
    # a lone weights file next to its config.json
    assert compare(ref, load_pretrained(unet_dir / "diffusion_pytorch_model.bin")) < 1e-4


def test_legacy_attention_names(tmp_path):
    """Early hub uploads name attention weights query/key/value/proj_attn."""
    ref = random_diffusers(SMALL_DIFFUSERS, seed=5)
    legacy = {}
    for k, v in ref.state_dict().items():
        k = k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
        legacy[k.replace("to_out.0.", "proj_attn.")] = v
    assert any(".proj_attn." in k for k in legacy)
    ours = from_diffusers(legacy, config=dict(ref.config))
    assert compare(ref, ours) < 1e-4


def test_state_dict_without_config_infers_cifar10():
    ref = random_diffusers(CIFAR10_DIFFUSERS, seed=6)
    ours = from_diffusers(ref.state_dict())  # attention at level 1 -> resolution 32
    assert ours.config["resolution"] == 32 and ours.config["attn_resolutions"] == (16,)
    assert compare(ref, ours, batch=1) < 1e-4


def test_diffusers_key_errors():
    ref = random_diffusers(SMALL_DIFFUSERS, seed=7)
    cfg = dict(ref.config)
    state = ref.state_dict()

    missing = dict(state)
    del missing["down_blocks.1.attentions.0.to_k.weight"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\): \['down.1.attn.0.k.weight'\]"):
        from_diffusers(missing, config=cfg)

    extra = dict(state)
    extra["class_embedding.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected key\(s\): \['class_embedding.weight'\]"):
        from_diffusers(extra, config=cfg)

    wrong = dict(state)
    wrong["conv_in.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(ValueError, match=r"shape mismatch.*conv_in.weight: expected "
                                         r"\(32, 3, 3, 3\), got \(32, 3, 5, 5\)"):
        from_diffusers(wrong, config=cfg)

    nan = dict(state)
    nan["conv_out.bias"] = torch.full((3,), float("nan"))
    with pytest.raises(ValueError, match="finite"):
        from_diffusers(nan, config=cfg)


@pytest.mark.parametrize(
    "field, value, msg",
    [
        ("flip_sin_to_cos", True, "flip_sin_to_cos"),
        ("freq_shift", 0, "freq_shift"),
        ("downsample_padding", 1, "downsample_padding"),
        ("norm_eps", 1e-5, "norm_eps"),
        ("attention_head_dim", 8, "one attention head"),
        ("up_block_types", ("UpBlock2D", "AttnUpBlock2D"), "same levels"),
        ("down_block_types", ("DownBlock2D", "CrossAttnDownBlock2D"), "block types"),
        ("_class_name", "UNet2DConditionModel", "UNet2DModel"),
        ("block_out_channels", None, "missing keys"),
    ],
)
def test_unsupported_diffusers_configs(field, value, msg):
    cfg = dict(SMALL_DIFFUSERS)
    cfg[field] = value
    if value is None:
        del cfg[field]
    with pytest.raises(ValueError, match=msg):
        diffusers_config_to_unet(cfg)
    with pytest.raises(ValueError, match="config mapping"):
        diffusers_config_to_unet(["not", "a", "mapping"])


def test_directory_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        from_diffusers(tmp_path / "nope")
    with pytest.raises(ValueError, match="config.json"):
        from_diffusers(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(SMALL_DIFFUSERS))
    with pytest.raises(ValueError, match="diffusion_pytorch_model"):
        from_diffusers(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(tmp_path / "missing.ckpt")


def test_from_hub_plumbing_offline(tmp_path, monkeypatch):
    """from_hub needs network; here snapshot_download is replaced by a local folder."""
    hub = pytest.importorskip("huggingface_hub")
    ref = random_diffusers(SMALL_DIFFUSERS, seed=8)
    ref.save_pretrained(tmp_path)
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append(repo_id)
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    assert compare(ref, from_hub("google/ddpm-cifar10-32")) < 1e-4
    assert calls == ["google/ddpm-cifar10-32"]


# ------------------------------------------------------------------ pesser layout


def pesser_state_dict(ch, ch_mult, num_res_blocks, attn_levels, in_ch=3, out_ch=3, seed=0):
    """Random weights under pesser/pytorch_diffusion's Model key names and shapes.

    Written from that model's structure (TF scopes; attention q/k/v/proj_out are 1x1 convs;
    temb.dense is a 2-entry ModuleList), independently of ddpm_ref.convert.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def rnd(*shape):
        return torch.randn(shape, generator=g) * 0.02

    def norm(prefix, c):
        sd[f"{prefix}.weight"] = 1 + rnd(c)
        sd[f"{prefix}.bias"] = rnd(c)

    def conv(prefix, cin, cout, k):
        sd[f"{prefix}.weight"] = rnd(cout, cin, k, k)
        sd[f"{prefix}.bias"] = rnd(cout)

    def resblock(prefix, cin, cout):
        norm(f"{prefix}.norm1", cin)
        conv(f"{prefix}.conv1", cin, cout, 3)
        sd[f"{prefix}.temb_proj.weight"] = rnd(cout, 4 * ch)
        sd[f"{prefix}.temb_proj.bias"] = rnd(cout)
        norm(f"{prefix}.norm2", cout)
        conv(f"{prefix}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.nin_shortcut", cin, cout, 1)

    def attn(prefix, c):
        norm(f"{prefix}.norm", c)
        for name in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.{name}", c, c, 1)

    sd["temb.dense.0.weight"], sd["temb.dense.0.bias"] = rnd(4 * ch, ch), rnd(4 * ch)
    sd["temb.dense.1.weight"], sd["temb.dense.1.bias"] = rnd(4 * ch, 4 * ch), rnd(4 * ch)
    conv("conv_in", in_ch, ch, 3)
    mults = (1,) + tuple(ch_mult)
    cur = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            resblock(f"down.{i}.block.{j}", cur, ch * m)
            cur = ch * m
            if i in attn_levels:
                attn(f"down.{i}.attn.{j}", cur)
        if i != len(ch_mult) - 1:
            conv(f"down.{i}.downsample.conv", cur, cur, 3)
    resblock("mid.block_1", cur, cur)
    attn("mid.attn_1", cur)
    resblock("mid.block_2", cur, cur)
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            skip = ch * (mults[i] if j == num_res_blocks else ch_mult[i])
            resblock(f"up.{i}.block.{j}", cur + skip, ch * ch_mult[i])
            cur = ch * ch_mult[i]
            if i in attn_levels:
                attn(f"up.{i}.attn.{j}", cur)
        if i != 0:
            conv(f"up.{i}.upsample.conv", cur, cur, 3)
    norm("norm_out", cur)
    conv("conv_out", cur, out_ch, 3)
    return sd


def functional_reference(sd, x, t, ch, num_levels, num_res_blocks):
    """The original network written as plain functions over a pesser-layout state dict.

    Independent of ddpm_ref.unet: explicit softmax attention with bmm, F.pad for SAME padding.
    """
    def gn(p, h):
        return F.group_norm(h, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)

    def conv(p, h, **kw):
        return F.conv2d(h, sd[f"{p}.weight"], sd[f"{p}.bias"], **kw)

    def res(p, h, temb):
        r = conv(f"{p}.conv1", F.silu(gn(f"{p}.norm1", h)), padding=1)
        r = r + F.linear(F.silu(temb), sd[f"{p}.temb_proj.weight"],
                         sd[f"{p}.temb_proj.bias"])[:, :, None, None]
        r = conv(f"{p}.conv2", F.silu(gn(f"{p}.norm2", r)), padding=1)
        if f"{p}.nin_shortcut.weight" in sd:
            h = conv(f"{p}.nin_shortcut", h)
        return h + r

    def att(p, h):
        b, c, hh, ww = h.shape
        n = gn(f"{p}.norm", h)
        q, k, v = (conv(f"{p}.{s}", n).reshape(b, c, hh * ww) for s in "qkv")
        w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * c ** -0.5, dim=2)  # [b, i, j]
        o = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return h + conv(f"{p}.proj_out", o)

    half = ch // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    e = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.sin(e), torch.cos(e)], dim=1)
    temb = F.linear(temb, sd["temb.dense.0.weight"], sd["temb.dense.0.bias"])
    temb = F.linear(F.silu(temb), sd["temb.dense.1.weight"], sd["temb.dense.1.bias"])
    hs = [conv("conv_in", x, padding=1)]
    for i in range(num_levels):
        for j in range(num_res_blocks):
            h = res(f"down.{i}.block.{j}", hs[-1], temb)
            if f"down.{i}.attn.{j}.q.weight" in sd:
                h = att(f"down.{i}.attn.{j}", h)
            hs.append(h)
        if i != num_levels - 1:
            hs.append(conv(f"down.{i}.downsample.conv", F.pad(hs[-1], (0, 1, 0, 1)), stride=2))
    h = res("mid.block_2", att("mid.attn_1", res("mid.block_1", hs[-1], temb)), temb)
    for i in reversed(range(num_levels)):
        for j in range(num_res_blocks + 1):
            h = res(f"up.{i}.block.{j}", torch.cat([h, hs.pop()], dim=1), temb)
            if f"up.{i}.attn.{j}.q.weight" in sd:
                h = att(f"up.{i}.attn.{j}", h)
        if i != 0:
            h = conv(f"up.{i}.upsample.conv", F.interpolate(h, scale_factor=2.0), padding=1)
    return conv("conv_out", F.silu(gn("norm_out", h)), padding=1)


@pytest.mark.parametrize(
    "ch, ch_mult, nrb, attn_levels, res",
    [(32, (1, 2), 1, (1,), 32), (128, (1, 2, 2, 2), 2, (1,), 32)],
    ids=["small", "cifar10"],
)
def test_pesser_layout_matches_functional_reference(tmp_path, ch, ch_mult, nrb, attn_levels,
                                                    res):
    sd = pesser_state_dict(ch, ch_mult, nrb, attn_levels, seed=11)
    assert detect_layout(sd) == "pesser"
    ours = from_pesser(sd)
    assert ours.config["resolution"] == res and ours.config["attn_resolutions"] == (16,)
    if ch == 128:
        assert count_parameters(ours) == 35_746_307
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, res, res, generator=g)
    t = torch.tensor([7, 981])
    with torch.no_grad():
        ref = functional_reference(sd, x, t, ch, len(ch_mult), nrb)
        out = ours(x, t)
    assert ref.abs().max() > 0.1
    assert (ref - out).abs().max() < 1e-4
    # the same weights from a .ckpt file, layout detected
    path = tmp_path / "model-790000.ckpt"
    torch.save(sd, path)
    with torch.no_grad():
        assert (load_pretrained(path)(x, t) - ref).abs().max() < 1e-4


def test_pesser_errors():
    sd = pesser_state_dict(32, (1, 2), 1, (1,))
    bad = dict(sd)
    bad["up.1.attn.0.q.weight"] = torch.zeros(64, 32, 1, 1)
    with pytest.raises(ValueError, match=r"shape mismatch.*up.1.attn.0.q.weight"):
        from_pesser(bad)
    with pytest.raises(ValueError, match="could not recognise"):
        detect_layout({"foo.weight": torch.zeros(1)})


# ------------------------------------------------------------------ our own format


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(9)
    m = build_unet("tiny16", out_channels=6, dropout=0.2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_unet(m, tmp_path / "sub" / "unet.safetensors")
    back = load_unet(path)
    assert back.config == m.config and not back.training
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    m.eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 999])
    with torch.no_grad():
        assert torch.equal(m(x, t), back(x, t))
    assert torch.equal(load_pretrained(path)(x, t), back(x, t))  # detected by metadata
    # a plain state dict of ours (e.g. a training checkpoint's model entry) also loads
    torch.save(m.state_dict(), tmp_path / "plain.pt")
    assert detect_layout(torch.load(tmp_path / "plain.pt")) == "ddpm_ref"
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "plain.pt", resolution=16)(x, t),
                           back(x, t))


def test_save_is_byte_identical_across_processes(tmp_path):
    """Saving the same weights twice gives the same bytes (so a shipped file's checksum can be
    re-derived from its command): the metadata is one sorted-key JSON string, not a multi-key
    dict that safetensors writes in a per-process random order."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from ddpm_ref.unet import build_unet; from ddpm_ref.convert import save_unet;"
        "torch.manual_seed(0); save_unet(build_unet('tiny16'), sys.argv[1])"
    )
    paths = [tmp_path / f"u{i}.safetensors" for i in range(3)]
    for p in paths:
        subprocess.run([sys.executable, "-c", code, str(p)], check=True)
    blobs = [p.read_bytes() for p in paths]
    assert blobs[0] == blobs[1] == blobs[2]


def test_files_with_the_earlier_two_key_metadata_still_load(tmp_path):
    from safetensors.torch import save_file

    m = build_unet("tiny16")
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    save_file(state, str(tmp_path / "old.safetensors"),
              metadata={"format": FORMAT_TAG, "ddpm_ref_config": json.dumps(m.config)})
    assert load_unet(tmp_path / "old.safetensors").config == m.config


def test_save_load_errors(tmp_path):
    m = build_unet("tiny")
    with pytest.raises(ValueError, match=".safetensors"):
        save_unet(m, tmp_path / "unet.pt")
    with pytest.raises(ValueError, match="ddpm_ref UNet"):
        save_unet(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=FORMAT_TAG.replace(".", r"\.")):
        load_unet(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        load_unet(tmp_path / "none.safetensors")
