"""The DDPM noise-prediction network eps_theta(x_t, t) (Ho et al. 2020, Section 4 and Appendix B).

This is the original "unet2d16b2" U-Net of the paper's TensorFlow code (``models/unet.py`` in
hojonathanho/diffusion), rebuilt layer for layer in PyTorch:

* sinusoidal embedding of the timestep (dimension ``ch``, [sin, cos] order, frequencies
  ``exp(-log(10000) * i / (half - 1))``), dense ``ch -> 4 ch``, swish, dense ``4 ch -> 4 ch``;
* ``conv_in`` (3x3) then, per resolution level, ``num_res_blocks`` residual blocks (each followed
  by one-head self-attention at the resolutions in ``attn_resolutions``) and a stride-2 3x3
  downsampling convolution with TensorFlow "SAME" padding (pad right/bottom by one);
* a middle of residual block, attention, residual block;
* per level in reverse, ``num_res_blocks + 1`` residual blocks, each fed the concatenation of the
  current activations and one stored skip activation, then nearest x2 upsampling + 3x3 conv;
* GroupNorm, swish, ``conv_out`` (3x3) to ``out_channels`` (3, or 6 when the variances are learned:
  the first 3 channels are eps, the last 3 the variance interpolation ``v`` of Nichol & Dhariwal).

Module names follow the TensorFlow variable scopes: TF ``model/down_1/attn_0/q/W`` is
``down.1.attn.0.q.weight`` here (transposed to PyTorch's ``[out, in]``), ``up.<i>`` is decoder
level ``i`` (run from the deepest level up, like ``up_<i>``), ``mid.block_1`` / ``mid.attn_1`` /
``mid.block_2`` and ``temb.dense0`` / ``temb.dense1`` keep their TF names.

Timesteps are 0-based code timesteps ``t in {0, ..., T-1}`` (paper ``t = code t + 1``, see
``ddpm_ref.diffusion``); the network embeds the code value, exactly as the original did.

Speed (measured in benchmarks/README.md; each fast path is tested equal to the plain form):
attention runs in ``scaled_dot_product_attention`` (fused kernels) except for bf16/fp16 on CPU,
where two matmuls with a float32 softmax are ~2.5x faster; on CPU the 16x16 -> 32x32 upsampling
uses the exact sub-pixel form (four 2x2 convolutions, 4/9 of the multiply-adds); eager CPU
dropout draws its mask with ``torch.rand``. bf16 autocast, channels_last and torch.compile work.

Named configurations (``unet_config``, ``build_unet``): ``"cifar10"`` (35,746,307 parameters, the
paper's 35.7M), ``"celebahq256"`` / ``"lsun256"`` (113,673,219, the paper's 114M) and the small
CPU configurations ``"tiny"`` (32x32) and ``"tiny16"`` (16x16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GROUPS",
    "GN_EPS",
    "UNET_CONFIGS",
    "UNet",
    "ResBlock",
    "AttnBlock",
    "Downsample",
    "Upsample",
    "timestep_embedding",
    "unet_config",
    "build_unet",
    "count_parameters",
    "parameter_table",
    "block_table",
    "format_block_table",
]

GROUPS = 32  # GroupNorm groups (tf.contrib.layers.group_norm default)
GN_EPS = 1e-6  # GroupNorm epsilon (tf.contrib.layers.group_norm default)
NEAR_ZERO_SCALE = 1e-10  # the original replaces init_scale=0 by variance scaling 1e-10

# --------------------------------------------------------------------------------------------
# Named configurations
# --------------------------------------------------------------------------------------------

UNET_CONFIGS: dict[str, dict] = {
    # The paper's CIFAR-10 model, "unet2d16b2" (scripts/run_cifar.py): 35,746,307 parameters.
    "cifar10": dict(
        in_channels=3, out_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
        attn_resolutions=(16,), dropout=0.1, resolution=32, resamp_with_conv=True,
    ),
    # The 256x256 model of CelebA-HQ and LSUN, "unet2d16b2c112244": 113,673,219 parameters.
    # The original trained it with dropout 0.0.
    "celebahq256": dict(
        in_channels=3, out_channels=3, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attn_resolutions=(16,), dropout=0.0, resolution=256, resamp_with_conv=True,
    ),
    "lsun256": dict(
        in_channels=3, out_channels=3, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
        attn_resolutions=(16,), dropout=0.0, resolution=256, resamp_with_conv=True,
    ),
    # Small CPU configurations with the same block structure (every block type appears):
    # trains for a few hundred steps in minutes on 2 CPU cores.
    "tiny": dict(
        in_channels=3, out_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1,
        attn_resolutions=(16,), dropout=0.1, resolution=32, resamp_with_conv=True,
    ),
    "tiny16": dict(
        in_channels=3, out_channels=3, ch=32, ch_mult=(1, 2), num_res_blocks=1,
        attn_resolutions=(8,), dropout=0.1, resolution=16, resamp_with_conv=True,
    ),
}


def unet_config(name: str, **overrides) -> dict:
    """Keyword arguments of :class:`UNet` for the named configuration ``name``.

    ``overrides`` replace entries (e.g. ``out_channels=6`` for learned variances, ``dropout=0``).
    Returns a fresh dict. Raises ValueError for an unknown name or an unknown keyword.
    """
    if name not in UNET_CONFIGS:
        raise ValueError(f"unknown UNet configuration {name!r}; expected one of {sorted(UNET_CONFIGS)}")
    cfg = dict(UNET_CONFIGS[name])
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown UNet option(s) {unknown}; expected some of {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def build_unet(name: str, **overrides) -> UNet:
    """Build the named configuration (see :data:`UNET_CONFIGS`) with optional overrides."""
    return UNet(**unet_config(name, **overrides))


def count_parameters(name_or_model: str | nn.Module, **overrides) -> int:
    """Number of parameters of a model, or of a named configuration.

    A named configuration is built on the ``meta`` device (no memory, no initialisation cost),
    so this is instant even for the 114M-parameter 256x256 model.
    """
    if isinstance(name_or_model, nn.Module):
        return sum(p.numel() for p in name_or_model.parameters())
    with torch.device("meta"):
        model = build_unet(name_or_model, **overrides)
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Initialisation (TF variance scaling, fan_avg, uniform)
# --------------------------------------------------------------------------------------------


def _variance_scaling_(weight: torch.Tensor, scale: float) -> None:
    """TF ``variance_scaling(scale, mode='fan_avg', distribution='uniform')`` in place.

    U(-a, a) with a = sqrt(3 scale / fan_avg), fan_avg = (fan_in + fan_out) / 2 and fans including
    the kernel's receptive field. ``scale=1`` is Glorot (Xavier) uniform.
    """
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    limit = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        weight.uniform_(-limit, limit)


def _init_(layer: nn.Conv2d | nn.Linear, scale: float = 1.0) -> None:
    """The original's ``default_init``: Glorot uniform, or scale 1e-10 where it said 0."""
    _variance_scaling_(layer.weight, NEAR_ZERO_SCALE if scale == 0 else scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1,
          scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding)
    _init_(conv, scale)
    return conv


def _dense(cin: int, cout: int, scale: float = 1.0) -> nn.Linear:
    dense = nn.Linear(cin, cout)
    _init_(dense, scale)
    return dense


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=GN_EPS)


def _norm_swish(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """swish(GroupNorm(x)). In-place swish when no gradient is recorded (saves one buffer)."""
    h = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.silu(h, inplace=not torch.is_grad_enabled())


# torch >= 2.4 takes the device type in is_autocast_enabled; torch >= 2.3 has is_compiling.
# Feature-tested once at import (not version-compared: as strings "2.13" sorts below "2.4"), so the
# forward pass branches on a constant, which torch.compile traces without a graph break.
try:
    torch.is_autocast_enabled("cpu")
    _AUTOCAST_TAKES_DEVICE = True
except TypeError:  # pragma: no cover - torch < 2.4
    _AUTOCAST_TAKES_DEVICE = False


def _autocast_on(device_type: str) -> bool:
    if _AUTOCAST_TAKES_DEVICE:
        return torch.is_autocast_enabled(device_type)
    if device_type == "cpu":  # pragma: no cover - torch < 2.4
        return torch.is_autocast_cpu_enabled()
    return torch.is_autocast_enabled()  # pragma: no cover


_is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


def _dropout(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each entry with probability p, scale the rest by 1 / (1 - p).

    On CPU in eager mode the keep-mask is drawn as ``torch.rand >= p`` (P(keep) = 1 - p), which
    is about twice as fast as ``F.dropout``'s ``bernoulli_`` there (benchmarks/README.md); on
    other devices and under ``torch.compile`` it is ``F.dropout`` (fused kernels).
    """
    if not training or p == 0.0:
        return h
    if h.device.type != "cpu" or _is_compiling():
        return F.dropout(h, p, training=True)
    keep = torch.rand(h.shape, device=h.device) >= p
    return h * (keep.to(h.dtype) * (1.0 / (1.0 - p)))


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, exactly as the original (from tensor2tensor).

    emb[n, i] = sin(t_n w_i), emb[n, half + i] = cos(t_n w_i), w_i = exp(-log(10000) i / (half-1)),
    i = 0..half-1, half = dim // 2 (an odd ``dim`` gets one trailing zero column). Computed in
    float32 like the original, whatever autocast is active.

    Args:
        t: [N] timesteps (0-based code t; any integer or float dtype is embedded as its value).
        dim: embedding dimension (>= 4 so that half - 1 > 0).
    Returns:
        [N, dim] float32 tensor.
    """
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError(f"timestep_embedding expects t of shape [N], got {getattr(t, 'shape', t)!r}")
    if dim < 4:
        raise ValueError(f"timestep_embedding expects dim >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1))
    )
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Residual block: x + conv2(drop(swish(GN(conv1(swish(GN(x))) + dense(swish(temb)))))).

    ``conv2`` starts near zero (scale 1e-10), so the block starts as (almost) the identity on its
    shortcut. A 1x1 ``nin_shortcut`` maps the input to ``out_ch`` channels when they differ.

    Shapes: x [N, in_ch, H, W], temb [N, temb_ch] -> [N, out_ch, H, W].
    """

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm1 = _norm(in_ch)
        self.conv1 = _conv(in_ch, out_ch)
        self.temb_proj = _dense(temb_ch, out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = float(dropout)
        self.conv2 = _conv(out_ch, out_ch, scale=0.0)
        self.nin_shortcut = _conv(in_ch, out_ch, k=1, padding=0) if in_ch != out_ch else None

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}"

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_norm_swish(self.norm1, x))
        # conv1's backward does not need its output, so adding in place is autograd-safe
        h = h.add_(self.temb_proj(F.silu(temb))[:, :, None, None])
        h = self.conv2(_dropout(_norm_swish(self.norm2, h), self.dropout, self.training))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        # conv2's backward does not need its output, so the in-place add is autograd-safe.
        return h.add_(skip)


class AttnBlock(nn.Module):
    """One-head self-attention over the H*W positions, with a residual connection.

    h = GN(x); q, k, v = 1x1 projections of h ("nin" in the original);
    out = x + proj_out(softmax(q k^T / sqrt(C)) v), ``proj_out`` initialised near zero.
    q, k, v are ``nn.Linear`` over channels (weights [C, C], like the original's ``W``
    transposed); the three are applied as one GEMM.

    ``backend`` chooses how softmax(q k^T / sqrt(C)) v is computed:
    ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (fused flash / memory-
    efficient kernels where available: the choice on GPUs and for fp32 on CPUs);
    ``"math"``: two matmuls and a float32 softmax (faster for bf16 on CPU with this one
    256-wide head: about 2.5x the fused CPU kernel, measured in benchmarks/README.md);
    ``"auto"`` (default): ``"math"`` on CPU when q is bf16/fp16 (autocast or half weights),
    ``"sdpa"`` otherwise. Both give the same function (checked in tests).

    Shapes: x [N, C, H, W] -> [N, C, H, W].
    """

    BACKENDS = ("auto", "sdpa", "math")

    def __init__(self, channels: int, backend: str = "auto"):
        super().__init__()
        if backend not in self.BACKENDS:
            raise ValueError(f"AttnBlock expects backend in {self.BACKENDS}, got {backend!r}")
        self.backend = backend
        self.channels = channels
        self.norm = _norm(channels)
        self.q = _dense(channels, channels)
        self.k = _dense(channels, channels)
        self.v = _dense(channels, channels)
        self.proj_out = _dense(channels, channels, scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        h = self.norm(x)
        seq = h.flatten(2).transpose(1, 2)  # [N, HW, C] (a view; contiguous if channels_last)
        w_qkv = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        b_qkv = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        qkv = F.linear(seq, w_qkv, b_qkv).unflatten(-1, (3, c))  # [N, HW, 3, C]
        q, k, v = qkv.unsqueeze(1).unbind(dim=3)  # each [N, 1, HW, C] (one head)
        use_math = self.backend == "math" or (
            self.backend == "auto" and q.device.type == "cpu"
            and q.dtype in (torch.bfloat16, torch.float16))
        if use_math:
            w = torch.matmul(q, k.transpose(-1, -2)) * (c ** -0.5)  # [N, 1, HW, HW]
            a = torch.matmul(torch.softmax(w.float(), dim=-1).to(v.dtype), v)
        else:
            a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        out = self.proj_out(a.squeeze(1))  # [N, HW, C]
        return x + out.transpose(1, 2).reshape(n, c, hh, ww)


class Downsample(nn.Module):
    """3x3 stride-2 conv with TF "SAME" padding: zero-pad right and bottom by one, no left/top.

    (PyTorch's symmetric ``padding=1`` would shift the sampling grid by one pixel.)
    Shapes: [N, C, H, W] -> [N, C, H/2, W/2] (H, W even).
    """

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = _conv(channels, channels, stride=2, padding=0) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _subpixel_kernels(w: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel of "nearest x2 then conv3x3" split into four 2x2 kernels, one per phase.

    Output row 2i (phase 0) sees upsampled rows 2i-1, 2i, 2i+1 = input rows i-1, i, i: taps
    (W0, W1 + W2) on input rows (i-1, i). Row 2i+1 (phase 1) sees input rows i, i, i+1: taps
    (W0 + W1, W2) on rows (i, i+1). The same holds for columns. w [O, I, 3, 3] ->
    [4 O, I, 2, 2] ordered by phase (row a, column b) = (0,0), (0,1), (1,0), (1,1).
    """
    rows = (torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], dim=2),
            torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], dim=2))  # [O, I, 2, 3] each
    return torch.cat([
        torch.stack([r[..., 0], r[..., 1] + r[..., 2]], dim=-1) if b == 0
        else torch.stack([r[..., 0] + r[..., 1], r[..., 2]], dim=-1)
        for r in rows for b in (0, 1)
    ])


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv. Shapes: [N, C, H, W] -> [N, C, 2H, 2W].

    (The original's ``tf.image.resize(..., NEAREST_NEIGHBOR, align_corners=True)`` maps output
    pixel i to input round(i (H-1)/(2H-1)) = floor(i/2) for an exact factor 2: the same thing.)

    ``impl``: ``"direct"`` upsamples then convolves, as written. ``"subpixel"`` computes the same
    function with four 2x2 convolutions on the small input (one per output phase, kernels from
    :func:`_subpixel_kernels`): 4/9 of the multiply-adds, equal up to float rounding (tested).
    ``"auto"`` (default) uses ``"subpixel"`` on CPU for inputs of at least 16x16, where it was
    measured faster (benchmarks/README.md), and ``"direct"`` otherwise.
    """

    IMPLS = ("auto", "direct", "subpixel")

    def __init__(self, channels: int, with_conv: bool = True, impl: str = "auto"):
        super().__init__()
        if impl not in self.IMPLS:
            raise ValueError(f"Upsample expects impl in {self.IMPLS}, got {impl!r}")
        self.impl = impl
        self.conv = _conv(channels, channels) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        n, c, h, w = x.shape
        subpixel = self.impl == "subpixel" or (
            self.impl == "auto" and x.device.type == "cpu" and h * w >= 256)
        if not subpixel:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        o = self.conv.out_channels
        k = _subpixel_kernels(self.conv.weight)
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), k, self.conv.bias.repeat(4))  # [N, 4 O, H+1, W+1]
        y = y.unflatten(1, (2, 2, o))  # [N, 2 (row phase), 2 (column phase), O, H+1, W+1]
        fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
               and not x.is_contiguous() else torch.contiguous_format)
        out = torch.empty((n, o, 2 * h, 2 * w), dtype=y.dtype, device=y.device,
                          memory_format=fmt)
        phases = out.view(n, o, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                phases[:, :, :, a, :, b] = y[:, a, b, :, a:a + h, b:b + w]
        return out


class _Level(nn.Module):
    """Container of one resolution level (TF scope ``down_<i>`` / ``up_<i>``)."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Temb(nn.Module):
    """Container of the timestep-embedding MLP (TF scope ``temb``)."""

    def __init__(self, ch: int, temb_ch: int):
        super().__init__()
        self.dense0 = _dense(ch, temb_ch)
        self.dense1 = _dense(temb_ch, temb_ch)


class _Mid(nn.Module):
    """Container of the middle blocks (TF scope ``mid``)."""

    def __init__(self, ch: int, temb_ch: int, dropout: float):
        super().__init__()
        self.block_1 = ResBlock(ch, ch, temb_ch, dropout)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResBlock(ch, ch, temb_ch, dropout)


# --------------------------------------------------------------------------------------------
# The U-Net
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"UNet expects {name} to be an int >= {minimum}, got {value!r}")
    return value


class UNet(nn.Module):
    """The DDPM U-Net eps_theta(x_t, t) (paper Section 4, Appendix B; original ``unet.model``).

    Args:
        in_channels: image channels (3).
        out_channels: 3 for eps (or x_0 / posterior-mean) prediction, 6 with learned variances.
        ch: base width; the timestep embedding has ``ch`` dims, its MLP ``4 ch``.
        ch_mult: width multiplier per resolution level (one level per entry).
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: spatial sizes (e.g. 16) at which attention follows each residual block.
        dropout: dropout rate inside the residual blocks (0.1 for CIFAR-10).
        resolution: input height = width; must be divisible by 2**(len(ch_mult) - 1).
        resamp_with_conv: strided conv / conv after upsampling (True) or average pool / none.

    ``forward(x, t)``: x [N, in_channels, resolution, resolution] floating, t [N] integer code
    timesteps in {0..T-1} -> [N, out_channels, resolution, resolution] in x's dtype (or the
    autocast dtype). Works with channels_last inputs/weights, bf16 autocast and torch.compile.
    The value range of t is not checked here (that would force a device sync); the diffusion
    object that draws t validates it.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resolution: int = 32,
        resamp_with_conv: bool = True,
    ):
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("out_channels", out_channels, 1)
        _check_int("ch", ch, 4)
        _check_int("num_res_blocks", num_res_blocks, 1)
        _check_int("resolution", resolution, 1)
        ch_mult = tuple(ch_mult)
        attn_resolutions = tuple(attn_resolutions)
        if not ch_mult:
            raise ValueError("UNet expects a non-empty ch_mult")
        for m in ch_mult:
            _check_int("every ch_mult entry", m, 1)
            if (ch * m) % GROUPS:
                raise ValueError(
                    f"UNet expects every width ch*mult divisible by {GROUPS} (GroupNorm groups), "
                    f"got ch={ch}, mult={m}"
                )
        for r in attn_resolutions:
            _check_int("every attn_resolutions entry", r, 1)
        if not (isinstance(dropout, (int, float)) and 0.0 <= float(dropout) < 1.0):
            raise ValueError(f"UNet expects 0 <= dropout < 1, got {dropout!r}")
        factor = 2 ** (len(ch_mult) - 1)
        if resolution % factor:
            raise ValueError(
                f"UNet expects resolution divisible by 2**(levels-1) = {factor} for "
                f"{len(ch_mult)} levels, got {resolution}"
            )
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, ch=ch, ch_mult=ch_mult,
            num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
            dropout=float(dropout), resolution=resolution, resamp_with_conv=bool(resamp_with_conv),
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.ch, self.ch_mult, self.num_res_blocks = ch, ch_mult, num_res_blocks
        self.resolution, self.attn_resolutions = resolution, attn_resolutions
        self.num_levels = len(ch_mult)
        temb_ch = 4 * ch

        self.temb = _Temb(ch, temb_ch)
        self.conv_in = _conv(in_channels, ch)

        # Encoder. skip_ch records the channels of every stored activation (the "hs" list).
        skip_ch = [ch]
        cur, res = ch, resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(ch_mult):
            level = _Level()
            for _ in range(num_res_blocks):
                level.block.append(ResBlock(cur, ch * mult, temb_ch, dropout))
                cur = ch * mult
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(cur))
                skip_ch.append(cur)
            if i != self.num_levels - 1:
                level.downsample = Downsample(cur, resamp_with_conv)
                res //= 2
                skip_ch.append(cur)
            else:
                level.downsample = None
            self.down.append(level)

        self.mid = _Mid(cur, temb_ch, dropout)

        # Decoder, built deepest level first (the order the forward pass runs), stored by level.
        up_levels: list[_Level] = []
        for i in reversed(range(self.num_levels)):
            level = _Level()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResBlock(cur + skip_ch.pop(), ch * ch_mult[i], temb_ch, dropout))
                cur = ch * ch_mult[i]
                if res in attn_resolutions:
                    level.attn.append(AttnBlock(cur))
            if i != 0:
                level.upsample = Upsample(cur, resamp_with_conv)
                res *= 2
            else:
                level.upsample = None
            up_levels.insert(0, level)
        assert not skip_ch
        self.up = nn.ModuleList(up_levels)

        self.norm_out = _norm(cur)
        self.conv_out = _conv(cur, out_channels, scale=0.0)

    def set_attention_backend(self, backend: str) -> UNet:
        """Set every attention block's backend ("auto", "sdpa" or "math"; see AttnBlock)."""
        if backend not in AttnBlock.BACKENDS:
            raise ValueError(f"expected backend in {AttnBlock.BACKENDS}, got {backend!r}")
        for mod in self.modules():
            if isinstance(mod, AttnBlock):
                mod.backend = backend
        return self

    def set_upsample_impl(self, impl: str) -> UNet:
        """Set every upsampling layer's implementation ("auto", "direct", "subpixel")."""
        if impl not in Upsample.IMPLS:
            raise ValueError(f"expected impl in {Upsample.IMPLS}, got {impl!r}")
        for mod in self.modules():
            if isinstance(mod, Upsample):
                mod.impl = impl
        return self

    # ------------------------------------------------------------------
    def check_inputs(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Raise ValueError unless x, t are valid inputs of :meth:`forward` (no device sync)."""
        if not isinstance(x, torch.Tensor) or not isinstance(t, torch.Tensor):
            raise ValueError("UNet expects tensors x [N, C, H, W] and t [N]")
        if x.dim() != 4:
            raise ValueError(f"UNet expects x of shape [N, C, H, W], got {tuple(x.shape)}")
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"UNet expects x with {self.in_channels} channels, got {c} "
                             f"(x shape {tuple(x.shape)}; layout is [N, C, H, W])")
        if h != self.resolution or w != self.resolution:
            raise ValueError(f"UNet expects {self.resolution}x{self.resolution} inputs, "
                             f"got {h}x{w}")
        if not x.is_floating_point():
            raise ValueError(f"UNet expects a floating-point x, got {x.dtype}")
        weight = self.conv_in.weight
        if x.device != weight.device:
            raise ValueError(f"UNet expects x on the model's device {weight.device}, "
                             f"got {x.device}")
        if x.dtype != weight.dtype and not _autocast_on(x.device.type):
            raise ValueError(f"UNet expects x with the model's dtype {weight.dtype} (or autocast), "
                             f"got {x.dtype}")
        if t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"UNet expects t of shape [N] = [{n}], got {tuple(t.shape)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"UNet expects integer timesteps t (int64 code t in 0..T-1), "
                             f"got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"UNet expects t on x's device {x.device}, got {t.device}")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t): [N, C, H, W], [N] -> [N, out_channels, H, W] (see class doc)."""
        self.check_inputs(x, t)
        # float32 like the original; cast to the weights' dtype if the model itself is bf16/fp16
        temb = timestep_embedding(t, self.ch).to(self.temb.dense0.weight.dtype)
        temb = self.temb.dense1(F.silu(self.temb.dense0(temb)))

        hs = [self.conv_in(x)]
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[i](h)
                hs.append(h)
            if level.downsample is not None:
                hs.append(level.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)

        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[i](h)
            if level.upsample is not None:
                h = level.upsample(h)

        return self.conv_out(_norm_swish(self.norm_out, h))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


# --------------------------------------------------------------------------------------------
# Parameter tables (used by the CIFAR-10 chapter of the book)
# --------------------------------------------------------------------------------------------


class ParamRow(NamedTuple):
    name: str
    shape: tuple[int, ...]
    count: int


class BlockRow(NamedTuple):
    block: str  # module path, e.g. "down.1.attn.0"
    kind: str  # "ResBlock 128->256", "Attention 256", ...
    resolution: int  # spatial size the block runs at
    count: int  # parameters in the block


def _forward_order(model: UNet) -> list[tuple[str, str, int]]:
    """(module path, description, resolution) of every block in the order forward() runs them."""
    rows = [("temb", f"Timestep MLP {model.ch}->{4 * model.ch}->{4 * model.ch}", 0),
            ("conv_in", f"Conv3x3 {model.in_channels}->{model.ch}", model.resolution)]
    res = model.resolution

    def rb(path, b):
        return (path, f"ResBlock {b.in_ch}->{b.out_ch}", res)

    for i, level in enumerate(model.down):
        for j, b in enumerate(level.block):
            rows.append(rb(f"down.{i}.block.{j}", b))
            if len(level.attn):
                rows.append((f"down.{i}.attn.{j}", f"Attention {b.out_ch}", res))
        if level.downsample is not None:
            rows.append((f"down.{i}.downsample", "Downsample conv3x3/2", res))
            res //= 2
    rows.append(rb("mid.block_1", model.mid.block_1))
    rows.append(("mid.attn_1", f"Attention {model.mid.attn_1.channels}", res))
    rows.append(rb("mid.block_2", model.mid.block_2))
    for i in reversed(range(model.num_levels)):
        level = model.up[i]
        for j, b in enumerate(level.block):
            rows.append(rb(f"up.{i}.block.{j}", b))
            if len(level.attn):
                rows.append((f"up.{i}.attn.{j}", f"Attention {b.out_ch}", res))
        if level.upsample is not None:
            rows.append((f"up.{i}.upsample", "Upsample x2 + conv3x3", res))
            res *= 2
    rows.append(("norm_out", f"GroupNorm {model.norm_out.num_channels}", res))
    rows.append(("conv_out", f"Conv3x3 {model.norm_out.num_channels}->{model.out_channels}", res))
    return rows


def parameter_table(model: UNet) -> list[ParamRow]:
    """Every parameter as (name, shape, count), grouped by block in forward-pass order.

    The counts sum to ``count_parameters(model)``; names are ``state_dict`` keys.
    """
    if not isinstance(model, UNet):
        raise ValueError(f"parameter_table expects a ddpm_ref UNet, got {type(model).__name__}")
    params = dict(model.named_parameters())
    rows: list[ParamRow] = []
    for path, _, _ in _forward_order(model):
        for name in [k for k in params if k.startswith(path + ".")]:
            p = params.pop(name)
            rows.append(ParamRow(name, tuple(p.shape), p.numel()))
    assert not params, f"parameters not assigned to a block: {sorted(params)}"
    return rows


def block_table(model: UNet) -> list[BlockRow]:
    """One row per block (ResBlock, attention, resampling, ...) in forward-pass order."""
    if not isinstance(model, UNet):
        raise ValueError(f"block_table expects a ddpm_ref UNet, got {type(model).__name__}")
    counts: dict[str, int] = {}
    for row in parameter_table(model):
        for path, _, _ in _forward_order(model):
            if row.name.startswith(path + "."):
                counts[path] = counts.get(path, 0) + row.count
                break
    return [BlockRow(p, d, r, counts.get(p, 0)) for p, d, r in _forward_order(model)]


def format_block_table(model: UNet) -> str:
    """Plain-text table of :func:`block_table` with a total line."""
    rows = block_table(model)
    lines = [f"{'block':<16} {'kind':<28} {'res':>5} {'params':>12}"]
    for r in rows:
        res = f"{r.resolution}" if r.resolution else "-"
        lines.append(f"{r.block:<16} {r.kind:<28} {res:>5} {r.count:>12,}")
    lines.append(f"{'total':<16} {'':<28} {'':>5} {sum(r.count for r in rows):>12,}")
    return "\n".join(lines)
