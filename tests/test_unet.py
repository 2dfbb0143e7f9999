"""Tests of ddpm_ref.unet: the paper's network, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm_ref.unet import (
    UNET_CONFIGS,
    AttnBlock,
    Downsample,
    ResBlock,
    UNet,
    Upsample,
    _dropout,
    block_table,
    build_unet,
    count_parameters,
    format_block_table,
    parameter_table,
    timestep_embedding,
    unet_config,
)


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Give every parameter (also the near-zero-initialised ones) random O(scale) values, and
    GroupNorm gains around 1, so that outputs are O(1) and every layer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


@pytest.fixture(scope="module")
def cifar_model():
    torch.manual_seed(0)
    return build_unet("cifar10").eval()


# ------------------------------------------------------------------ configurations


def test_cifar10_parameter_count_matches_paper(cifar_model):
    assert sum(p.numel() for p in cifar_model.parameters()) == 35_746_307
    assert count_parameters("cifar10") == 35_746_307


@pytest.mark.parametrize("name", ["celebahq256", "lsun256"])
def test_256_parameter_count_matches_paper(name):
    # built on the meta device: no memory, instant
    assert count_parameters(name) == 113_673_219


def test_learned_variance_head_adds_only_conv_out_channels():
    # conv_out 128 -> 6 instead of 128 -> 3: 3 * (128 * 9 + 1) more parameters
    assert count_parameters("cifar10", out_channels=6) - count_parameters("cifar10") == 3 * 1153


def test_config_helpers():
    cfg = unet_config("cifar10", dropout=0.0)
    assert cfg["dropout"] == 0.0 and UNET_CONFIGS["cifar10"]["dropout"] == 0.1  # fresh copy
    assert cfg["ch_mult"] == (1, 2, 2, 2) and cfg["attn_resolutions"] == (16,)
    with pytest.raises(ValueError, match="unknown UNet configuration"):
        unet_config("imagenet")
    with pytest.raises(ValueError, match="unknown UNet option"):
        unet_config("cifar10", widht=3)
    assert count_parameters("tiny") < 1_000_000


def test_cifar10_structure(cifar_model):
    m = cifar_model
    # six attention blocks: 2 in the 16x16 encoder level, 1 in the middle, 3 in the decoder
    attn = [mod for mod in m.modules() if isinstance(mod, AttnBlock)]
    assert len(attn) == 6
    assert [len(level.attn) for level in m.down] == [0, 2, 0, 0]
    assert [len(level.attn) for level in m.up] == [0, 3, 0, 0]
    # encoder 2 res blocks per level, decoder 3; 4 + 4 + 4 * 3 + 2 = ... total 22 ResBlocks
    assert sum(isinstance(mod, ResBlock) for mod in m.modules()) == 4 * 2 + 4 * 3 + 2
    assert m.up[0].block[0].in_ch == 256 + 128 and m.up[0].block[2].in_ch == 128 + 128
    assert m.up[1].block[2].in_ch == 256 + 128  # the skip from the 32x32 downsample output
    assert m.up[0].upsample is None and m.down[3].downsample is None


# ------------------------------------------------------------------ layers vs direct formulas


def test_timestep_embedding_formula_float64():
    t = torch.tensor([0, 1, 17, 500, 999])
    emb = timestep_embedding(t, 128).double()
    half = 64
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / (half - 1))
    args = t.numpy()[:, None].astype(np.float64) * freqs[None, :]
    expected = np.concatenate([np.sin(args), np.cos(args)], axis=1)  # [sin, cos] order
    assert emb.shape == (5, 128) and emb.dtype == torch.float64
    np.testing.assert_allclose(emb.numpy(), expected, atol=2e-4)  # float32 at t = 999
    np.testing.assert_allclose(emb[:2].numpy(), expected[:2], atol=1e-6)
    assert torch.all(emb[0, :64] == 0) and torch.all(emb[0, 64:] == 1)  # t = 0
    odd = timestep_embedding(t, 9)
    assert odd.shape == (5, 9) and torch.all(odd[:, -1] == 0)


def test_timestep_embedding_matches_diffusers_convention():
    emb_mod = pytest.importorskip("diffusers.models.embeddings")
    t = torch.arange(0, 1000, 37)
    theirs = emb_mod.get_timestep_embedding(t, 128, flip_sin_to_cos=False,
                                            downscale_freq_shift=1)
    torch.testing.assert_close(timestep_embedding(t, 128), theirs, atol=2e-4, rtol=0)


def test_timestep_embedding_validation():
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        timestep_embedding(torch.zeros(2, 1, dtype=torch.long), 128)
    with pytest.raises(ValueError, match="dim >= 4"):
        timestep_embedding(torch.zeros(2, dtype=torch.long), 2)


def test_downsample_is_tf_same_padding():
    torch.manual_seed(1)
    down = Downsample(4).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    y = down(x)
    assert y.shape == (2, 4, 4, 4)
    # TF "SAME", stride 2, kernel 3, even size: total padding 1, all of it after (right/bottom).
    # Output (i, j) therefore sees input rows 2i..2i+2 and columns 2j..2j+2 (zero beyond 7).
    w, b = down.conv.weight, down.conv.bias
    xp = np.zeros((2, 4, 10, 10))
    xp[:, :, :8, :8] = x.numpy()
    ref = np.zeros((2, 4, 4, 4))
    for i in range(4):
        for j in range(4):
            win = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            ref[:, :, i, j] = np.einsum("ncij,ocij->no", win, w.detach().numpy()) + b.detach().numpy()
    np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-12)
    # symmetric padding=1 would differ: the grid is shifted by one pixel
    sym = F.conv2d(x, w, b, stride=2, padding=1)
    assert (sym - y).abs().max() > 1e-2


def test_upsample_nearest_matches_tf_align_corners_rule():
    torch.manual_seed(2)
    up = Upsample(2, with_conv=False)
    x = torch.randn(1, 2, 16, 16)
    y = up(x)
    # tf.image.resize(NEAREST, align_corners=True): out i <- in round(i * (H - 1) / (2H - 1))
    idx = np.round(np.arange(32) * 15 / 31).astype(int)
    ref = x.numpy()[:, :, idx][:, :, :, idx]
    np.testing.assert_array_equal(y.numpy(), ref)
    assert Upsample(2)(x).shape == (1, 2, 32, 32)


def test_attention_block_matches_explicit_softmax():
    torch.manual_seed(3)
    blk = perturb_(AttnBlock(64), scale=0.2).double()
    x = torch.randn(2, 64, 8, 8, dtype=torch.float64)
    h = F.group_norm(x, 32, blk.norm.weight, blk.norm.bias, 1e-6)
    hs = h.flatten(2).transpose(1, 2)  # [N, HW, C]
    q = hs @ blk.q.weight.T + blk.q.bias
    k = hs @ blk.k.weight.T + blk.k.bias
    v = hs @ blk.v.weight.T + blk.v.bias
    w = torch.softmax(torch.einsum("nic,njc->nij", q, k) / math.sqrt(64), dim=-1)
    o = torch.einsum("nij,njc->nic", w, v) @ blk.proj_out.weight.T + blk.proj_out.bias
    ref = x + o.transpose(1, 2).reshape(2, 64, 8, 8)
    torch.testing.assert_close(blk(x), ref, atol=1e-10, rtol=1e-10)


def test_resblock_matches_explicit_composition():
    torch.manual_seed(4)
    blk = perturb_(ResBlock(32, 64, 128, dropout=0.0), scale=0.2).double()
    x = torch.randn(2, 32, 8, 8, dtype=torch.float64)
    temb = torch.randn(2, 128, dtype=torch.float64)
    h = F.silu(F.group_norm(x, 32, blk.norm1.weight, blk.norm1.bias, 1e-6))
    h = F.conv2d(h, blk.conv1.weight, blk.conv1.bias, padding=1)
    h = h + (F.silu(temb) @ blk.temb_proj.weight.T + blk.temb_proj.bias)[:, :, None, None]
    h = F.silu(F.group_norm(h, 32, blk.norm2.weight, blk.norm2.bias, 1e-6))
    h = F.conv2d(h, blk.conv2.weight, blk.conv2.bias, padding=1)
    skip = F.conv2d(x, blk.nin_shortcut.weight, blk.nin_shortcut.bias)
    torch.testing.assert_close(blk(x, temb), skip + h, atol=1e-10, rtol=1e-10)
    assert ResBlock(64, 64, 128, 0.0).nin_shortcut is None


@pytest.mark.parametrize("hw", [4, 8, 16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_subpixel_equals_direct(hw, channels_last):
    torch.manual_seed(8)
    up = perturb_(Upsample(32), scale=0.3).double()
    x = torch.randn(2, 32, hw, hw, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    up.impl = "direct"
    ref = up(x)
    up.impl = "subpixel"
    out = up(x)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    up.impl = "auto"  # picks subpixel on CPU from 16x16 inputs; same function either way
    torch.testing.assert_close(up(x), ref, atol=1e-12, rtol=1e-12)
    # gradients agree too
    xs = x.detach().requires_grad_()
    up.impl = "direct"
    (g_ref,) = torch.autograd.grad((up(xs) ** 2).sum(), xs)
    up.impl = "subpixel"
    (g_out,) = torch.autograd.grad((up(xs) ** 2).sum(), xs)
    torch.testing.assert_close(g_out, g_ref, atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="impl"):
        Upsample(32, impl="fast")


@pytest.mark.parametrize("autocast", [False, True])
def test_attention_backends_agree(autocast):
    torch.manual_seed(9)
    blk = perturb_(AttnBlock(64), scale=0.2)
    x = torch.randn(2, 64, 8, 8)
    outs = {}
    for backend in AttnBlock.BACKENDS:
        blk.backend = backend
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outs[backend] = blk(x).float()
    tol = 3e-2 if autocast else 1e-5
    torch.testing.assert_close(outs["math"], outs["sdpa"], atol=tol, rtol=tol)
    torch.testing.assert_close(outs["auto"], outs["math" if autocast else "sdpa"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="backend"):
        AttnBlock(64, backend="flash")
    m = build_unet("tiny").set_attention_backend("math")
    assert all(a.backend == "math" for a in m.modules() if isinstance(a, AttnBlock))
    with pytest.raises(ValueError, match="backend"):
        m.set_attention_backend("xformers")


def test_dropout_statistics():
    torch.manual_seed(10)
    h = torch.ones(400_000)
    out = _dropout(h, 0.1, training=True)
    kept = out != 0
    # P(keep) = 0.9: binomial std of the kept fraction is sqrt(0.9 * 0.1 / 4e5) = 4.7e-4
    assert abs(kept.float().mean().item() - 0.9) < 5 * 4.7e-4
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.9))  # inverted
    assert _dropout(h, 0.1, training=False) is h and _dropout(h, 0.0, training=True) is h
    hb = torch.ones(1000, dtype=torch.bfloat16, requires_grad=True)
    ob = _dropout(hb, 0.5, training=True)
    assert ob.dtype == torch.bfloat16
    ob.sum().backward()
    torch.testing.assert_close(hb.grad, (ob != 0).to(torch.bfloat16) * 2)


# ------------------------------------------------------------------ initialisation


def test_initialisation_glorot_uniform_and_near_zero(cifar_model):
    m = cifar_model
    near_zero = {"conv_out.weight"}
    for name, mod in m.named_modules():
        if isinstance(mod, ResBlock):
            near_zero.add(f"{name}.conv2.weight")
        if isinstance(mod, AttnBlock):
            near_zero.add(f"{name}.proj_out.weight")
    assert len(near_zero) == 1 + 22 + 6
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name  # zero biases (GroupNorm beta too)
            continue
        if "norm" in name:
            assert torch.all(p == 1), name  # GroupNorm gamma
            continue
        rf = p[0, 0].numel() if p.dim() > 2 else 1
        fan_avg = (p.shape[0] + p.shape[1]) * rf / 2
        scale = 1e-10 if name in near_zero else 1.0
        limit = math.sqrt(3 * scale / fan_avg)
        assert p.abs().max() <= limit, name
        if p.numel() >= 10_000:  # U(-a, a) has std a / sqrt(3)
            assert abs(p.std().item() / (limit / math.sqrt(3)) - 1) < 0.05, name


def test_fresh_model_predicts_near_zero(cifar_model):
    # conv_out starts near zero (scale 1e-10), like the original: initial eps prediction ~ 0
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    with torch.no_grad():
        out = cifar_model(x, t)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() < 1e-3


# ------------------------------------------------------------------ forward behaviour


@pytest.fixture(scope="module")
def tiny_perturbed():
    torch.manual_seed(5)
    return perturb_(build_unet("tiny", dropout=0.0)).eval()


def test_forward_shapes_and_int32_timesteps(tiny_perturbed):
    x = torch.randn(3, 3, 32, 32)
    y64 = tiny_perturbed(x, torch.tensor([1, 2, 3]))
    y32 = tiny_perturbed(x, torch.tensor([1, 2, 3], dtype=torch.int32))
    assert y64.shape == (3, 3, 32, 32) and torch.isfinite(y64).all()
    torch.testing.assert_close(y64, y32)
    m6 = build_unet("tiny16", out_channels=6)
    assert m6(torch.randn(2, 3, 16, 16), torch.tensor([0, 9])).shape == (2, 6, 16, 16)


def test_output_depends_on_timestep_and_batch_independence(tiny_perturbed):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = tiny_perturbed(x, torch.tensor([10, 10]))
        b = tiny_perturbed(x, torch.tensor([10, 900]))
        single = tiny_perturbed(x[1:], torch.tensor([900]))
    torch.testing.assert_close(a[0], b[0])  # example 0 unchanged
    assert (a[1] - b[1]).abs().max() > 1e-3  # t changes the prediction
    torch.testing.assert_close(b[1:], single, atol=1e-5, rtol=1e-5)  # no cross-batch leakage


def test_dropout_only_in_training():
    torch.manual_seed(6)
    m = perturb_(build_unet("tiny", dropout=0.5))
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 4])
    m.train()
    assert (m(x, t) - m(x, t)).abs().max() > 1e-4
    m.eval()
    torch.testing.assert_close(m(x, t), m(x, t), atol=0, rtol=0)


def test_gradients_reach_every_parameter(tiny_perturbed):
    m = perturb_(build_unet("tiny", dropout=0.1)).train()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 700])
    F.mse_loss(m(x, t), torch.randn(2, 3, 32, 32)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_channels_last_matches(tiny_perturbed):
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 800])
    with torch.no_grad():
        ref = tiny_perturbed(x, t)
        m = build_unet("tiny", dropout=0.0)
        m.load_state_dict(tiny_perturbed.state_dict())
        m = m.to(memory_format=torch.channels_last).eval()
        out = m(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_close_to_fp32(cifar_model):
    m = perturb_(build_unet("cifar10", dropout=0.0), seed=7, scale=0.02).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([2, 600])
    with torch.no_grad():
        ref = m(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, t)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert ref.abs().max() > 0.1 and rel < 0.05, rel


def test_bf16_weights(tiny_perturbed):
    m = build_unet("tiny", dropout=0.0)
    m.load_state_dict(tiny_perturbed.state_dict())
    m = m.to(torch.bfloat16).eval()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    with torch.no_grad():
        out = m(x.bfloat16(), t)
        ref = tiny_perturbed(x, t)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() / ref.norm() < 0.05


# ------------------------------------------------------------------ input validation


def test_forward_input_validation(tiny_perturbed):
    m = tiny_perturbed
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    cases = [
        (torch.randn(2, 4, 32, 32), t, "3 channels"),
        (torch.randn(2, 3, 16, 16), t, "32x32"),
        (torch.randn(2, 3, 32, 16), t, "32x32"),
        (torch.randn(3, 32, 32), t, r"\[N, C, H, W\]"),
        (x.long(), t, "floating-point"),
        (x.double(), t, "model's dtype"),
        (x, torch.tensor([1, 2, 3]), r"shape \[N\]"),
        (x, torch.tensor([[1], [2]]), r"shape \[N\]"),
        (x, torch.tensor([1.0, 2.0]), "integer timesteps"),
        (x, torch.tensor([True, False]), "integer timesteps"),
        (x.numpy(), t, "tensors"),
    ]
    for xx, tt, msg in cases:
        with pytest.raises(ValueError, match=msg):
            m(xx, tt)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            m(x.to("meta"), t)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(resolution=30, ch_mult=(1, 2, 2)), "divisible by 2"),
        (dict(ch=48), "divisible by 32"),
        (dict(ch_mult=()), "non-empty"),
        (dict(ch_mult=(1, 0)), "ch_mult"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(in_channels=2.5), "in_channels"),
        (dict(attn_resolutions=(-1,)), "attn_resolutions"),
    ],
)
def test_constructor_validation(kwargs, msg):
    base = unet_config("tiny")
    base.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        UNet(**base)


# ------------------------------------------------------------------ parameter tables


def test_parameter_table(cifar_model):
    rows = parameter_table(cifar_model)
    assert sum(r.count for r in rows) == 35_746_307
    assert sorted(r.name for r in rows) == sorted(n for n, _ in cifar_model.named_parameters())
    assert all(math.prod(r.shape) == r.count for r in rows)
    assert rows[0].name.startswith("temb.") and rows[-1].name.startswith("conv_out.")
    names = [r.name for r in rows]
    # forward order: the decoder starts at the deepest level (up.3)
    assert names.index("mid.attn_1.q.weight") < names.index("up.3.block.0.conv1.weight") \
        < names.index("up.0.block.0.conv1.weight")
    blocks = block_table(cifar_model)
    assert sum(b.count for b in blocks) == 35_746_307
    assert sum(b.kind.startswith("Attention") for b in blocks) == 6
    assert {b.resolution for b in blocks if b.kind.startswith("Attention")} == {16, 4}
    assert [b for b in blocks if b.block == "up.1.block.2"][0].kind == "ResBlock 384->256"
    text = format_block_table(cifar_model)
    assert "35,746,307" in text and "down.1.attn.0" in text
    with pytest.raises(ValueError, match="ddpm_ref UNet"):
        parameter_table(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------ torch.compile


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_perturbed):
    m = build_unet("tiny", dropout=0.0)
    m.load_state_dict(tiny_perturbed.state_dict())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([4, 400])
    compiled = torch.compile(m)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), m(x, t), atol=1e-4, rtol=1e-4)
    m.train()
    loss = F.mse_loss(compiled(x, t), torch.zeros_like(x))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
