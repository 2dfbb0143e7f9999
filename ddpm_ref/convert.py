"""Weight import into :class:`ddpm_ref.unet.UNet`, and its own checkpoint format.

Three layouts are understood:

``"ddpm_ref"``
    our own ``state_dict`` (keys follow the original TensorFlow scopes, see ``ddpm_ref.unet``),
    saved by :func:`save_unet` as one ``.safetensors`` file whose metadata carries the UNet config.
``"diffusers"``
    ``diffusers.UNet2DModel`` as published for google/ddpm-cifar10-32 (block_out_channels
    128,256,256,256; Down, AttnDown, Down, Down / Up, Up, AttnUp, Up; layers_per_block 2;
    norm_eps 1e-6; downsample_padding 0; flip_sin_to_cos False; freq_shift 1). Both attention
    naming schemes are accepted: the current ``to_q/to_k/to_v/to_out.0`` and the legacy
    ``query/key/value/proj_attn`` still found in early hub uploads. These are the *non-EMA*
    weights (FID about 12, not the paper's 3.17).
``"pesser"``
    pesser/pytorch_diffusion's ``Model`` (a direct port of the TF graph), the layout of the
    converted *EMA* checkpoints (``ema_diffusion_cifar10_model/model-790000.ckpt``, FID 3.2).
``"tensorflow"``
    the original TensorFlow checkpoints themselves (``model.ckpt-790000.index`` + ``.data-*``),
    read by :mod:`ddpm_ref.tf_checkpoint` (EMA shadows by default, raw variables on request).

Why the layouts are the same function (checked numerically in ``tests/test_convert.py``):

* diffusers' ``get_timestep_embedding(t, 128, flip_sin_to_cos=False, downscale_freq_shift=1)``
  uses exponent ``-log(10000) i / (half - 1)`` and the ``[sin, cos]`` order: the original's.
* diffusers' ``Downsample2D(padding=0)`` pads ``(0, 1, 0, 1)`` (right and bottom) before a stride-2
  3x3 conv: TF "SAME" for even sizes, as here.
* diffusers' attention with ``attention_head_dim=None`` has one head of the full width and scale
  ``C**-0.5``; its linear ``to_*`` weights equal our ``q/k/v/proj_out`` (pesser's are 1x1 convs).
* diffusers' up block ``k`` is decoder level ``L-1-k`` (``up.<L-1-k>`` here); resnet ``conv_shortcut``
  is our ``nin_shortcut``; ``mid_block.resnets.0/attentions.0/resnets.1`` are
  ``mid.block_1/attn_1/block_2``.

Entry points: :func:`load_pretrained` (detects the layout of a directory or file),
:func:`from_diffusers`, :func:`from_pesser`, :func:`from_hub` (needs network), :func:`save_unet`,
:func:`load_unet`, and the key mappings :func:`diffusers_to_ddpm_ref` / :func:`pesser_to_ddpm_ref`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ddpm_ref.errors import FileFormatError, UsageError
from ddpm_ref.unet import UNet

__all__ = [
    "FORMAT_TAG",
    "detect_layout",
    "diffusers_config_to_unet",
    "diffusers_to_ddpm_ref",
    "pesser_to_ddpm_ref",
    "infer_unet_config",
    "load_state_dict_strict",
    "from_diffusers",
    "from_pesser",
    "from_hub",
    "from_tf_checkpoint",
    "load_pretrained",
    "save_unet",
    "load_unet",
    "unet_file_info",
    "tensors_sha256",
]

FORMAT_TAG = "ddpm_ref.unet/1"
DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


_WEIGHTS_EXPECTED = ("expected a .safetensors file, a torch state dict (.pt/.bin/.ckpt: name -> tensor) or a "
                     "diffusers model folder")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch pickle (``.bin``/``.pt``/``.ckpt``).

    Any failure (missing, truncated, random bytes, a text file, a pickle holding objects other
    than tensors) raises :class:`~ddpm_ref.errors.FileFormatError` naming the file."""
    from ._io import reading
    from .checkpoint import torch_load

    path = Path(path)
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise FileFormatError(f"{path}: {where}; {_WEIGHTS_EXPECTED}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        with reading(path, ".safetensors file", "expected weights written by safetensors (e.g. 'python -m "
                     "ddpm_ref convert')"):
            return load_file(str(path), device="cpu")
    obj = torch_load(path, "cpu", what="torch file", expected=_WEIGHTS_EXPECTED)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise FileFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict (name -> tensor); "
                              f"{_WEIGHTS_EXPECTED}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FileFormatError(f"{path}: entries {bad[:4]} are not tensors, so it is not a state dict (name -> "
                              f"tensor); {_WEIGHTS_EXPECTED}")
    return dict(obj)


def _as_state_dict(state: Mapping) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not state:
        raise ValueError("expected a non-empty state dict (mapping of name -> tensor)")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"expected tensors in the state dict, got non-tensors at {bad[:5]}")
    return dict(state)


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of a state dict: ``"ddpm_ref"``, ``"pesser"`` or ``"diffusers"``."""
    keys = set(state)
    if "time_embedding.linear_1.weight" in keys or any(k.startswith("down_blocks.") for k in keys):
        return "diffusers"
    if "temb.dense.0.weight" in keys:
        return "pesser"
    if "temb.dense0.weight" in keys:
        return "ddpm_ref"
    sample = sorted(keys)[:5]
    raise ValueError(
        "could not recognise the weight layout: expected ddpm_ref keys (temb.dense0.weight), "
        f"pesser keys (temb.dense.0.weight) or diffusers keys (time_embedding.linear_1.weight); "
        f"first keys are {sample}"
    )


# --------------------------------------------------------------------------------------------
# Key mappings
# --------------------------------------------------------------------------------------------

_DIFFUSERS_RESNET = {"time_emb_proj": "temb_proj", "conv_shortcut": "nin_shortcut"}
_DIFFUSERS_ATTN = {
    "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
    # legacy names of diffusers' first releases (still in early hub uploads)
    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out",
}


def _map_diffusers_key(key: str, num_levels: int) -> str | None:
    """ddpm_ref name of one diffusers UNet2DModel key, or None if it has no counterpart."""
    fixed = {
        "conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out",
        "time_embedding.linear_1": "temb.dense0", "time_embedding.linear_2": "temb.dense1",
    }
    head, _, leaf = key.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{leaf}"

    def sub(rest: str, table: dict[str, str]) -> str:
        for old, new in table.items():
            if rest == old or rest.startswith(old + "."):
                return new + rest[len(old):]
        return rest

    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)"
                     r"\.(\d+)\.(.+)", key)
    if m:
        kind, idx, part, j, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)
        level = idx if kind == "down" else num_levels - 1 - idx
        if part == "resnets":
            return f"{kind}.{level}.block.{j}.{sub(rest, _DIFFUSERS_RESNET)}"
        if part == "attentions":
            return f"{kind}.{level}.attn.{j}.{sub(rest, _DIFFUSERS_ATTN)}"
        if part == "downsamplers" and j == "0":
            return f"down.{level}.downsample.{rest}"
        if part == "upsamplers" and j == "0":
            return f"up.{level}.upsample.{rest}"
        return None
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", key)
    if m:
        part, j, rest = m.groups()
        if part == "resnets" and j in ("0", "1"):
            return f"mid.block_{int(j) + 1}.{sub(rest, _DIFFUSERS_RESNET)}"
        if part == "attentions" and j == "0":
            return f"mid.attn_1.{sub(rest, _DIFFUSERS_ATTN)}"
    return None


def _num_levels_diffusers(state: Mapping[str, torch.Tensor]) -> int:
    levels = {int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.(\d+)\.", k))}
    if not levels:
        raise ValueError("expected diffusers keys down_blocks.<i>.*, found none")
    return max(levels) + 1


def diffusers_to_ddpm_ref(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``UNet2DModel`` state dict to ddpm_ref names.

    Attention ``to_*`` weights are linear [C, C] in both layouts, so values are only renamed
    (a legacy 1x1-conv shaped [C, C, 1, 1] attention weight is flattened to [C, C]).
    Keys without a counterpart are kept under ``"unexpected:<key>"`` so that strict loading
    reports them by their original name.
    """
    state = _as_state_dict(state)
    num_levels = _num_levels_diffusers(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = _map_diffusers_key(key, num_levels)
        if new is None:
            out[f"unexpected:{key}"] = value
            continue
        if ".attn" in new and value.dim() == 4 and new.endswith(".weight") and \
                value.shape[-2:] == (1, 1):
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def pesser_to_ddpm_ref(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a pesser/pytorch_diffusion ``Model`` state dict to ddpm_ref names.

    Names are the TF scopes in both; only ``temb.dense.<0|1>`` becomes ``temb.dense<0|1>`` and the
    attention 1x1 convolutions ([C, C, 1, 1]) become linear weights ([C, C]).
    """
    state = _as_state_dict(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = re.sub(r"^temb\.dense\.(\d+)\.", r"temb.dense\1.", key)
        is_attn_w = re.search(r"(^|\.)attn(\.\d+|_1)\.(q|k|v|proj_out)\.weight$", new)
        if is_attn_w and value.dim() == 4 and value.shape[-2:] == (1, 1):
            value = value[:, :, 0, 0]
        out[new] = value
    return out


# --------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------

# diffusers config entries that must have these values for the layout to be the DDPM network.
_DIFFUSERS_REQUIRED = {
    "act_fn": "silu",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 0,
    "norm_num_groups": 32,
    "time_embedding_type": "positional",
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "time_embedding_dim": None,
}


def diffusers_config_to_unet(config: Mapping) -> dict:
    """Translate a diffusers ``UNet2DModel`` config (config.json) into :class:`UNet` kwargs.

    Raises ValueError (naming the field) for any setting the DDPM network does not have, e.g.
    ``flip_sin_to_cos=True``, multi-head attention, or non-mirrored up/down block types.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"expected a diffusers config mapping, got {type(config).__name__}")
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"expected a diffusers UNet2DModel config, got _class_name={cls!r}")
    for field, want in _DIFFUSERS_REQUIRED.items():
        if field in config and config[field] != want:
            raise ValueError(f"unsupported diffusers config: expected {field}={want!r} "
                             f"(the DDPM network), got {config[field]!r}")
    missing = [k for k in ("block_out_channels", "down_block_types", "up_block_types")
               if k not in config]
    if missing:
        raise ValueError(f"expected a diffusers UNet2DModel config, missing keys {missing}")
    eps = config.get("norm_eps", 1e-5)
    if abs(float(eps) - 1e-6) > 1e-12:
        raise ValueError(f"unsupported diffusers config: expected norm_eps=1e-6, got {eps!r}")
    widths = list(config["block_out_channels"])
    down = list(config["down_block_types"])
    up = list(config["up_block_types"])
    if len(down) != len(widths) or len(up) != len(widths):
        raise ValueError("expected as many down and up block types as block_out_channels, got "
                         f"{len(down)}, {len(up)}, {len(widths)}")
    allowed_down, allowed_up = {"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}
    if set(down) - allowed_down or set(up) - allowed_up:
        raise ValueError(f"unsupported diffusers block types {sorted(set(down) - allowed_down)} "
                         f"{sorted(set(up) - allowed_up)}; expected {sorted(allowed_down)} / "
                         f"{sorted(allowed_up)}")
    attn_levels = [i for i, b in enumerate(down) if b.startswith("Attn")]
    up_attn_levels = [len(up) - 1 - k for k, b in enumerate(up) if b.startswith("Attn")]
    if sorted(up_attn_levels) != attn_levels:
        raise ValueError(f"expected attention at the same levels in the encoder and decoder, got "
                         f"down {down} and up {up}")
    ch = widths[0]
    if any(w % ch for w in widths):
        raise ValueError(f"expected block_out_channels to be multiples of the first, got {widths}")
    head_dim = config.get("attention_head_dim")
    for i in attn_levels:
        if head_dim is not None and head_dim != widths[i]:
            raise ValueError(f"expected one attention head (attention_head_dim None or "
                             f"{widths[i]}), got attention_head_dim={head_dim}")
    res = config.get("sample_size", 32)
    if isinstance(res, (list, tuple)):
        if len(set(res)) != 1:
            raise ValueError(f"expected a square sample_size, got {res}")
        res = res[0]
    return dict(
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)),
        ch=int(ch),
        ch_mult=tuple(int(w // ch) for w in widths),
        num_res_blocks=int(config.get("layers_per_block", 2)),
        attn_resolutions=tuple(int(res) // 2**i for i in attn_levels),
        dropout=float(config.get("dropout", 0.0)),
        resolution=int(res),
        resamp_with_conv=True,
    )


def infer_unet_config(state: Mapping[str, torch.Tensor], resolution: int | None = None,
                      dropout: float = 0.0) -> dict:
    """UNet kwargs read off a ddpm_ref-named state dict (shapes and which blocks exist).

    The spatial resolution is not stored in weights. If not given, it is taken from the
    original's convention that attention runs at 16x16: resolution = 16 * 2**(first attention
    level) (32 for CIFAR-10, 256 for the CelebA-HQ/LSUN model). Pass ``resolution`` otherwise.
    """
    if "conv_in.weight" not in state or "conv_out.weight" not in state:
        raise ValueError("expected conv_in.weight and conv_out.weight in the state dict")
    ch = state["conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"down\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"expected down.<0..L-1> blocks, found levels {levels}")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"down\.0\.block\.(\d+)\.", k))}
    ch_mult = tuple(int(state[f"down.{i}.block.0.conv1.weight"].shape[0] // ch) for i in levels)
    attn_levels = [i for i in levels if f"down.{i}.attn.0.q.weight" in state]
    if resolution is None:
        if not attn_levels:
            raise ValueError("the weights have no attention blocks, so their image size cannot be inferred; "
                             "give it with --resolution")
        resolution = 16 * 2 ** attn_levels[0]
    return dict(
        in_channels=int(state["conv_in.weight"].shape[1]),
        out_channels=int(state["conv_out.weight"].shape[0]),
        ch=int(ch), ch_mult=ch_mult, num_res_blocks=len(blocks),
        attn_resolutions=tuple(resolution // 2**i for i in attn_levels),
        dropout=float(dropout), resolution=int(resolution),
        resamp_with_conv="down.0.downsample.conv.weight" in state or len(levels) == 1,
    )


# --------------------------------------------------------------------------------------------
# Strict loading with readable errors
# --------------------------------------------------------------------------------------------


def load_state_dict_strict(model: UNet, state: Mapping[str, torch.Tensor]) -> UNet:
    """Copy a ddpm_ref-named state dict into ``model``; every key and shape must match.

    Raises ValueError listing missing keys, unexpected keys and shape mismatches (all of them,
    in one message) instead of loading a partly initialised network.
    """
    target = model.state_dict()
    missing = sorted(set(target) - set(state))
    unexpected = sorted(k.removeprefix("unexpected:") for k in set(state) - set(target))
    shapes = sorted(
        f"{k}: expected {tuple(target[k].shape)}, got {tuple(state[k].shape)}"
        for k in set(target) & set(state) if tuple(target[k].shape) != tuple(state[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:8]}" +
                        (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:8]}" +
                        (" ..." if len(unexpected) > 8 else ""))
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {shapes[:8]}" +
                        (" ..." if len(shapes) > 8 else ""))
    if problems:
        raise ValueError("weights do not fit the UNet: " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"expected finite weights, got NaN/inf in {bad[:8]}")
    with torch.no_grad():
        for k, v in target.items():
            v.copy_(state[k].to(dtype=v.dtype))
    return model


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


def _is_unet_dir(root: Path) -> bool:
    """True if ``root/config.json`` exists and describes a UNet2DModel."""
    cfg = root / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("_class_name", "UNet2DModel") == "UNet2DModel"
    except (json.JSONDecodeError, AttributeError):
        return False


def from_diffusers(source, config: Mapping | None = None, dropout: float | None = None) -> UNet:
    """A :class:`UNet` holding the weights of a diffusers ``UNet2DModel``.

    Args:
        source: a directory with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or
            ``.bin``), e.g. a ``save_pretrained`` output or a downloaded google/ddpm-cifar10-32
            ``unet/`` folder; or a state dict (then ``config`` is required unless it is the
            CIFAR-10 network, which is inferred from the shapes at resolution 32); or a live
            ``UNet2DModel``.
        config: the diffusers config (mapping) when ``source`` is a state dict.
        dropout: override of the dropout rate (diffusers' config value by default).
    Returns: the UNet in eval mode.
    """
    if hasattr(source, "state_dict") and hasattr(source, "config") and not isinstance(
            source, Mapping):
        config = dict(source.config) if config is None else config
        state = source.state_dict()
    elif isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir() and (root / "unet").is_dir() and not _is_unet_dir(root):
            root = root / "unet"  # a pipeline folder (model_index.json + unet/ + scheduler/)
        if not root.is_dir():
            raise FileFormatError(f"{root}: not a directory; expected a diffusers UNet2DModel folder")
        cfg_file = root / "config.json"
        if not cfg_file.is_file():
            raise FileFormatError(f"{root}: no config.json; expected a diffusers UNet2DModel folder "
                                  f"(config.json + {DIFFUSERS_WEIGHT_FILES[0]})")
        if config is None:
            from ._io import reading

            with reading(cfg_file, "JSON file", "expected the config.json of a diffusers UNet2DModel"):
                config = json.loads(cfg_file.read_bytes().decode("utf-8"))
        files = [root / f for f in DIFFUSERS_WEIGHT_FILES if (root / f).is_file()]
        if not files:
            raise FileFormatError(f"{root}: no weights file; expected one of {list(DIFFUSERS_WEIGHT_FILES)} "
                                  "beside its config.json")
        state = _read_weights(files[0])
    else:
        state = _as_state_dict(source)
    mapped = diffusers_to_ddpm_ref(state)
    if config is not None:
        kwargs = diffusers_config_to_unet(config)
    else:
        kwargs = infer_unet_config({k: v for k, v in mapped.items()
                                    if not k.startswith("unexpected:")})
    if dropout is not None:
        kwargs["dropout"] = float(dropout)
    model = UNet(**kwargs)
    return load_state_dict_strict(model, mapped).eval()


def from_pesser(source, resolution: int | None = None, dropout: float = 0.0) -> UNet:
    """A :class:`UNet` holding pesser/pytorch_diffusion weights (a ``.ckpt`` path or state dict).

    The configuration is read off the shapes; ``resolution`` defaults to the original's
    attention-at-16x16 convention (32 for the CIFAR-10 checkpoints, 256 for LSUN).
    """
    state = _read_weights(Path(source)) if isinstance(source, (str, os.PathLike)) else source
    mapped = pesser_to_ddpm_ref(state)
    model = UNet(**infer_unet_config(mapped, resolution=resolution, dropout=dropout))
    return load_state_dict_strict(model, mapped).eval()


def save_unet(model: UNet, path: str | os.PathLike, *, recipe=None, weights: str | None = None,
              source: str | dict | None = None) -> Path:
    """Save ``model``'s weights and config to one ``.safetensors`` file (our format).

    The format tag, the U-Net config and -- when given -- the full training recipe ``recipe`` (a
    :class:`ddpm_ref.config.Config` or its dict: the diffusion T, schedule, variances and
    objective that sampling and bits/dim need), which ``weights`` the file holds (``"ema"`` or
    ``"raw"``) and the ``source`` it was converted from are stored as ONE sorted-key JSON string
    in the file's metadata under ``"ddpm_ref"``, with the SHA-256 of the tensors
    (:func:`tensors_sha256`; safetensors itself has no checksum, so :func:`load_unet` uses it to
    refuse a file whose weights were damaged). So :func:`load_unet` rebuilds the same network
    without any other file, :func:`ddpm_ref.evaluate.load_model` finds the diffusion in the file,
    and saving the same weights twice gives byte-identical files (safetensors writes a metadata
    dict with several keys in arbitrary order). ``source`` (a description or a JSON-ready dict, e.g. a
    TF checkpoint's name, EMA or raw, its global step) records where the weights came from. Written
    atomically, with the umask's file mode.
    """
    if not isinstance(model, UNet):
        raise ValueError(f"save_unet expects a ddpm_ref UNet, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"{path}: the output must be a .safetensors file; give --out a name ending in .safetensors")
    if weights not in (None, "ema", "raw"):
        raise ValueError(f"weights must be 'ema', 'raw' or None, got {weights!r}")
    from safetensors.torch import save

    from ._io import atomic_write_bytes

    packed = {"format": FORMAT_TAG, "config": model.config}
    if recipe is not None:
        from .config import Config, config_from_dict, config_to_dict

        packed["recipe"] = config_to_dict(recipe if isinstance(recipe, Config) else config_from_dict(recipe))
    if weights is not None:
        packed["weights"] = weights
    if source is not None:  # a description (str) or a JSON-able dict of provenance
        packed["source"] = source if isinstance(source, (str, dict)) else str(source)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    packed["tensors_sha256"] = tensors_sha256(state)
    data = save(state, metadata={"ddpm_ref": json.dumps(packed, sort_keys=True)})
    return atomic_write_bytes(path, data, what=".safetensors file")


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the tensors of a state dict, in sorted
    name order (the checksum :func:`save_unet` records)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _read_metadata(path: Path) -> dict:
    """The file's ddpm_ref metadata as ``{"format": ..., "ddpm_ref_config": <json>, ...}`` (both
    layouts: the single ``"ddpm_ref"`` key written now, and the two keys of earlier files); the
    recipe, weights and source, when recorded, under ``"recipe"`` (a dict), ``"weights"``,
    ``"source"``. A damaged file raises :class:`~ddpm_ref.errors.FileFormatError`."""
    from safetensors import safe_open

    from ._io import reading

    path = Path(path)
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise FileFormatError(f"{path}: {where}; expected a .safetensors model file")
    with reading(path, ".safetensors file", "expected a model written by 'python -m ddpm_ref convert'"):
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        if "ddpm_ref" in meta:
            packed = json.loads(meta.pop("ddpm_ref"))
            meta["format"] = packed.get("format")
            meta["ddpm_ref_config"] = json.dumps(packed.get("config"))
            for key in ("recipe", "weights", "source", "tensors_sha256"):
                if key in packed:
                    meta[key] = packed[key]
    return meta


def unet_file_info(path: str | os.PathLike) -> dict:
    """What a ``.safetensors`` file of :func:`save_unet` records: ``{"format", "unet" (the U-Net
    kwargs or None), "recipe" (a dict or None), "weights" ("ema", "raw" or None), "source",
    "tensors_sha256"}`` (None for what an older file does not record)."""
    meta = _read_metadata(Path(path))
    unet = json.loads(meta["ddpm_ref_config"]) if "ddpm_ref_config" in meta else None
    return {"format": meta.get("format"), "unet": unet, "recipe": meta.get("recipe"),
            "weights": meta.get("weights"), "source": meta.get("source"),
            "tensors_sha256": meta.get("tensors_sha256")}


def load_unet(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> UNet:
    """Load a file written by :func:`save_unet` (weights + config). Returns the UNet in eval mode."""
    from ._io import reading

    path = Path(path)
    meta = _read_metadata(path)
    if meta.get("format") != FORMAT_TAG or "ddpm_ref_config" not in meta:
        raise FileFormatError(
            f"{path}: not a ddpm_ref model file (no {FORMAT_TAG!r} metadata); convert the weights first with "
            "'python -m ddpm_ref convert <source> --out <file>.safetensors'"
        )
    with reading(path, "ddpm_ref model file", "convert the weights again with 'python -m ddpm_ref convert'"):
        cfg = json.loads(meta["ddpm_ref_config"])
        cfg["ch_mult"], cfg["attn_resolutions"] = tuple(cfg["ch_mult"]), tuple(cfg["attn_resolutions"])
        model = UNet(**cfg)
    state = _read_weights(path)
    if "tensors_sha256" in meta and tensors_sha256(state) != meta["tensors_sha256"]:
        raise FileFormatError(
            f"{path}: corrupted data (the SHA-256 of its tensors differs from the one recorded when it was written); "
            "use an intact copy, or convert the weights again"
        )
    try:
        load_state_dict_strict(model, state)
    except FileFormatError:
        raise
    except ValueError as exc:
        raise FileFormatError(f"{path}: {exc}; convert the weights again with 'python -m ddpm_ref convert'") \
            from exc
    return model.to(map_location).eval()


def load_pretrained(path_or_dir: str | os.PathLike, resolution: int | None = None) -> UNet:
    """Load weights of any supported layout, detecting which one it is.

    * a TensorFlow checkpoint of the original code (prefix, ``.index`` file, or a directory with
      one ``*.index``): its EMA weights (:func:`from_tf_checkpoint`);
    * a directory with ``config.json`` (+ diffusers weights), or a pipeline directory with
      ``unet/``: diffusers;
    * a ``.safetensors`` file written by :func:`save_unet`: ddpm_ref;
    * any other weights file: layout detected from its key names (ddpm_ref, pesser, diffusers);
      the config is read off the shapes (``resolution`` as in :func:`infer_unet_config`).

    Every failure raises a ``ValueError`` naming the file (:class:`~ddpm_ref.errors.FileFormatError`
    for unreadable or unrecognised files).
    """
    from ddpm_ref.tf_checkpoint import is_tf_checkpoint

    if is_tf_checkpoint(path_or_dir):  # the original TF code's checkpoints: their EMA weights
        return from_tf_checkpoint(path_or_dir, resolution=resolution)
    path = Path(path_or_dir)
    try:
        return _load_pretrained(path, resolution)
    except (FileFormatError, UsageError):
        raise
    except ValueError as exc:
        msg = str(exc)
        raise FileFormatError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from exc


def _load_pretrained(path: Path, resolution: int | None) -> UNet:
    if path.is_dir():
        return from_diffusers(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: does not exist; {_WEIGHTS_EXPECTED}")
    if path.suffix == ".safetensors" and _read_metadata(path).get("format") == FORMAT_TAG:
        return load_unet(path)
    state = _read_weights(path)
    layout = detect_layout(state)
    if layout == "pesser":
        return from_pesser(state, resolution=resolution)
    if layout == "diffusers":
        sibling = path.parent / "config.json"
        config = None
        if sibling.is_file():
            from ._io import reading

            with reading(sibling, "JSON file", "expected the config.json of a diffusers UNet2DModel"):
                config = json.loads(sibling.read_bytes().decode("utf-8"))
        return from_diffusers(state, config=config)
    model = UNet(**infer_unet_config(state, resolution=resolution))
    return load_state_dict_strict(model, state).eval()


def from_tf_checkpoint(path: str | os.PathLike, ema: bool = True, resolution: int | None = None) -> UNet:
    """A :class:`UNet` holding the weights of a checkpoint saved by the original TensorFlow code.

    ``path`` is the checkpoint prefix (``diffusion_cifar10_model/model.ckpt-790000``), one of its
    files, or a directory holding exactly one checkpoint. ``ema`` (default) takes the
    ``ExponentialMovingAverage`` shadows (the paper's evaluation weights), otherwise the raw
    variables. See :mod:`ddpm_ref.tf_checkpoint` (format, checks, the named-config rule).
    """
    from ddpm_ref.tf_checkpoint import load_tf_unet

    return load_tf_unet(path, ema=ema, resolution=resolution)[0]


def from_hub(repo_id: str = "google/ddpm-cifar10-32", subfolder: str | None = None,
             revision: str | None = None) -> UNet:
    """Download a diffusers UNet from the Hugging Face Hub and convert it. NEEDS NETWORK.

    Uses ``huggingface_hub.snapshot_download`` (installed with diffusers). google/ddpm-cifar10-32
    keeps the UNet at the repository root; pipeline repositories keep it in ``unet/`` (found
    automatically). Not testable offline; :func:`from_diffusers` is the tested path it calls.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("from_hub needs huggingface_hub (pip install huggingface_hub)") from err
    patterns = ["*.json", "*.safetensors", "*.bin"]
    local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    return from_diffusers(local / subfolder if subfolder else local)
