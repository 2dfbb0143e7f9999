"""The training recipe as plain dataclasses: the paper's CIFAR-10 run and a tiny CPU run.

A :class:`Config` has five parts (every field documented below):

- :class:`ModelConfig`     which U-Net (a named configuration of :mod:`ddpm_ref.unet`, with overrides)
- :class:`DiffusionConfig` the forward process and the objective (Section 2, 3.4)
- :class:`OptimConfig`     Adam, learning-rate warm-up, gradient clipping (Appendix B)
- :class:`TrainConfig`     batch, steps, EMA, flips, seed, logging / sampling / checkpoint intervals
- ``data``                 where the training images come from (``"cifar10:<root>"``, ``"folder:<dir>"``,
  ``"npz:<file>[:key]"`` or ``"sample"``, see :func:`ddpm_ref.train.load_images`)

Presets (:data:`PRESETS`, :func:`get_config`):

``"cifar10"``
    The paper's CIFAR-10 recipe (Ho et al. 2020, Section 4 and Appendix B; the original
    ``scripts/run_cifar.py``): the 35,746,307-parameter U-Net with dropout 0.1; T = 1000, linear
    betas 1e-4 .. 0.02; eps prediction, ``fixedlarge`` variances, L_simple (``mse``); Adam with
    lr 2e-4, betas (0.9, 0.999), eps 1e-8, no weight decay; learning rate warmed up linearly over
    5000 steps then constant; global batch 128; gradient clipping at global norm 1; EMA decay
    0.9999; random left-right flips; 800,000 steps.
``"tiny"``
    A CPU demonstration on the shipped 1024-image CIFAR-10 sample: the ``"tiny"`` U-Net
    (702,499 parameters, the same block types), T = 1000 and the paper's schedule and objective
    unchanged, batch 16, Adam lr 1e-3 with a 100-step warm-up, EMA decay 0.99 (a short run needs a
    short average), 1000 steps, sample grids every 250 steps with 100 respaced reverse steps.
    In a measured run the logged loss went 0.98 (mean of steps 1-20) -> 0.46 (41-60) -> 0.11
    (81-100) -> 0.05 (after 250), and the EMA sample grids showed coloured blobs with structure
    from step 500 on; on a 2-core CPU the whole run takes minutes, not hours (measured speeds are
    in the book's reproduction chapter). On a busy machine ``--threads 1`` is much faster than
    letting two torch threads compete with other processes.

Files: :func:`save_config` / :func:`load_config` write and read JSON (the same dict as
:func:`config_to_dict`); :func:`apply_overrides` applies ``"section.field=value"`` strings
(the CLI's ``--set``); :func:`validate_config` raises ``ValueError`` naming the bad field.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ModelConfig",
    "DiffusionConfig",
    "OptimConfig",
    "TrainConfig",
    "Config",
    "PRESETS",
    "get_config",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "load_config",
    "apply_overrides",
    "validate_config",
    "RESUME_SAFE_KEYS",
    "changed_keys",
]


@dataclass
class ModelConfig:
    """The network eps_theta.

    ``unet`` names a configuration of :data:`ddpm_ref.unet.UNET_CONFIGS`; the other fields, when
    not ``None``, override its entries. ``out_channels`` is not set here: it follows from the
    diffusion's variance type (3, or 6 for a learned variance).
    """

    unet: str = "cifar10"
    #: Dropout rate inside the residual blocks (0.1 for CIFAR-10 in the paper).
    dropout: float = 0.1
    ch: int | None = None
    ch_mult: tuple[int, ...] | None = None
    num_res_blocks: int | None = None
    attn_resolutions: tuple[int, ...] | None = None
    resolution: int | None = None


@dataclass
class DiffusionConfig:
    """The forward process q and the training objective (see :class:`ddpm_ref.GaussianDiffusion`)."""

    #: Beta schedule name of :func:`ddpm_ref.get_beta_schedule` ("linear" in the paper).
    schedule: str = "linear"
    #: T, the number of diffusion steps (1000 in the paper).
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    #: What the network predicts: "eps" (the paper), "xstart" or "xprev".
    model_mean_type: str = "eps"
    #: Reverse variance: "fixedlarge" (sigma_t^2 = beta_t, the paper's CIFAR-10 choice), "fixedsmall", "learned", ...
    model_var_type: str = "fixedlarge"
    #: "mse" = L_simple (eq. 14), "kl" = the true bound (eq. 5), "hybrid" (learned variances only).
    loss_type: str = "mse"


@dataclass
class OptimConfig:
    """Adam with linear warm-up and global-norm gradient clipping (the original ``train`` defaults)."""

    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    #: The learning rate of the update at (0-based) step s is lr * min(s / warmup_steps, 1),
    #: as in the original ``get_warmed_up_lr`` (so the very first update has lr 0). 0 = no warm-up.
    warmup_steps: int = 5000
    #: Clip the global L2 norm of the (all-reduced, global-batch) gradient to this value; 0 = off.
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    """Batch, length, EMA, augmentation, seed and the intervals of logs, sample grids and checkpoints."""

    #: The global batch (128 in the paper); with N processes each processes batch_size / N.
    batch_size: int = 128
    #: Total number of optimizer updates (800k in the paper; its released checkpoint is step 790k).
    total_steps: int = 800_000
    #: EMA decay of the parameters (0.9999); samples and metrics use the EMA weights.
    ema_decay: float = 0.9999
    #: Random left-right flips of the training images (the paper's only augmentation).
    random_flip: bool = True
    #: Seed of everything random in the run (data order, flips, t, noise, dropout, initialisation).
    seed: int = 0
    #: Write scalars (mean loss, grad norm, lr, steps/s) every this many steps.
    log_every: int = 100
    #: Sample a grid of images with the EMA weights every this many steps (0 = never).
    sample_every: int = 10_000
    #: Number of images in that grid.
    num_samples: int = 64
    #: Reverse steps used for that grid: 0 (or >= T) = all T (Algorithm 2); 0 < K < T = K respaced steps.
    sample_timesteps: int = 0
    #: Write ``checkpoints/last.pt`` every this many steps (and at the end).
    checkpoint_every: int = 5000
    #: Also keep ``checkpoints/step_XXXXXXX.pt`` every this many steps (0 = keep only last.pt).
    keep_every: int = 100_000


@dataclass
class Config:
    """A complete training recipe. ``name`` is informational (the preset it came from)."""

    name: str = "cifar10"
    #: Training images: "cifar10:<root>", "folder:<dir>", "npz:<file>[:key]", "sample" (shipped).
    data: str = "cifar10:data/cifar10"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def unet_kwargs(self) -> dict:
        """Keyword arguments of :class:`ddpm_ref.unet.UNet` for this recipe."""
        from .unet import unet_config

        overrides = {
            k: getattr(self.model, k)
            for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution")
            if getattr(self.model, k) is not None
        }
        learned = self.diffusion.model_var_type in ("learned", "learned_range")
        return unet_config(
            self.model.unet, dropout=float(self.model.dropout), out_channels=6 if learned else 3,
            **overrides,
        )

    def build_model(self):
        """A freshly initialised :class:`ddpm_ref.unet.UNet` (uses the global torch RNG)."""
        from .unet import UNet

        return UNet(**self.unet_kwargs())

    def build_diffusion(self):
        """The :class:`ddpm_ref.GaussianDiffusion` of this recipe."""
        from .diffusion import make_diffusion

        d = self.diffusion
        return make_diffusion(
            d.schedule, d.num_timesteps, beta_start=d.beta_start, beta_end=d.beta_end,
            model_mean_type=d.model_mean_type, model_var_type=d.model_var_type,
            loss_type=d.loss_type,
        )


def _cifar10() -> Config:
    return Config()


def _tiny() -> Config:
    return Config(
        name="tiny",
        data="sample",
        model=ModelConfig(unet="tiny", dropout=0.1),
        diffusion=DiffusionConfig(),
        optim=OptimConfig(lr=1e-3, warmup_steps=100),
        train=TrainConfig(
            batch_size=16, total_steps=1000, ema_decay=0.99, log_every=20, sample_every=250,
            num_samples=16, sample_timesteps=100, checkpoint_every=250, keep_every=0,
        ),
    )


#: Named recipes: name -> factory returning a fresh :class:`Config`.
PRESETS: dict[str, typing.Callable[[], Config]] = {"cifar10": _cifar10, "tiny": _tiny}

#: Fields that may change when a run is resumed without changing what it computes.
RESUME_SAFE_KEYS = frozenset({
    "data", "train.total_steps", "train.log_every", "train.sample_every", "train.num_samples",
    "train.sample_timesteps", "train.checkpoint_every", "train.keep_every",
})  # fmt: skip

_SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "optim": OptimConfig, "train": TrainConfig}


def get_config(name: str) -> Config:
    """A fresh copy of the preset ``name`` (``"cifar10"`` or ``"tiny"``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown config preset {name!r}; expected one of {sorted(PRESETS)} or a .json file")
    return PRESETS[name]()


# ------------------------------------------------------------------------------------ dict / JSON
def config_to_dict(cfg: Config) -> dict:
    """Plain JSON-able dict (tuples become lists)."""
    if not isinstance(cfg, Config):
        raise ValueError(f"expected a Config, got {type(cfg).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _split_optional(tp):
    """(inner type, allows None) of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value, tp, where: str):
    """Check/convert a JSON value to the field type ``tp`` (bool, int, float, str, tuple[int, ...])."""
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: must not be None (expected {getattr(inner, '__name__', inner)})")
    if typing.get_origin(inner) is tuple:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"{where}: must be a list of ints, got {value!r}")
        return tuple(int(v) for v in value)
    if inner is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: must be true or false, got {value!r}")
        return value
    if inner is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise ValueError(f"{where}: must be an integer, got {value!r}")
        return int(value)
    if inner is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: must be a number, got {value!r}")
        return float(value)
    if inner is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp!r} for {where}")  # pragma: no cover


def config_from_dict(d: dict) -> Config:
    """Build a :class:`Config` from :func:`config_to_dict` output. Missing fields keep their
    defaults (of the dataclass, i.e. the paper's recipe); unknown keys raise ``ValueError``."""
    if not isinstance(d, dict):
        raise ValueError(f"a config must be a JSON object / dict, got {type(d).__name__}")
    unknown = sorted(set(d) - {"name", "data", *_SECTIONS})
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; expected name, data, {', '.join(_SECTIONS)}")
    cfg = Config()
    for key in ("name", "data"):
        if key in d:
            setattr(cfg, key, _coerce(d[key], str, key))
    for section, cls in _SECTIONS.items():
        if section not in d:
            continue
        sub = d[section]
        if not isinstance(sub, dict):
            raise ValueError(f"config section {section!r} must be an object, got {type(sub).__name__}")
        types_ = _field_types(cls)
        bad = sorted(set(sub) - set(types_))
        if bad:
            raise ValueError(f"unknown key(s) {bad} in config section {section!r}; expected some of {sorted(types_)}")
        obj = getattr(cfg, section)
        for k, v in sub.items():
            setattr(obj, k, _coerce(v, types_[k], f"{section}.{k}"))
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the config as indented JSON (parents created; atomically, with the umask's mode)."""
    from ._io import atomic_write_json

    return atomic_write_json(path, config_to_dict(cfg), what="config")


def load_config(name_or_path: str | os.PathLike) -> Config:
    """A preset name (``"cifar10"``, ``"tiny"``) or a path to a JSON file written by :func:`save_config`."""
    s = str(name_or_path)
    if s in PRESETS:
        return get_config(s)
    path = Path(s)
    presets = ", ".join(sorted(PRESETS))
    if path.suffix.lower() != ".json" and not path.exists():
        raise ValueError(f"unknown config {s!r}: expected a preset ({presets}) or a .json file")
    if not path.is_file():
        raise ValueError(f"{path}: config file not found; expected a preset ({presets}) or a .json file")
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path}: not a JSON config ({type(exc).__name__}: {str(exc).splitlines()[0][:100]}); expected the "
            "config.json of a run or 'python -m ddpm_ref train --print-config' output"
        ) from exc
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror}); expected a readable .json file") from exc
    try:
        return config_from_dict(d)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


# ------------------------------------------------------------------------------------ overrides
def _parse_value(text: str, tp, where: str):
    """Parse the string ``text`` of a ``--set key=value`` as the field type ``tp``."""
    inner, optional = _split_optional(tp)
    s = text.strip()
    if optional and s.lower() in ("none", "null", ""):
        return None
    if typing.get_origin(inner) is tuple:
        body = s.strip("[]() ")
        try:
            return tuple(int(p) for p in body.replace(" ", "").split(",") if p != "")
        except ValueError:
            raise ValueError(f"{where}: expects comma-separated integers like 1,2,2,2; got {text!r}") from None
    if inner is bool:
        low = s.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expects true/false, got {text!r}")
    if inner is int:
        try:
            f = float(s.replace("_", "")) if any(c in s for c in ".eE") else None
            return int(f) if f is not None and f.is_integer() else int(s.replace("_", ""))
        except ValueError:
            raise ValueError(f"{where}: expects an integer, got {text!r}") from None
    if inner is float:
        try:
            return float(s)
        except ValueError:
            raise ValueError(f"{where}: expects a number, got {text!r}") from None
    return s


def apply_overrides(cfg: Config, overrides) -> Config:
    """Return a copy of ``cfg`` with ``"section.field=value"`` (or ``"data=..."``, ``"name=..."``)
    assignments applied, each value parsed as the field's type. Also accepts a dict
    ``{"section.field": value}``. Raises ``ValueError`` for unknown keys or unparsable values."""
    cfg = copy.deepcopy(cfg)
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for item in items:
        try:
            _apply_one(cfg, item)
        except ValueError as exc:
            shown = item if isinstance(item, str) else f"{item[0]}={item[1]}"
            raise ValueError(f"--set {shown}: {exc}") from exc
    return cfg


def _apply_one(cfg: Config, item) -> None:
    """Apply one ``"section.field=value"`` string or ``(key, value)`` pair to ``cfg`` in place."""
    if isinstance(item, str):
        if "=" not in item:
            raise ValueError("expected section.field=value, e.g. optim.lr=1e-4")
        key, raw = item.split("=", 1)
        key = key.strip()
    else:
        key, raw = item
    if key in ("name", "data"):
        setattr(cfg, key, raw if isinstance(raw, str) else _coerce(raw, str, key))
        return
    if key.count(".") != 1:
        raise ValueError(
            f"unknown config key {key!r}; expected name, data or section.field with section in "
            f"{list(_SECTIONS)}"
        )
    section, name = key.split(".")
    if section not in _SECTIONS:
        raise ValueError(f"unknown config section {section!r} in {key!r}; expected one of {list(_SECTIONS)}")
    types_ = _field_types(_SECTIONS[section])
    if name not in types_:
        raise ValueError(f"unknown field {name!r} in section {section!r}; expected one of {sorted(types_)}")
    value = _parse_value(raw, types_[name], key) if isinstance(raw, str) else _coerce(raw, types_[name], key)
    setattr(getattr(cfg, section), name, value)


# ------------------------------------------------------------------------------------ validation
def _positive_int(where, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{where}: must be an integer >= {minimum}, got {v!r}")


def _finite(where, v, lo=None, hi=None, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{where}: must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{where}: must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"{where}: must be {'<' if hi_open else '<='} {hi}, got {v!r}")


def validate_config(cfg: Config) -> Config:
    """Check every field; raise ``ValueError`` naming the first bad one. Returns ``cfg``.

    Also builds the U-Net configuration on the ``meta`` device to check that the model options
    fit together (widths divisible by the GroupNorm groups, resolution by the down-sampling).
    """
    from .diffusion import LOSS_TYPES, MEAN_TYPES, VAR_TYPES
    from .schedules import get_beta_schedule

    if not isinstance(cfg, Config):
        raise ValueError(f"expected a Config, got {type(cfg).__name__}")
    if not isinstance(cfg.data, str) or not cfg.data:
        raise ValueError(f"data: must be a non-empty string like 'cifar10:<root>', got {cfg.data!r}")
    m, d, o, t = cfg.model, cfg.diffusion, cfg.optim, cfg.train
    _finite("model.dropout", m.dropout, 0.0, 1.0, hi_open=True)
    if d.model_mean_type not in MEAN_TYPES:
        raise ValueError(f"diffusion.model_mean_type: must be one of {MEAN_TYPES}, got {d.model_mean_type!r}")
    if d.model_var_type not in VAR_TYPES:
        raise ValueError(f"diffusion.model_var_type: must be one of {VAR_TYPES}, got {d.model_var_type!r}")
    if d.loss_type not in LOSS_TYPES:
        raise ValueError(f"diffusion.loss_type: must be one of {LOSS_TYPES}, got {d.loss_type!r}")
    _positive_int("diffusion.num_timesteps", d.num_timesteps)
    _finite("diffusion.beta_start", d.beta_start, 0.0, 1.0, lo_open=True)
    _finite("diffusion.beta_end", d.beta_end, 0.0, 1.0, lo_open=True)
    try:
        get_beta_schedule(d.schedule, beta_start=d.beta_start, beta_end=d.beta_end,
                          num_diffusion_timesteps=d.num_timesteps)
        cfg.build_diffusion()
    except ValueError as exc:
        raise ValueError(f"invalid diffusion config: {exc}") from exc
    _finite("optim.lr", o.lr, 0.0, lo_open=True)
    _finite("optim.beta1", o.beta1, 0.0, 1.0, hi_open=True)
    _finite("optim.beta2", o.beta2, 0.0, 1.0, hi_open=True)
    _finite("optim.eps", o.eps, 0.0, lo_open=True)
    _finite("optim.weight_decay", o.weight_decay, 0.0)
    _positive_int("optim.warmup_steps", o.warmup_steps, 0)
    _finite("optim.grad_clip", o.grad_clip, 0.0)
    _positive_int("train.batch_size", t.batch_size)
    _positive_int("train.total_steps", t.total_steps)
    _finite("train.ema_decay", t.ema_decay, 0.0, 1.0)
    if not isinstance(t.random_flip, bool):
        raise ValueError(f"train.random_flip: must be true or false, got {t.random_flip!r}")
    _positive_int("train.seed", t.seed, 0)
    _positive_int("train.log_every", t.log_every)
    _positive_int("train.sample_every", t.sample_every, 0)
    _positive_int("train.num_samples", t.num_samples)
    _positive_int("train.sample_timesteps", t.sample_timesteps, 0)
    _positive_int("train.checkpoint_every", t.checkpoint_every)
    _positive_int("train.keep_every", t.keep_every, 0)
    try:
        import torch

        from .unet import UNet

        with torch.device("meta"):
            UNet(**cfg.unet_kwargs())
    except ValueError as exc:
        raise ValueError(f"invalid model config: {exc}") from exc
    return cfg


def changed_keys(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs (``name`` ignored)."""
    da, db = config_to_dict(a), config_to_dict(b)
    out = []
    if da["data"] != db["data"]:
        out.append("data")
    for section in _SECTIONS:
        for k in da[section]:
            if da[section][k] != db[section][k]:
                out.append(f"{section}.{k}")
    return out
