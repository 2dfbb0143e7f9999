"""Training (Algorithm 1) with EMA, warm-up, clipping, checkpoints, exact resume and DDP.

One update (``Trainer.train_step``) of Algorithm 1 (Ho et al. 2020), on a global batch of
``config.train.batch_size`` images:

1. x_0 ~ q(x_0): the next batch of the deterministic :class:`ddpm_ref.data.BatchStream`
   (random left-right flips);
2. t ~ Uniform({0, ..., T-1}) -- the code's 0-based timestep; **the paper's t = code t + 1**, so
   this is the paper's t ~ Uniform({1, ..., T}) (see :mod:`ddpm_ref.diffusion`);
3. eps ~ N(0, I);
4. a gradient step on L_simple = mean ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2
   (eq. 14, :meth:`ddpm_ref.GaussianDiffusion.training_losses`), with Adam, the learning rate
   ``lr * min(s / warmup, 1)`` at 0-based update s (the original ``get_warmed_up_lr``: the first
   update has lr 0), and the gradient clipped to global norm ``grad_clip``;
5. the EMA of the parameters, ``ema <- decay * ema + (1 - decay) * theta`` in float32 (the first
   update copies theta, as the original's decay of 1e-10 at global step 0 did).

Randomness is explicit, so that a run interrupted and resumed reproduces the uninterrupted run
bit for bit on a CPU (``tests/test_train.py`` checks every logged loss), and on a GPU with
``deterministic=True`` (``--deterministic``: deterministic cuDNN/cuBLAS kernels, somewhat slower;
without it a resumed GPU run continues the same data, t, noise and dropout streams but float
reductions may round differently):

- data order and flips: the :class:`~ddpm_ref.data.BatchStream` state;
- t and eps: one ``torch.Generator`` on the training device, seeded identically on every rank.
  It draws t and eps for the whole *global* batch and each rank keeps its slice, so the draws do
  not depend on the number of processes;
- dropout: the global torch generator, seeded per rank; its state (and numpy's and Python's)
  is gathered from every rank into the checkpoint;
- model initialisation: the global generator seeded from the run seed before the model is built.

Multi-GPU: launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK). Each process gets
``batch_size / world_size`` images of every global batch (an error if it does not divide), the
gradient is averaged by ``DistributedDataParallel`` (NCCL on GPUs, gloo on CPUs), so the
update equals the single-process update on the same global batch up to float rounding (with
dropout 0; with dropout the masks differ per rank). The parameters, hence the EMA, are identical
on every rank (checked by comparing float64 fingerprints across ranks at every checkpoint). Only
rank 0 writes logs, sample grids and checkpoints; resuming needs the checkpoint on a file system
every rank can read.

Speed options (all also work on CPU, where they are tested): ``bf16`` autocast, channels_last,
``torch.compile`` of the model, TF32 matmuls on CUDA, fused Adam on CUDA. The value checks of
the core (finiteness, timestep ranges) force a GPU sync, so the hot path runs inside
``ddpm_ref.value_checks(False)``; the loop guards the loss itself instead: loss and gradient
norm are checked for NaN/inf at every log interval, before every checkpoint (and every step on
CPU). A non-finite value stops the run with :class:`NonFiniteLossError` naming the step, and
the last checkpoint (written only after a clean check) stays untouched.

One known difference from the released TPU code: there, ``tf.clip_by_global_norm`` with
``grad_clip / num_replicas`` ran on each core's gradient of its (1/num_replicas-scaled) local loss,
i.e. before the cross-replica sum of ``CrossShardOptimizer``, so each core's local-batch gradient was
clipped separately; here the clip acts on the gradient of the global batch, which is what one
process with the full batch does (and what PyTorch DDP ports do).

Output directory::

    out/config.json                       the recipe
    out/metrics.jsonl                     one JSON line per log interval
    out/tb/                               TensorBoard scalars (train/loss, train/grad_norm, train/lr, ...)
                                          and sample grids (samples/ema)
    out/samples/step_XXXXXXX.png          EMA sample grids
    out/checkpoints/last.pt               latest checkpoint (atomic)
    out/checkpoints/step_XXXXXXX.pt       kept checkpoints (every train.keep_every steps)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ._validate import value_checks
from .checkpoint import (
    FORMAT,
    VERSION,
    atomic_save,
    capture_global_rng,
    load_checkpoint,
    restore_global_rng,
)
from .config import (
    RESUME_SAFE_KEYS,
    Config,
    apply_overrides,
    changed_keys,
    config_from_dict,
    config_to_dict,
    save_config,
    validate_config,
)

__all__ = [
    "NonFiniteLossError",
    "DistInfo",
    "init_distributed",
    "select_device",
    "load_images",
    "derive_seed",
    "warmup_lr",
    "Trainer",
    "train",
]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient norm; the message names the step."""


# ----------------------------------------------------------------------------------- environment
@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` if CUDA is available, else CPU. ``"cuda"`` also maps to
    the local rank's GPU; ``"cpu"``, ``"mps"`` and ``"cuda:<i>"`` are taken as given."""
    if isinstance(name, torch.device):
        return name
    name = str(name)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:<i> or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__})")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device type {device.type!r}; expected cpu, cuda or mps")
    return device


def init_distributed(device: str | torch.device = "auto") -> tuple[DistInfo, torch.device]:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK, pick the device, and initialise the process
    group if WORLD_SIZE > 1 (NCCL for CUDA, gloo otherwise). Returns ``(DistInfo, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
        return info, select_device(device, local)
    dev = select_device(device, local)
    if world > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, True), dev
    return DistInfo(), dev


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``(seed, *keys)`` with numpy's SeedSequence (unrelated streams
    for different purposes / ranks)."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


_SEED_INIT, _SEED_TNOISE, _SEED_DROPOUT, _SEED_SAMPLES = 1, 2, 3, 4


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Learning rate of the update at 0-based step ``step``: ``lr * min(step / warmup, 1)``."""
    if warmup_steps <= 0:
        return float(lr)
    return float(lr) * min(step / warmup_steps, 1.0)


# ----------------------------------------------------------------------------------- data
def load_images(
    spec: str,
    split: str = "train",
    *,
    image_size: int | None = None,
    download: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Load uint8 NHWC images from a data spec.

    ``spec`` is one of:

    - ``"sample"`` / ``"sample:train"`` / ``"sample:test"``: the pixel-exact CIFAR-10 sample shipped
      in the package (1024 training, 256 test images); without a suffix, ``split`` decides;
    - ``"cifar10:<root>"``: the official CIFAR-10 python archive under ``root``
      (:func:`ddpm_ref.data.load_cifar10`; ``download=True`` fetches it), split ``split``;
    - ``"folder:<dir>"``: ``dir/<class>/<image>.png|jpg`` (:func:`ddpm_ref.data.load_image_folder`);
      images must already be ``image_size`` square;
    - ``"npz:<file>"`` or ``"npz:<file>:<key>"``: a uint8 [N, H, W, 3] array in an .npz file (default
      key ``x_<split>``, or the file's only 4-D array).

    Returns ``(images, info)`` with ``info = {"source", "split", "num_images", "pixel_exact"}``;
    ``pixel_exact`` is False for JPEG folders (never compute FID reference statistics from them).
    Raises ``ValueError`` for a bad spec or missing path, :class:`ddpm_ref.data.DataFileError`
    (an ``OSError``) for unreadable or wrongly sized files.
    """
    from . import data

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data spec must be a non-empty string, got {spec!r}")
    kind, _, arg = spec.partition(":")
    pixel_exact = True
    if kind == "sample":
        sp = arg or split
        if sp not in ("train", "test"):
            raise ValueError(f"data spec {spec!r}: the shipped sample has splits 'train' and 'test', got {sp!r}")
        images = data.load_sample(sp)[0]
        split = sp
    elif kind == "cifar10":
        if not arg:
            raise ValueError("data spec 'cifar10:<root>' needs the directory, e.g. cifar10:data/cifar10")
        images = data.load_cifar10(arg, split, download=download, progress=progress)[0]
    elif kind == "folder":
        if not arg:
            raise ValueError("data spec 'folder:<dir>' needs the directory")
        images, _, info = data.load_image_folder(
            arg, image_size=image_size or 32, return_info=True, progress=progress
        )
        pixel_exact = bool(info["lossless"])
    elif kind == "npz":
        path, _, key = arg.partition(":")
        if not path:
            raise ValueError("data spec 'npz:<file>[:key]' needs the file")
        if not Path(path).is_file():
            raise ValueError(f"npz file not found: {path}")
        with np.load(path, allow_pickle=False) as f:
            names = list(f.keys())
            if not key:
                four_d = [n for n in names if f[n].ndim == 4]
                key = f"x_{split}" if f"x_{split}" in names else (four_d[0] if len(four_d) == 1 else "")
            if key not in names:
                raise ValueError(f"{path}: cannot choose an image array (have {names}); use npz:{path}:<key>")
            images = f[key]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{path}[{key}] must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    else:
        raise ValueError(
            f"unknown data spec {spec!r}; expected sample[:train|test], cifar10:<root>, folder:<dir> "
            "or npz:<file>[:key]"
        )
    if images.shape[0] == 0:
        raise ValueError(f"data spec {spec!r} holds no images")
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        raise ValueError(
            f"images from {spec!r} are {images.shape[1]}x{images.shape[2]}, but the model expects "
            f"{image_size}x{image_size}"
        )
    info = {"source": spec, "split": split, "num_images": int(images.shape[0]), "pixel_exact": pixel_exact}
    return images, info


# ----------------------------------------------------------------------------------- trainer
def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Trainer:
    """Algorithm 1 with everything around it. Build, then :meth:`fit`.

    Args:
        config: the recipe (:class:`ddpm_ref.config.Config`); on resume ``None`` means the
            checkpoint's own config. A given config may differ from the checkpoint's only in
            :data:`ddpm_ref.config.RESUME_SAFE_KEYS` (e.g. ``train.total_steps``), else ValueError.
        out_dir: the run directory (layout in the module docs).
        images: uint8 [N, H, W, 3] training images; default: :func:`load_images` of ``config.data``.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"mps"`` ...
        bf16: bfloat16 autocast for the forward pass (CUDA and CPU). Parameters, optimizer and
            EMA stay float32.
        compile: ``torch.compile`` the model.
        channels_last: NHWC memory format (default: on for CUDA, off otherwise).
        tf32: allow TF32 matmuls/convolutions on CUDA.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (and deterministic cuDNN): bitwise
            reproducible GPU runs and resumes, at some speed cost. CPU runs are deterministic anyway.
        resume: path of a checkpoint to continue from, or ``"auto"`` for ``out_dir/checkpoints/last.pt``
            if it exists (a fresh start otherwise).
        progress: show a tqdm bar (rank 0). tensorboard: write TensorBoard events (rank 0).
        download: let ``cifar10:<root>`` download the archive.
        overrides: ``"section.field=value"`` strings (:func:`ddpm_ref.config.apply_overrides`) applied
            to ``config`` (or, on resume without a config, to the checkpoint's).
    """

    def __init__(
        self,
        config: Config | None,
        out_dir: str | os.PathLike,
        *,
        images=None,
        device: str | torch.device = "auto",
        bf16: bool = False,
        compile: bool = False,
        channels_last: bool | None = None,
        tf32: bool = True,
        deterministic: bool = False,
        resume: str | os.PathLike | None = None,
        progress: bool = True,
        tensorboard: bool = True,
        download: bool = False,
        overrides=None,
    ):
        if deterministic:  # cuBLAS needs this before its first use to be deterministic
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pt"
        self.dist, self.device = init_distributed(device)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.dist.is_main

        # ---- resume: which checkpoint, which config
        ckpt = None
        resume_path = None
        if resume is not None:
            if str(resume) == "auto":
                resume_path = self.last_path if self.last_path.is_file() else None
                if resume_path is None:
                    self._say(f"--resume: no checkpoint at {self.last_path}; starting a new run")
            else:
                resume_path = Path(resume)
        if resume_path is not None:
            ckpt = load_checkpoint(resume_path)
            ckpt_cfg = config_from_dict(ckpt["config"])
            if config is None:
                config = ckpt_cfg
            if overrides:
                config = apply_overrides(config, overrides)
            bad = [k for k in changed_keys(ckpt_cfg, config) if k not in RESUME_SAFE_KEYS]
            if bad:
                raise ValueError(
                    f"cannot resume {resume_path} with a changed recipe: {bad} differ from the "
                    f"checkpoint (only {sorted(RESUME_SAFE_KEYS)} may change); start a new run instead"
                )
        elif self.last_path.is_file():
            raise ValueError(
                f"{self.out_dir} already holds a run ({self.last_path}); pass --resume to continue it "
                "or choose another output directory"
            )
        if config is None:
            raise ValueError("config is required for a new run")
        if ckpt is None and overrides:
            config = apply_overrides(config, overrides)
        self.config = validate_config(config)
        cfg = self.config
        tc = cfg.train
        if tc.batch_size % self.world_size:
            raise ValueError(
                f"the global batch train.batch_size={tc.batch_size} is not divisible by the number of "
                f"processes ({self.world_size}); each process must get batch_size / world_size images"
            )
        self.local_batch = tc.batch_size // self.world_size

        # ---- numerics / speed options
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        self.channels_last, self.bf16, self.compile = bool(channels_last), bool(bf16), bool(compile)
        self.deterministic = bool(deterministic)
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            torch.backends.cudnn.allow_tf32 = bool(tf32)
            torch.backends.cudnn.benchmark = not self.deterministic
            torch.backends.cudnn.deterministic = self.deterministic

        # ---- data
        self.diffusion = cfg.build_diffusion()
        unet_kw = cfg.unet_kwargs()
        res = unet_kw["resolution"]
        if images is None:
            # with --download under DDP, rank 0 fetches the archive while the others wait
            first = download and self.world_size > 1
            if first and not self.is_main:
                dist.barrier()
            images, self.data_info = load_images(
                cfg.data, "train", image_size=res, download=download, progress=progress and self.is_main
            )
            if first and self.is_main:
                dist.barrier()
        else:
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
            if images.shape[1:3] != (res, res):
                raise ValueError(
                    f"training images are {images.shape[1]}x{images.shape[2]} but the model expects {res}x{res}"
                )
            self.data_info = {"source": "<array>", "split": "train", "num_images": int(images.shape[0])}
        self.stream = BatchStreamFactory(
            images, tc.batch_size, tc.seed, self.rank, self.world_size, tc.random_flip, self.device
        )

        # ---- model, EMA, optimizer (identical initialisation on every rank)
        torch.manual_seed(derive_seed(tc.seed, _SEED_INIT))
        self.model = cfg.build_model().to(self.device).train()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        adam_kw = dict(
            lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        if self.device.type == "cuda":
            adam_kw["fused"] = True
        self.optimizer = torch.optim.Adam(self.model.parameters(), **adam_kw)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(derive_seed(tc.seed, _SEED_TNOISE))
        self._seed_globals(derive_seed(tc.seed, _SEED_DROPOUT, self.rank))
        self.step = 0
        self.resumed_from = None
        if ckpt is not None:
            self._load_state(ckpt, resume_path)

        # ---- wrappers
        fwd = self.model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            fwd = DDP(self.model, device_ids=ids, output_device=ids[0] if ids else None,
                      broadcast_buffers=False)
        if self.compile:
            fwd = torch.compile(fwd)
        self.forward_model = fwd
        self._model_params = [p for p in self.model.parameters()]
        self._ema_params = [p for p in self.ema.parameters()]

        # ---- logging state
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self._window: list[tuple[int, float, float, float]] = []
        self.history: list[dict] = []
        self._writer = None
        self._tensorboard = bool(tensorboard)
        self._progress = bool(progress)
        self._last_log_time = None
        self._last_log_step = self.step
        self._failed = False
        self.last_good_step = self.step if ckpt is not None else None

    # --------------------------------------------------------------------------- helpers
    def _say(self, msg: str) -> None:
        if getattr(self, "is_main", True):
            tqdm.write(msg)

    @staticmethod
    def _seed_globals(seed: int) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)

    def _load_state(self, ckpt: dict, path: Path) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.stream.load_state_dict(ckpt["data_stream"])
        self.generator.set_state(ckpt["generator"].cpu())
        self.step = int(ckpt["step"])
        rng = ckpt["rng"]
        if len(rng) == self.world_size:
            restore_global_rng(rng[self.rank])
        else:
            warnings.warn(
                f"checkpoint was written by {len(rng)} process(es), this run has {self.world_size}: "
                "dropout masks are re-seeded from (seed, step, rank) and will differ from an "
                "uninterrupted run (data order, t and noise still continue exactly)",
                stacklevel=3,
            )
            self._seed_globals(derive_seed(self.config.train.seed, _SEED_DROPOUT, self.rank, self.step))
        self.resumed_from = str(path)
        self._say(f"resumed from {path} at step {self.step}")

    def lr_at(self, step: int) -> float:
        """Learning rate of the update at 0-based ``step`` (linear warm-up, then constant)."""
        return warmup_lr(step, self.config.optim.lr, self.config.optim.warmup_steps)

    # --------------------------------------------------------------------------- one update
    def train_step(self) -> None:
        """One update of Algorithm 1 on this rank's slice of the next global batch."""
        cfg = self.config
        x0 = self.stream.next()
        B, b, r = cfg.train.batch_size, self.local_batch, self.rank
        T = self.diffusion.num_timesteps
        t_all = torch.randint(0, T, (B,), generator=self.generator, device=self.device)
        noise_all = torch.randn((B,) + tuple(x0.shape[1:]), generator=self.generator, device=self.device)
        t, noise = t_all[r * b : (r + 1) * b], noise_all[r * b : (r + 1) * b]
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with value_checks(False), _autocast(self.device, self.bf16):
            loss = self.diffusion.training_losses(self.forward_model, x0, t, noise=noise)["loss"].mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = self._clip_gradients()
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        self._pending.append((self.step, loss.detach().float(), gnorm.detach().float(), lr))

    def _clip_gradients(self) -> torch.Tensor:
        clip = self.config.optim.grad_clip
        if clip > 0:
            return torch.nn.utils.clip_grad_norm_(self._model_params, clip, foreach=True)
        grads = [p.grad for p in self._model_params if p.grad is not None]
        if hasattr(torch.nn.utils, "get_total_norm"):
            return torch.nn.utils.get_total_norm(grads, foreach=True)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = 0.0 if self.step == 0 else self.config.train.ema_decay
        if hasattr(torch, "_foreach_lerp_"):
            torch._foreach_lerp_(self._ema_params, self._model_params, 1.0 - decay)
        else:  # pragma: no cover
            for e, p in zip(self._ema_params, self._model_params, strict=True):
                e.lerp_(p, 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    # --------------------------------------------------------------------------- guard and logs
    def _drain(self) -> None:
        """Move pending per-step losses/grad norms to the host (one sync), average the losses over
        ranks, and stop on the first non-finite value."""
        if not self._pending:
            return
        vals = torch.stack([torch.stack([p[1], p[2]]) for p in self._pending])  # [k, 2]
        if self.world_size > 1:
            dist.all_reduce(vals, op=dist.ReduceOp.SUM)
            vals = vals / self.world_size
        host = vals.double().cpu().numpy()
        pending, self._pending = self._pending, []
        for (step, _, _, lr), (loss, gnorm) in zip(pending, host, strict=True):
            if not (math.isfinite(loss) and math.isfinite(gnorm)):
                self._failed = True
                what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {gnorm} (loss {loss})"
                if self.last_good_step is not None:
                    kept = f"the last good checkpoint {self.last_path} (step {self.last_good_step}) was left untouched"
                else:
                    kept = "no checkpoint had been written yet in this run"
                raise NonFiniteLossError(
                    f"non-finite {what} at step {step} (lr {lr:.3g}); training stopped and {kept}. "
                    "Resume from it with a smaller optim.lr / without --bf16, or check the data."
                )
            self._window.append((step, float(loss), float(gnorm), lr))

    def _open_writer(self):
        if self._writer is None and self._tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # pragma: no cover
                warnings.warn(f"TensorBoard logging disabled ({exc})", stacklevel=2)
                self._tensorboard = False
                return None
            self._writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.step + 1 if self.step else None)
        return self._writer

    def _log(self, bar) -> None:
        if not self._window:
            return
        now = time.perf_counter()
        steps = self._window[-1][0] - self._last_log_step
        sps = steps / (now - self._last_log_time) if self._last_log_time and now > self._last_log_time else float("nan")
        self._last_log_time, self._last_log_step = now, self._window[-1][0]
        losses = [w[1] for w in self._window]
        gnorms = [w[2] for w in self._window]
        rec = {
            "step": self._window[-1][0],
            "loss": float(np.mean(losses)),
            "grad_norm": float(np.mean(gnorms)),
            "grad_norm_max": float(np.max(gnorms)),
            "lr": self._window[-1][3],
            "steps_per_sec": sps,
            "num_steps": len(self._window),
        }
        self._window = []
        self.history.append(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.4f}", gnorm=f"{rec['grad_norm']:.3f}", lr=f"{rec['lr']:.2e}")
        if not self.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        w = self._open_writer()
        if w is not None:
            s = rec["step"]
            w.add_scalar("train/loss", rec["loss"], s)
            w.add_scalar("train/grad_norm", rec["grad_norm"], s)
            w.add_scalar("train/lr", rec["lr"], s)
            if math.isfinite(sps):
                w.add_scalar("train/steps_per_sec", sps, s)

    def _truncate_metrics(self) -> None:
        """On resume, drop log lines written after the checkpoint (they are recomputed)."""
        path = self.out_dir / "metrics.jsonl"
        if not (self.is_main and path.is_file()):
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    keep.append(line)
            except (ValueError, KeyError):
                continue
        path.write_text("".join(k + "\n" for k in keep))

    # --------------------------------------------------------------------------- checkpoints
    def state_dict(self, rng_states: list) -> dict:
        """The checkpoint dict (see :mod:`ddpm_ref.checkpoint`)."""
        def cpu(sd):
            return {k: v.detach().cpu() for k, v in sd.items()}

        return {
            "format": FORMAT,
            "version": VERSION,
            "step": self.step,
            "config": config_to_dict(self.config),
            "model": cpu(self.model.state_dict()),
            "ema": cpu(self.ema.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "data_stream": self.stream.state_dict(),
            "generator": self.generator.get_state(),
            "rng": rng_states,
            "world_size": self.world_size,
            "torch_version": str(torch.__version__),
            "metrics": dict(self.history[-1]) if self.history else {},
        }

    @torch.no_grad()
    def _check_ranks_agree(self) -> None:
        """Under DDP the parameters and the EMA must be identical on every rank: compare float64
        fingerprints (sums of all entries) across ranks, and stop if they differ."""
        fp = torch.stack([
            torch.stack([p.double().sum() for p in self._model_params]).sum(),
            torch.stack([p.double().sum() for p in self._ema_params]).sum(),
        ])  # fmt: skip
        gathered = [torch.empty_like(fp) for _ in range(self.world_size)]
        dist.all_gather(gathered, fp)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(
                f"model/EMA parameters differ between ranks at step {self.step} "
                f"(fingerprints {[g.tolist() for g in gathered]}); the run is not a valid DDP run"
            )

    def save_checkpoint(self, keep: bool = False) -> Path | None:
        """Write ``checkpoints/last.pt`` atomically (and ``step_XXXXXXX.pt`` if ``keep``).

        Collective under DDP (every rank contributes its generator states); rank 0 writes.
        Refuses to write after a non-finite loss was seen."""
        if self._failed:
            raise NonFiniteLossError("refusing to checkpoint a run that produced a non-finite loss")
        self._drain()  # never checkpoint an unchecked state
        rng = capture_global_rng()
        if self.world_size > 1:
            self._check_ranks_agree()
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        self.last_good_step = self.step
        if not self.is_main:
            return None
        state = self.state_dict(gathered)
        atomic_save(state, self.last_path)
        if keep:
            atomic_save(state, self.ckpt_dir / f"step_{self.step:07d}.pt")
        return self.last_path

    # --------------------------------------------------------------------------- samples
    @torch.no_grad()
    def sample_grid(self, num: int | None = None) -> np.ndarray:
        """Sample ``num`` images with the EMA weights (fixed noise seed: comparable across steps),
        save ``samples/step_XXXXXXX.png`` and log them to TensorBoard. Returns uint8 NHWC. Rank 0 only."""
        from .data import make_grid, save_image_grid, to_uint8
        from .sampling import ancestral_sample, respace

        tc = self.config.train
        n = int(num or tc.num_samples)
        k = tc.sample_timesteps
        diffusion = self.diffusion if k == 0 or k >= self.diffusion.num_timesteps else respace(self.diffusion, k)
        g = torch.Generator(device=self.device).manual_seed(derive_seed(tc.seed, _SEED_SAMPLES))
        res, ch = self.model.resolution, self.model.in_channels
        with value_checks(False), _autocast(self.device, self.bf16):
            x = ancestral_sample(diffusion, self.ema, (n, ch, res, res), generator=g, device=self.device)["sample"]
        images = to_uint8(x.float())
        nrow = max(1, int(math.ceil(math.sqrt(n))))
        save_image_grid(images, self.out_dir / "samples" / f"step_{self.step:07d}.png", nrow=nrow)
        w = self._open_writer()
        if w is not None:
            w.add_image("samples/ema", make_grid(images, nrow=nrow), self.step, dataformats="HWC")
        return images

    # --------------------------------------------------------------------------- the loop
    def describe(self) -> str:
        cfg = self.config
        return (
            f"ddpm_ref train: config {cfg.name!r}, {self.num_params:,} parameters, "
            f"data {self.data_info['source']} ({self.data_info['num_images']} images), "
            f"device {self.device}, {self.world_size} process(es) x {self.local_batch} = global batch "
            f"{cfg.train.batch_size}, T={cfg.diffusion.num_timesteps}, steps {self.step}->{cfg.train.total_steps}, "
            f"bf16={self.bf16}, compile={self.compile}, channels_last={self.channels_last}, out {self.out_dir}"
        )

    def fit(self, stop_at: int | None = None) -> list[dict]:
        """Train until ``config.train.total_steps`` (or until step ``stop_at``, e.g. to simulate an
        interruption), logging, sampling and checkpointing at the configured intervals and at the
        end. Returns the log records of this call. Raises :class:`NonFiniteLossError`."""
        tc = self.config.train
        end = tc.total_steps if stop_at is None else min(int(stop_at), tc.total_steps)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out_dir / "config.json")
            if self.resumed_from is not None:
                self._truncate_metrics()
            self._say(self.describe())
        first_record = len(self.history)
        check_every_step = self.device.type != "cuda"  # a sync is free off-GPU
        bar = tqdm(
            total=tc.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
            disable=not (self._progress and self.is_main), desc="train", smoothing=0.05,
        )
        self._last_log_time, self._last_log_step = time.perf_counter(), self.step
        try:
            while self.step < end:
                self.train_step()
                bar.update(1)
                s = self.step
                due_log = s % tc.log_every == 0 or s == end
                due_keep = tc.keep_every > 0 and s % tc.keep_every == 0
                due_ckpt = s % tc.checkpoint_every == 0 or s == end or due_keep
                due_sample = tc.sample_every > 0 and s % tc.sample_every == 0
                if check_every_step or due_log or due_ckpt or due_sample:
                    self._drain()
                if due_log:
                    self._log(bar)
                if due_ckpt:
                    self.save_checkpoint(keep=due_keep)
                if due_sample and self.is_main:
                    self.sample_grid()
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.flush()
        return self.history[first_record:]

    def close(self) -> None:
        """Close TensorBoard and, if this trainer initialised it, the process group."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.dist.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def BatchStreamFactory(images, batch_size, seed, rank, world_size, flip, device):
    """The training :class:`ddpm_ref.data.BatchStream` (kept separate for tests to patch)."""
    from .data import BatchStream

    return BatchStream(images, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                       flip=flip, device=device)


def train(config: Config | None, out_dir: str | os.PathLike, *, stop_at: int | None = None, **kwargs) -> Trainer:
    """Build a :class:`Trainer` (keyword arguments as there), :meth:`~Trainer.fit` it and close it.
    Returns the trainer (its ``history`` holds the log records)."""
    trainer = Trainer(config, out_dir, **kwargs)
    try:
        trainer.fit(stop_at=stop_at)
    finally:
        trainer.close()
    return trainer
