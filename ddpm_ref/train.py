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
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ._io import atomic_write_text
from ._progress import progress as _progress_bar
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
    load_config,
    save_config,
    validate_config,
)
from .data.specs import load_images
from .errors import OutputError, UsageError, describe_os_error

__all__ = [
    "NonFiniteLossError",
    "TrainingInterrupted",
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


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped :meth:`Trainer.fit`; a checkpoint at the current step was written.

    Attributes: ``signum`` (the signal), ``step``, ``path`` (the checkpoint, None on ranks other
    than 0). The message names the checkpoint and how to continue."""

    def __init__(self, signum: int, step: int, path, out_dir):
        self.signum, self.step, self.path = int(signum), int(step), path
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted by {name} at step {step}: saved the checkpoint {path}; continue with the same "
            f"command plus --resume (python -m ddpm_ref train --out {out_dir} --resume)"
        )


def _check_same_recipe(saved: Config, config: Config, source) -> None:
    """A run may only be continued with the same recipe (up to :data:`RESUME_SAFE_KEYS`)."""
    bad = [k for k in changed_keys(saved, config) if k not in RESUME_SAFE_KEYS]
    if bad:
        raise UsageError(
            f"{source}: cannot resume with a changed recipe: {bad} differ from the run's (only "
            f"{sorted(RESUME_SAFE_KEYS)} may change); drop those --set/--config changes, or start a new run "
            "in another --out"
        )


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


# ----------------------------------------------------------------------------------- trainer
def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Trainer:
    """Algorithm 1 with everything around it. Build, then :meth:`fit`.

    Args:
        config: the recipe (:class:`ddpm_ref.config.Config`); on resume ``None`` means the
            checkpoint's own config (or ``<out>/config.json`` of a run that has not written a
            checkpoint yet). A given config may differ from the checkpoint's only in
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
        resume: path of a checkpoint to continue from, or ``"auto"``: ``out_dir/checkpoints/last.pt``
            if it exists, else the ``out_dir/config.json`` of a run interrupted before its first
            checkpoint (started again from step 0), else a new run (``config`` is then required).
        progress: show a progress bar (rank 0; plain lines when stderr is not a terminal).
        tensorboard: write TensorBoard events (rank 0).
        download: let ``cifar10:<root>`` download the archive.
        overrides: ``"section.field=value"`` strings (:func:`ddpm_ref.config.apply_overrides`) applied
            to ``config`` (or, on resume without a config, to the checkpoint's).
        force: start a new run in a directory whose ``config.json`` belongs to a run that has not
            written a checkpoint yet (never deletes checkpoints).

    A new run refuses a directory that already holds one (a checkpoint, or a ``config.json``
    without one: a run in progress) unless ``resume`` (or ``force`` for the latter) is given.
    :meth:`fit` handles SIGINT and SIGTERM: it writes a checkpoint at the current step and raises
    :class:`TrainingInterrupted`.

    The constructor runs these steps in order (each a method): :meth:`_init_processes`,
    :meth:`_resolve_run` (which checkpoint, which config), :meth:`_init_config`,
    :meth:`_init_numerics`, :meth:`_init_data`, :meth:`_check_batch_fits`, :meth:`_init_model`
    (model, EMA, optimizer and generators, seeded identically on every rank), :meth:`_load_state`
    when resuming, :meth:`_wrap_model` (DDP, compile) and :meth:`_init_logging`.
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
        force: bool = False,
    ):
        self._init_processes(out_dir, device, deterministic)
        ckpt, resume_path, config = self._resolve_run(config, resume, overrides, force)
        self._init_config(config)
        self._init_numerics(channels_last, bf16, compile, deterministic, tf32)
        images = self._init_data(images, download, progress)
        self._check_batch_fits(images)
        self._init_model()
        self.step = 0
        self.resumed_from = None
        if ckpt is not None:
            self._load_state(ckpt, resume_path)
            self._check_length()
        self._wrap_model()
        self._init_logging(tensorboard, progress, resumed=ckpt is not None)

    # --------------------------------------------------------------------------- construction steps
    def _init_processes(self, out_dir, device, deterministic: bool) -> None:
        """Paths of the run, this process's rank and device (initialises DDP under torchrun)."""
        if deterministic:  # cuBLAS needs this before its first use to be deterministic
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.pt"
        self.config_path = self.out_dir / "config.json"
        self.dist, self.device = init_distributed(device)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.is_main = self.dist.is_main
        self._restart = False  # True: a run without checkpoint is started again from step 0

    def _resolve_run(self, config, resume, overrides, force: bool):
        """Which checkpoint to continue (if any) and the recipe: ``(ckpt, path, config)``."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UsageError(f"{self.out_dir}: is a file, not a directory; give --out a directory")
        resume_path = saved = None
        if resume is not None and str(resume) != "auto":
            resume_path = Path(resume)
        elif resume is not None and self.last_path.is_file():
            resume_path = self.last_path
        elif resume is not None and self.config_path.is_file():
            saved = load_config(self.config_path)
            config = saved if config is None else config
            self._restart = True
            self._say(f"--resume: {self.out_dir} has no checkpoint yet; starting its run again from "
                      f"{self.config_path} at step 0")
        elif resume is not None:
            if config is None:
                raise UsageError(
                    f"{self.out_dir}: nothing to resume (no checkpoints/last.pt, no config.json); start a new "
                    "run with --config (cifar10, tiny or a .json file)"
                )
            self._say(f"--resume: nothing to resume in {self.out_dir}; starting a new run")
        elif self.last_path.is_file():
            raise UsageError(
                f"{self.out_dir}: already holds a run ({self.last_path}); pass --resume to continue it, "
                "or choose another --out"
            )
        elif self.config_path.is_file():
            if not force:
                raise UsageError(
                    f"{self.out_dir}: already holds a run that has not written a checkpoint yet "
                    f"({self.config_path}); pass --resume to start it again from its config.json, --force to "
                    "start a new run here, or choose another --out"
                )
            self._restart = True
        ckpt = None
        if resume_path is not None:
            ckpt = load_checkpoint(resume_path)
            ckpt_cfg = config_from_dict(ckpt["config"])
            config = ckpt_cfg if config is None else config
            if overrides:
                config = apply_overrides(config, overrides)
            _check_same_recipe(ckpt_cfg, config, resume_path)
        if config is None:
            raise UsageError("no recipe for a new run; pass --config (cifar10, tiny or a .json file)")
        if ckpt is None and overrides:
            config = apply_overrides(config, overrides)
        if saved is not None:
            _check_same_recipe(saved, config, self.config_path)
        return ckpt, resume_path, config

    def _init_config(self, config: Config) -> None:
        """Validate the recipe and split the global batch over the processes."""
        self.config = validate_config(config)
        tc = self.config.train
        if tc.batch_size % self.world_size:
            raise UsageError(
                f"train.batch_size={tc.batch_size} is not divisible by the number of processes ({self.world_size}): "
                f"each process gets batch_size / world_size images; give --batch-size a multiple of {self.world_size}"
            )
        self.local_batch = tc.batch_size // self.world_size

    def _init_numerics(self, channels_last, bf16, compile, deterministic, tf32) -> None:
        """Speed and reproducibility switches (channels_last, bf16, compile, TF32, determinism)."""
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

    def _init_data(self, images, download: bool, progress: bool) -> np.ndarray:
        """The diffusion, the training images (``config.data`` unless given) and the batch stream."""
        cfg = self.config
        tc = cfg.train
        self.diffusion = cfg.build_diffusion()
        res = cfg.unet_kwargs()["resolution"]
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
        return images

    def _check_batch_fits(self, images: np.ndarray) -> None:
        """Refuse a global batch larger than the data set, or one that cannot fit in memory."""
        B, n = self.config.train.batch_size, int(images.shape[0])
        if B > n:
            raise UsageError(
                f"train.batch_size (--batch-size) {B}: larger than the {n} training images of "
                f"{self.data_info['source']}; use --batch-size {n} or less"
            )
        from ._resources import available_memory, format_bytes, training_memory_estimate

        avail = available_memory(self.device)
        if avail is None:
            return
        need = training_memory_estimate(self.config.unet_kwargs(), self.local_batch, bf16=self.bf16)
        if need > avail:
            one = training_memory_estimate(self.config.unet_kwargs(), 1, bf16=self.bf16)
            per = max((need - one) // max(self.local_batch - 1, 1), 1)
            fit = (int((avail - one) // per) + 1) * self.world_size if avail >= one else 0
            todo = (f"use --batch-size {fit} or less, or more processes" if fit >= 1 else
                    "even one image per process does not fit: use a smaller model or a device with more memory")
            raise UsageError(
                f"train.batch_size (--batch-size) {B}: a training step needs about {format_bytes(need)} per process "
                f"({self.local_batch} images) but only {format_bytes(avail)} of memory is available on "
                f"{self.device}; {todo}"
            )

    def _init_model(self) -> None:
        """Model, EMA, optimizer, and the generators of t/noise and dropout (identical on every rank)."""
        cfg = self.config
        tc = cfg.train
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

    def _check_length(self) -> None:
        """A resumed run must not be asked to end before the step it is at."""
        total = self.config.train.total_steps
        if total < self.step:
            raise UsageError(
                f"train.total_steps (--steps) {total}: below the step the run is at ({self.step}, "
                f"{self.resumed_from}); pass --steps {self.step} or more to continue it"
            )

    def _wrap_model(self) -> None:
        """The forward model: DDP under torchrun, torch.compile if asked."""
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

    def _init_logging(self, tensorboard: bool, progress: bool, resumed: bool) -> None:
        """Per-step buffers, the log window, TensorBoard, progress, the NaN guard and the signal state."""
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []
        self._window: list[tuple[int, float, float, float]] = []
        self.history: list[dict] = []
        self._writer = None
        self._tensorboard = bool(tensorboard)
        self._progress = bool(progress)
        self._last_log_time = None
        self._last_log_step = self.step
        self._failed = False
        self.last_good_step = self.step if resumed else None
        self._signal = None  # the signal number that asked the run to stop
        self._stop_group = None  # a gloo group to agree on it under DDP (created on first use)

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
            try:
                self._writer = SummaryWriter(str(self.out_dir / "tb"),
                                             purge_step=self.step + 1 if self.step else None)
            except Exception as exc:
                why, todo = describe_os_error(exc)
                raise OutputError(f"{self.out_dir / 'tb'}: cannot write TensorBoard events: {why}; {todo} "
                                  "(or pass --no-tensorboard)") from exc
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
        path = self.out_dir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        except OSError as exc:
            why, todo = describe_os_error(exc)
            raise OutputError(f"{path}: cannot append the log: {why}; {todo}") from exc
        w = self._open_writer()
        if w is not None:
            s = rec["step"]
            try:
                w.add_scalar("train/loss", rec["loss"], s)
                w.add_scalar("train/grad_norm", rec["grad_norm"], s)
                w.add_scalar("train/lr", rec["lr"], s)
                if math.isfinite(sps):
                    w.add_scalar("train/steps_per_sec", sps, s)
            except Exception as exc:
                why, todo = describe_os_error(exc)
                raise OutputError(f"{self.out_dir / 'tb'}: cannot write TensorBoard events: {why}; {todo} "
                                  "(or pass --no-tensorboard)") from exc

    def _truncate_metrics(self) -> None:
        """On resume, drop log lines written after the checkpoint (they are recomputed); a run
        started again from step 0 drops them all."""
        path = self.out_dir / "metrics.jsonl"
        if not (self.is_main and path.is_file()):
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write_text(path, "".join(k + "\n" for k in keep), what="training log")

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
        end. Returns the log records of this call.

        SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption notice) stop the loop after the current
        update: a checkpoint of that step is written atomically and :class:`TrainingInterrupted`
        is raised (a second signal acts at once, the previous checkpoint staying intact). Under
        DDP the ranks agree on the step first. Raises :class:`NonFiniteLossError`, and
        :class:`~ddpm_ref.errors.OutputError` if a checkpoint cannot be written (the previous one
        is kept)."""
        tc = self.config.train
        if stop_at is not None and int(stop_at) <= self.step:
            raise UsageError(f"--stop-at {stop_at}: the run is already at step {self.step}; give a later step")
        end = tc.total_steps if stop_at is None else min(int(stop_at), tc.total_steps)
        if self.is_main:
            save_config(self.config, self.config_path)
            if self.resumed_from is not None or self._restart:
                self._truncate_metrics()
            self._say(self.describe())
        first_record = len(self.history)
        check_every_step = self.device.type != "cuda"  # a sync is free off-GPU
        bar = _progress_bar(
            total=tc.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
            disable=not (self._progress and self.is_main), desc="train", smoothing=0.05,
        )
        self._last_log_time, self._last_log_step = time.perf_counter(), self.step
        try:
            with self._handle_signals():
                while self.step < end:
                    self.train_step()
                    bar.update(1)
                    s = self.step
                    stop = self._stop_requested()
                    due_log = s % tc.log_every == 0 or s == end or stop is not None
                    due_keep = tc.keep_every > 0 and s % tc.keep_every == 0
                    due_ckpt = s % tc.checkpoint_every == 0 or s == end or due_keep or stop is not None
                    due_sample = tc.sample_every > 0 and s % tc.sample_every == 0 and stop is None
                    if check_every_step or due_log or due_ckpt or due_sample:
                        self._drain()
                    if due_log:
                        self._log(bar)
                    if due_ckpt:
                        path = self._save_or_explain(keep=due_keep)
                    if stop is not None:
                        raise TrainingInterrupted(stop, s, path, self.out_dir)
                    if due_sample and self.is_main:
                        self.sample_grid()
        finally:
            bar.close()
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.flush()
        return self.history[first_record:]

    def _save_or_explain(self, keep: bool) -> Path | None:
        """:meth:`save_checkpoint`; a failed write says where the run stopped and what is kept."""
        previous = self.last_good_step
        try:
            return self.save_checkpoint(keep=keep)
        except OutputError as exc:
            self.last_good_step = previous
            kept = (f"the checkpoint of step {previous} is intact" if previous is not None
                    else "no checkpoint of this run was written")
            raise OutputError(f"{exc}; training stopped at step {self.step} and {kept} (continue with --resume)") \
                from exc

    # --------------------------------------------------------------------------- interruption
    @contextlib.contextmanager
    def _handle_signals(self):
        """Turn SIGINT/SIGTERM into a request to stop after the current update (main thread only).
        The first signal restores the previous handler, so a second one acts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def on_signal(signum, frame):
            self._signal = signum
            signal.signal(signum, previous[signum])
            if self.is_main:
                name = signal.Signals(signum).name
                print(f"{name} received: stopping after step {self.step + 1} with a checkpoint (send it again "
                      "to stop at once)", file=sys.stderr, flush=True)

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_requested(self) -> int | None:
        """The signal number if any rank was asked to stop (all ranks agree, same step), else None."""
        if self.world_size == 1:
            return self._signal
        if self._stop_group is None:
            gloo = dist.get_backend() == "gloo"
            self._stop_group = dist.group.WORLD if gloo else dist.new_group(backend="gloo")
        flag = torch.tensor([self._signal or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._stop_group)
        return int(flag.item()) or None

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
