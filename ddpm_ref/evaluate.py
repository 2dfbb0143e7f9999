"""Evaluation with the EMA weights: bits/dim (the full variational bound), samples, FID.

- :func:`load_model`: a training checkpoint's EMA weights (or its raw weights with ``use_ema=False``),
  or a converted ``.safetensors`` U-Net from :mod:`ddpm_ref.convert`, with its diffusion.
- :func:`evaluate_bpd`: the negative ELBO in bits/dim of every image of a split (eq. 5,
  :meth:`ddpm_ref.GaussianDiffusion.calc_bpd_loop`: all T terms, one fresh x_t per term), and
  its breakdown: prior L_T, decoder L_0, the sum of the KL terms L_1..L_{T-1} (paper indices),
  and the mean of every term per timestep. The paper reports <= 3.75 bits/dim on the CIFAR-10
  test set (3.72 train) for L_simple, with L_T about 1e-5 (Table 1, Section 4.3).
- :func:`generate_samples`: N images from the reverse process (Algorithm 2 with all T steps, or
  K respaced ancestral steps, or DDIM with K steps), batched, reproducible: batch i uses noise
  seeded from (seed, i), so the images do not depend on how many processes produced them.
- :func:`compute_fid`, :func:`reference_statistics`: FID of samples against reference statistics
  (:mod:`ddpm_ref.fid`, TF-Inception pool3 features); reference statistics only from pixel-exact
  images (JPEG sets are refused).

All of them shard their work over processes when launched with ``torchrun`` (batches are dealt
round-robin; rank 0 merges and writes).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ._io import atomic_write, atomic_write_json, describe_arrays, npz_contents, npz_load
from ._progress import progress as _progress_bar
from ._validate import value_checks
from .errors import FileFormatError, UsageError, short_reason
from .train import _autocast, derive_seed, load_images

__all__ = [
    "load_model",
    "resolve_model_path",
    "evaluate_bpd",
    "save_bpd",
    "generate_samples",
    "save_samples",
    "load_samples",
    "reference_statistics",
    "compute_fid",
]

_SEED_BPD, _SEED_SAMPLE = 11, 12


# ----------------------------------------------------------------------------------- models
def resolve_model_path(path: str | os.PathLike, use_ema: bool = True) -> Path:
    """The model file a path stands for.

    A file is itself. A directory stands for, with the EMA weights (``use_ema``): its
    ``ema.safetensors``, else its training checkpoint (``checkpoints/last.pt`` of a run directory,
    or ``last.pt``); with the raw weights: its ``raw.safetensors``, else that training checkpoint.
    Raises :class:`~ddpm_ref.errors.UsageError` if there is none (naming ``--no-ema`` when only EMA
    weights are there)."""
    path = Path(path)
    if not path.is_dir():
        return path
    first = "ema.safetensors" if use_ema else "raw.safetensors"
    for cand in (path / first, path / "checkpoints" / "last.pt", path / "last.pt"):
        if cand.is_file():
            return cand
    if not use_ema and (path / "ema.safetensors").is_file():
        raise UsageError(
            f"{path}: holds only EMA weights (ema.safetensors, no raw.safetensors or training checkpoint); "
            "drop --no-ema, or pass the run's training checkpoint"
        )
    raise UsageError(
        f"{path}: a directory without {first}, checkpoints/last.pt or last.pt; pass a model file "
        "(.pt training checkpoint or .safetensors from 'python -m ddpm_ref convert')"
    )


_resolve_model_path = resolve_model_path  # the earlier private name


def _recipe_for(path: Path, file_recipe, config):
    """The recipe of a .safetensors model: ``config`` if given, else the one in the file, else a
    ``config.json`` beside it; refused if there is none."""
    from .config import Config, config_from_dict, load_config

    if config is not None:
        return (config if isinstance(config, Config) else load_config(config)), "--config"
    if file_recipe is not None:
        return config_from_dict(file_recipe), "file"
    sibling = path.parent / "config.json"
    if sibling.is_file():
        return load_config(sibling), str(sibling)
    raise UsageError(
        f"{path}: records no diffusion recipe (T, beta schedule, variances) and has no config.json beside it; "
        "pass --config (cifar10 for the paper's CIFAR-10 models, or the training run's config.json), or convert "
        "it again with 'python -m ddpm_ref convert <source> --config <recipe> --out <file>'"
    )


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    use_ema: bool = True,
    config=None,
):
    """Load a model for evaluation: ``(model, diffusion, config, info)``.

    ``path`` is one of

    - a training checkpoint (``.pt``, :mod:`ddpm_ref.checkpoint`): the EMA weights unless
      ``use_ema=False``, and the run's own recipe;
    - a ``.safetensors`` U-Net written by :func:`ddpm_ref.convert.save_unet` (e.g. by
      ``python -m ddpm_ref convert <run>/checkpoints/last.pt --out ema.safetensors``): the diffusion
      comes from ``config`` (a :class:`~ddpm_ref.config.Config` or a path / preset name for
      :func:`~ddpm_ref.config.load_config`) if given, else from the recipe recorded in the file,
      else from a ``config.json`` next to the file; a file with none of these is refused
      (:class:`~ddpm_ref.errors.UsageError`) rather than run with a guessed schedule. With
      ``use_ema=False`` the file must record that it holds raw weights;
    - a directory (:func:`resolve_model_path`): its ``ema.safetensors`` (``raw.safetensors`` with
      ``use_ema=False``), else its ``checkpoints/last.pt`` or ``last.pt``.

    The model is in eval mode (no dropout) on ``device``. ``info`` = ``{"path", "step", "weights",
    "recipe"}`` (``weights``: ``"ema"``, ``"raw"`` or ``"converted"`` when the file does not say;
    ``recipe``: where the diffusion came from).
    """
    from .checkpoint import load_checkpoint
    from .config import Config, config_from_dict, load_config

    path = resolve_model_path(Path(path), use_ema)
    device = torch.device(device)
    if path.suffix == ".safetensors":
        from .convert import load_unet, unet_file_info

        if not path.is_file():
            raise FileFormatError(f"{path}: model file not found; expected a .safetensors file from "
                                  "'python -m ddpm_ref convert' or a training checkpoint (.pt)")
        meta = unet_file_info(path)
        weights = meta["weights"]
        if not use_ema and weights != "raw":
            held = f"holds {weights.upper()} weights" if weights else "does not record which weights it holds"
            raise UsageError(
                f"{path}: {held}, and --no-ema needs the raw ones; drop --no-ema, or pass the training "
                "checkpoint (or a raw.safetensors exported with 'python -m ddpm_ref convert --no-ema')"
            )
        model = load_unet(path)
        cfg, recipe_src = _recipe_for(path, meta["recipe"], config)
        info = {"path": str(path), "step": None, "weights": weights or "converted", "recipe": recipe_src}
    else:
        ckpt = load_checkpoint(path)
        if config is not None and not isinstance(config, Config):
            config = load_config(config)
        try:
            cfg = config_from_dict(ckpt["config"]) if config is None else config
        except ValueError as exc:
            raise FileFormatError(f"{path}: its recorded recipe is invalid ({exc}); pass --config") from exc
        model = cfg.build_model()
        try:
            model.load_state_dict(ckpt["ema" if use_ema else "model"])
        except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
            hint = "drop --config to use the checkpoint's own recipe" if config is not None else \
                "the checkpoint is damaged; use an earlier one (checkpoints/step_*.pt)"
            raise FileFormatError(
                f"{path}: its weights do not fit the recipe's U-Net ({short_reason(exc, 80)}); {hint}"
            ) from exc
        info = {"path": str(path), "step": int(ckpt["step"]), "weights": "ema" if use_ema else "raw",
                "recipe": "checkpoint" if config is None else "--config"}
    diffusion = cfg.build_diffusion()
    want = diffusion.model_output_channels(model.in_channels)
    if model.out_channels != want:
        raise UsageError(
            f"{path}: the model outputs {model.out_channels} channels but the recipe's diffusion "
            f"({cfg.diffusion.model_var_type}) needs {want}; give the recipe the model was trained with (--config)"
        )
    return model.to(device).eval().requires_grad_(False), diffusion, cfg, info


def _check_model(model, diffusion):
    if not callable(model):
        raise ValueError(f"model must be callable model(x, t), got {type(model).__name__}")
    from .diffusion import GaussianDiffusion

    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")


def _batches(n: int, batch_size: int) -> list[tuple[int, int, int]]:
    """(batch index, start, stop) of ``n`` items in batches of ``batch_size``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return [(i, s, min(s + batch_size, n)) for i, s in enumerate(range(0, n, batch_size))]


def _default_device(model, device) -> torch.device:
    if device is None:
        device = next(iter(model.parameters())).device if isinstance(model, torch.nn.Module) else "cpu"
    return torch.device(device)


def _map_batches(n: int, batch_size: int, fn, *, desc: str, progress: bool, evals_per_item: int = 0) -> list:
    """``fn(i, start, stop)`` for every batch of ``n`` items, results in batch order.

    Under ``torchrun`` each rank runs every world_size-th batch and the results are gathered, so
    every rank returns all of them; the progress bar (on rank 0) counts items. With
    ``evals_per_item`` > 0 it counts network evaluations instead (items x evals_per_item) and ``fn``
    is called as ``fn(i, start, stop, tick)``, ``tick(k)`` advancing the bar by k within a batch.
    """
    dist_on = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    batches = _batches(n, batch_size)
    mine = [b for b in batches if b[0] % world == rank]
    local = {}
    scale = max(int(evals_per_item), 1)
    unit = "eval" if evals_per_item else "img"
    with _progress_bar(total=sum(e - s for _, s, e in mine) * scale, unit=unit, desc=desc,
                       disable=not (progress and rank == 0)) as bar:
        for i, s, e in mine:
            if evals_per_item:
                start = bar.n
                local[i] = fn(i, s, e, bar.update)
                bar.update(start + (e - s) * scale - bar.n)
            else:
                local[i] = fn(i, s, e)
                bar.update(e - s)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
        local = {k: v for part in gathered for k, v in part.items()}
    return [local[i] for i, _, _ in batches]


# ----------------------------------------------------------------------------------- bits/dim
@torch.no_grad()
def evaluate_bpd(
    model,
    diffusion,
    images,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
    clip_denoised: bool = True,
    progress: bool = True,
    t_samples: int | None = None,
) -> dict:
    """The variational bound in bits/dim over uint8 images ``[N, H, W, 3]``, with its breakdown.

    For each batch, :meth:`~ddpm_ref.GaussianDiffusion.calc_bpd_loop` evaluates all T terms (T
    network evaluations per image) with noise seeded from ``(seed, batch index)``. Returns a dict:

    - ``num_images``, ``num_timesteps``;
    - ``bpd``: mean over images of the total bound L_T + L_{T-1} + ... + L_0 (paper indices);
      ``bpd_stderr``: its standard error over images;
    - ``prior_bpd`` (L_T), ``decoder_bpd`` (L_0 = -log p(x_0 | x_1)), ``kl_bpd`` (sum of L_1..L_{T-1})
      -- means over images; they add up to ``bpd``;
    - ``per_image``: dict of float64 [N] arrays ``total_bpd``, ``prior_bpd``, ``decoder_bpd``, ``kl_bpd``;
    - ``per_t``: dict of float64 [T] arrays, index = code t: ``terms_bpd`` (mean of the paper's L_t;
      index 0 is L_0), ``xstart_mse``, ``eps_mse`` (used for the rate-distortion plot of Section 4.3).

    ``t_samples=K`` uses the unbiased estimator :meth:`~ddpm_ref.GaussianDiffusion.estimate_bpd`
    instead (K + 1 network evaluations per image: L_T and L_0 exact, the KL sum from K sampled
    terms): there is no ``per_t``; ``per_image`` adds ``total_bpd_stderr`` and ``kl_bpd_stderr``;
    ``bpd_stderr`` (over images) includes the estimator's noise, ``bpd_estimator_stderr`` is the
    part of it due to the estimator. ``estimator`` and ``t_samples`` say which was used.

    Under ``torchrun`` each rank evaluates every world_size-th batch and all ranks return the merged
    result.
    """
    from .data import from_uint8
    from .diffusion import check_t_samples

    _check_model(model, diffusion)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise ValueError(f"images must be uint8 [N, H, W, 3] with N >= 1, got {images.dtype} {images.shape}")
    device = _default_device(model, device)
    n, T = images.shape[0], diffusion.num_timesteps
    if t_samples is not None:
        t_samples = check_t_samples(t_samples, T)
        return _estimate_bpd(model, diffusion, images, batch_size, device, seed, clip_denoised, progress, t_samples)

    def one_batch(i, s, e, tick):
        x = from_uint8(images[s:e]).to(device)
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, _SEED_BPD, i))

        def counted(x_t, t):  # the bar moves with every network evaluation, not once per batch
            out = model(x_t, t)
            tick(x_t.shape[0])
            return out

        out = diffusion.calc_bpd_loop(counted, x, clip_denoised=clip_denoised, generator=g, progress=False)
        return {k: v.double().cpu().numpy() for k, v in out.items()}

    with value_checks(False):
        parts = _map_batches(n, batch_size, one_batch, desc=f"bits/dim (T={T})", progress=progress,
                             evals_per_item=T)
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    terms = cat["terms_bpd"]  # [N, T]
    per_image = {
        # summed in float64 from the float32 terms, so the breakdown adds up exactly
        "total_bpd": cat["prior_bpd"] + terms.sum(axis=1),
        "prior_bpd": cat["prior_bpd"],
        "decoder_bpd": terms[:, 0],
        "kl_bpd": terms[:, 1:].sum(axis=1),
    }
    total = per_image["total_bpd"]
    return {
        "num_images": int(n),
        "num_timesteps": int(T),
        "estimator": "full",
        "t_samples": None,
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "prior_bpd": float(per_image["prior_bpd"].mean()),
        "decoder_bpd": float(per_image["decoder_bpd"].mean()),
        "kl_bpd": float(per_image["kl_bpd"].mean()),
        "per_image": per_image,
        "per_t": {
            "terms_bpd": terms.mean(axis=0),
            "xstart_mse": cat["xstart_mse"].mean(axis=0),
            "eps_mse": cat["eps_mse"].mean(axis=0),
        },
    }


def _estimate_bpd(model, diffusion, images, batch_size, device, seed, clip_denoised, progress, K) -> dict:
    """:func:`evaluate_bpd` with ``t_samples=K``: :meth:`~ddpm_ref.GaussianDiffusion.estimate_bpd` per batch."""
    from .data import from_uint8

    n, T = images.shape[0], diffusion.num_timesteps

    def one_batch(i, s, e):
        x = from_uint8(images[s:e]).to(device)
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, _SEED_BPD, i))
        out = diffusion.estimate_bpd(model, x, t_samples=K, generator=g, clip_denoised=clip_denoised)
        return {k: v.double().cpu().numpy() for k, v in out.items()}

    with value_checks(False):
        parts = _map_batches(n, batch_size, one_batch, desc=f"bits/dim (K={K} of T={T})", progress=progress)
    per_image = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    total = per_image["total_bpd"]
    return {
        "num_images": int(n),
        "num_timesteps": int(T),
        "estimator": "stratified importance sampling of t (unbiased; L_T, L_0 exact)",
        "t_samples": int(K),
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "bpd_estimator_stderr": float(math.sqrt(np.mean(per_image["total_bpd_stderr"] ** 2) / n)),
        "prior_bpd": float(per_image["prior_bpd"].mean()),
        "decoder_bpd": float(per_image["decoder_bpd"].mean()),
        "kl_bpd": float(per_image["kl_bpd"].mean()),
        "per_image": per_image,
    }


def save_bpd(result: dict, out_dir: str | os.PathLike, meta: dict | None = None) -> tuple[Path, Path]:
    """Write ``bpd.json`` (scalars + ``meta``) and ``bpd.npz`` (per-image and per-t arrays), each
    atomically (:func:`ddpm_ref._io.atomic_write`; existing files are replaced: the command line
    refuses that without ``--force`` before any work)."""
    out_dir = Path(out_dir)
    scalars = {k: v for k, v in result.items() if not isinstance(v, dict)}
    scalars.update(meta or {})
    arrays = {**{f"image_{k}": v for k, v in result["per_image"].items()},
              **{f"t_{k}": v for k, v in result.get("per_t", {}).items()}}
    npath = atomic_write(out_dir / "bpd.npz", lambda f: np.savez(f, **arrays), what="bits/dim arrays")
    jpath = atomic_write_json(out_dir / "bpd.json", scalars, what="bits/dim result")
    return jpath, npath


# ----------------------------------------------------------------------------------- samples
#: The spacing of K kept steps when sampling with ``steps=K`` (``generate_samples``, the CLI's
#: ``--spacing``): "trailing" always keeps t = T - 1 and was the best on chapter 7's toy at small K.
DEFAULT_SPACING = "trailing"


def _sampling_process(diffusion, sampler: str, steps: int | None, spacing: str = DEFAULT_SPACING):
    from .sampling import SPACINGS, respace

    T = diffusion.num_timesteps
    if sampler not in ("ancestral", "ddim"):
        raise ValueError(f"sampler must be 'ancestral' or 'ddim', got {sampler!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T):
        raise ValueError(f"steps must be an int in [1, {T}] (or None for all T), got {steps!r}")
    return diffusion if steps in (None, T) else respace(diffusion, steps, spacing)  # every spacing keeps all T


@torch.no_grad()
def generate_samples(
    model,
    diffusion,
    num: int,
    *,
    batch_size: int = 256,
    sampler: str = "ancestral",
    steps: int | None = None,
    spacing: str = DEFAULT_SPACING,
    eta: float = 0.0,
    seed: int = 0,
    image_size: int | None = None,
    channels: int = 3,
    device: str | torch.device | None = None,
    bf16: bool = False,
    progress: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    stats: dict | None = None,
) -> np.ndarray:
    """``num`` samples as uint8 ``[num, H, W, 3]``.

    ``sampler="ancestral"``: Algorithm 2 with all T steps (``steps=None``), or ancestral sampling on
    K = ``steps`` timesteps (:func:`ddpm_ref.respace`). ``sampler="ddim"``: DDIM (Song et al. 2021) on
    K = ``steps`` timesteps (all T by default) with ``eta``. The K steps follow ``spacing``
    (:func:`ddpm_ref.sampling.space_timesteps`: "trailing", "linspace", "leading" or "stride"; a choice
    that stops more than one stride below T - 1 is refused). Batch i starts
    from noise seeded by ``(seed, i)``. Under ``torchrun`` each rank samples every world_size-th
    batch; every rank returns the full set (gathered).
    ``sampler="ode"``: the probability-flow ODE (Song et al. 2021, eq. 13) with scipy's error-controlled
    solver at tolerances ``rtol``, ``atol`` (default 1e-3 each; :func:`ddpm_ref.ode.ode_sample`), with
    x0-hat clipped to [-1, 1] like the other two samplers; it takes no ``steps`` and no ``eta``. If
    ``stats`` is a dict, ``stats["nfe"]`` receives the network evaluations of every batch.
    """
    from .data import to_uint8
    from .sampling import ancestral_sample, ddim_max_eta, ddim_sample

    _check_model(model, diffusion)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if not (isinstance(eta, (int, float)) and eta >= 0):
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    if image_size is None:
        image_size = getattr(model, "resolution", None)
        if image_size is None:
            raise ValueError("image_size is required for a model without a .resolution attribute")
    device = _default_device(model, device)
    if sampler == "ode":
        from .ode import ode_sample

        if steps is not None or eta != 0:
            raise ValueError("the ODE sampler takes no steps and no eta: its solver chooses the steps and it adds no "
                             "noise, so neither a step count nor any variance (fixed, learned or eta-scaled) is used")
        rtol = 1e-3 if rtol is None else rtol
        atol = 1e-3 if atol is None else atol
        proc = diffusion
    else:
        if rtol is not None or atol is not None:
            raise ValueError(f"rtol/atol are tolerances of the ODE sampler; sampler {sampler!r} takes none")
        proc = _sampling_process(diffusion, sampler, steps, spacing)
        if sampler == "ddim" and eta > 0:
            eta_max = ddim_max_eta(proc)
            if eta > eta_max:
                raise UsageError(
                    f"--eta {eta:g}: with {proc.num_timesteps} DDIM steps sigma_t^2 would exceed 1 - abar_(t-1) "
                    f"(the sampler would no longer be DDIM); use --eta {math.floor(eta_max * 1000) / 1000:g} or less "
                    "(0 = deterministic, 1 = ancestral-like)"
                )

    def one_batch(i, s, e):
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, _SEED_SAMPLE, i))
        shape = (e - s, channels, image_size, image_size)
        nfe = proc.num_timesteps
        if sampler == "ancestral":
            x = ancestral_sample(proc, model, shape, generator=g, device=device, progress=False)["sample"]
        elif sampler == "ode":
            out = ode_sample(proc, model, shape, rtol=rtol, atol=atol, generator=g, device=device, clip_denoised=True)
            x, nfe = out["sample"], out["nfe"]
        else:
            x = ddim_sample(proc, model, shape, eta=float(eta), generator=g, device=device, progress=False)["sample"]
        return to_uint8(x.float()), nfe

    with value_checks(False), _autocast(device, bf16):
        parts = _map_batches(num, batch_size, one_batch, desc=f"sampling ({sampler}, {proc.num_timesteps} steps)",
                             progress=progress)
    if stats is not None:
        stats["nfe"] = [p[1] for p in parts]
    return np.concatenate([p[0] for p in parts])


def save_samples(images: np.ndarray, out_dir: str | os.PathLike, meta: dict | None = None,
                 grid_size: int = 64) -> tuple[Path, Path]:
    """Write ``samples.npz`` (``images`` uint8 [N, H, W, 3] + ``meta`` as JSON text) and
    ``samples.png`` (a grid of the first ``grid_size`` images), each atomically."""
    from .data import save_image_grid

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    out_dir = Path(out_dir)
    meta_text = np.str_(json.dumps(meta or {}))
    npz = atomic_write(out_dir / "samples.npz", lambda f: np.savez(f, images=images, meta=meta_text),
                       what="samples")
    k = min(grid_size, images.shape[0])
    png = save_image_grid(images[:k], out_dir / "samples.png", nrow=max(1, int(math.ceil(math.sqrt(k)))))
    return npz, png


def load_samples(path: str | os.PathLike) -> np.ndarray:
    """uint8 [N, H, W, 3] images from an .npz written by :func:`save_samples` (key ``images``,
    or the file's only 4-D uint8 array). Any problem raises
    :class:`~ddpm_ref.errors.FileFormatError` naming the file."""
    path = Path(path)
    expected = "expected the samples.npz written by 'python -m ddpm_ref sample' (uint8 [N, H, W, 3] images)"
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "samples file not found"
        raise FileFormatError(f"{path}: {where}; {expected}")
    contents = npz_contents(path, expected=expected)
    if "images" in contents:
        key = "images"
    else:
        cands = [k for k, (shape, dt) in contents.items() if len(shape) == 4 and dt == np.uint8]
        if len(cands) != 1:
            raise FileFormatError(f"{path}: no 'images' array (it has {describe_arrays(contents)}); {expected}")
        key = cands[0]
    shape, dtype = contents[key]
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise FileFormatError(f"{path}[{key}]: is {dtype} {list(shape)}; {expected}")
    return npz_load(path, [key], expected=expected)[key]


# ----------------------------------------------------------------------------------- FID
def reference_statistics(
    spec: str,
    split: str = "train",
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    num_images: int | None = None,
    download: bool = False,
    progress: bool = True,
    weights: str | os.PathLike | None = None,
):
    """FID reference statistics (:class:`ddpm_ref.fid.FIDStatistics`) of a data set given as a data
    spec (:func:`ddpm_ref.train.load_images`). Refuses sets that are not pixel-exact (JPEG folders).
    ``num_images`` takes the first N images (the paper used all 50k training images). ``weights``:
    another TorchScript feature network (see :func:`ddpm_ref.fid.load_inception`; default TF-Inception)."""
    from . import fid

    images, info = load_images(spec, split, download=download, progress=progress)
    if not info["pixel_exact"]:
        raise UsageError(
            f"{spec}: not pixel-exact (JPEG files); FID reference statistics must come from exact "
            "pixels: use PNG folders, the official CIFAR-10 archive or the shipped sample"
        )
    if num_images is not None:
        if num_images < 2 or num_images > images.shape[0]:
            raise UsageError(f"--num-images {num_images}: must lie in [2, {images.shape[0]}] (the images of "
                             f"{spec} [{info['split']}])")
        images = images[:num_images]
    source = f"{spec} [{info['split']}] ({images.shape[0]} images)"
    return fid.compute_statistics(images, source, True, batch_size=batch_size, device=device, progress=progress,
                                  weights=weights)


def compute_fid(
    samples,
    ref_stats,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
    progress: bool = True,
    weights: str | os.PathLike | None = None,
) -> float:
    """FID of uint8 samples [N, H, W, 3] against ``ref_stats`` (a :class:`ddpm_ref.fid.FIDStatistics`
    or the path of a statistics .npz). FID is biased upwards for small N: compare only FIDs with the
    same N (the paper: 50,000 samples against the training set). ``weights`` as in
    :func:`reference_statistics` (it must match the one the statistics were made with)."""
    from . import fid

    if isinstance(ref_stats, (str, os.PathLike)):
        ref_stats = fid.load_statistics(ref_stats)
    return fid.fid_from_images(samples, ref_stats, batch_size=batch_size, device=device, progress=progress,
                               weights=weights)
