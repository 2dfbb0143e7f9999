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
from tqdm import tqdm

from ._validate import value_checks
from .train import _autocast, derive_seed, load_images

__all__ = [
    "load_model",
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
def _resolve_model_path(path: Path) -> Path:
    """A directory stands for ``ema.safetensors`` inside it, else its training checkpoint
    (``checkpoints/last.pt`` of a run directory, or ``last.pt``)."""
    if not path.is_dir():
        return path
    for cand in (path / "ema.safetensors", path / "checkpoints" / "last.pt", path / "last.pt"):
        if cand.is_file():
            return cand
    raise ValueError(
        f"{path} is a directory without ema.safetensors, checkpoints/last.pt or last.pt; pass a model file"
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
      ``python -m ddpm_ref convert <run>/checkpoints/last.pt --out ema.safetensors``): the diffusion comes
      from ``config`` (a :class:`~ddpm_ref.config.Config` or a path / preset name for
      :func:`~ddpm_ref.config.load_config`), else from a ``config.json`` next to the file, else -- with a
      warning -- from the paper's CIFAR-10 recipe;
    - a directory: its ``ema.safetensors`` (+ ``config.json``), else its ``checkpoints/last.pt`` or ``last.pt``.

    The model is in eval mode (no dropout) on ``device``. ``info`` = ``{"path", "step", "weights"}``.
    """
    import warnings

    from .checkpoint import load_checkpoint
    from .config import Config, config_from_dict, get_config, load_config

    path = _resolve_model_path(Path(path))
    device = torch.device(device)
    if config is not None and not isinstance(config, Config):
        config = load_config(config)
    if path.suffix == ".safetensors":
        from .convert import load_unet

        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        model = load_unet(path)
        cfg = config
        if cfg is None and (path.parent / "config.json").is_file():
            cfg = load_config(path.parent / "config.json")
        if cfg is None:
            warnings.warn(
                f"no config for {path} (no config= and no config.json next to it): using the paper's CIFAR-10 "
                "diffusion (T=1000, linear betas, eps, fixedlarge)", stacklevel=2,
            )
            cfg = get_config("cifar10")
        info = {"path": str(path), "step": None, "weights": "converted"}
    else:
        ckpt = load_checkpoint(path)
        cfg = config_from_dict(ckpt["config"]) if config is None else config
        model = cfg.build_model()
        model.load_state_dict(ckpt["ema" if use_ema else "model"])
        info = {"path": str(path), "step": int(ckpt["step"]), "weights": "ema" if use_ema else "raw"}
    diffusion = cfg.build_diffusion()
    want = diffusion.model_output_channels(model.in_channels)
    if model.out_channels != want:
        raise ValueError(
            f"{path}: the model outputs {model.out_channels} channels but the diffusion "
            f"({cfg.diffusion.model_var_type}) needs {want}"
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


def _map_batches(n: int, batch_size: int, fn, *, desc: str, progress: bool) -> list:
    """``fn(i, start, stop)`` for every batch of ``n`` items, results in batch order.

    Under ``torchrun`` each rank runs every world_size-th batch and the results are gathered, so
    every rank returns all of them; the progress bar (on rank 0) counts items.
    """
    dist_on = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    batches = _batches(n, batch_size)
    mine = [b for b in batches if b[0] % world == rank]
    local = {}
    with tqdm(total=sum(e - s for _, s, e in mine), unit="img", desc=desc,
              disable=not (progress and rank == 0)) as bar:
        for i, s, e in mine:
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

    def one_batch(i, s, e):
        x = from_uint8(images[s:e]).to(device)
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, _SEED_BPD, i))
        out = diffusion.calc_bpd_loop(model, x, clip_denoised=clip_denoised, generator=g, progress=False)
        return {k: v.double().cpu().numpy() for k, v in out.items()}

    with value_checks(False):
        parts = _map_batches(n, batch_size, one_batch, desc=f"bits/dim (T={T})", progress=progress)
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
    """Write ``bpd.json`` (scalars + ``meta``) and ``bpd.npz`` (per-image and per-t arrays)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scalars = {k: v for k, v in result.items() if not isinstance(v, dict)}
    scalars.update(meta or {})
    jpath = out_dir / "bpd.json"
    jpath.write_text(json.dumps(scalars, indent=2) + "\n")
    npath = out_dir / "bpd.npz"
    np.savez(
        npath,
        **{f"image_{k}": v for k, v in result["per_image"].items()},
        **{f"t_{k}": v for k, v in result.get("per_t", {}).items()},
    )
    return jpath, npath


# ----------------------------------------------------------------------------------- samples
def _sampling_process(diffusion, sampler: str, steps: int | None):
    from .sampling import respace

    T = diffusion.num_timesteps
    if sampler not in ("ancestral", "ddim"):
        raise ValueError(f"sampler must be 'ancestral' or 'ddim', got {sampler!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T):
        raise ValueError(f"steps must be an int in [1, {T}] (or None for all T), got {steps!r}")
    if sampler == "ancestral":
        return diffusion if steps in (None, T) else respace(diffusion, steps)
    return respace(diffusion, f"ddim{steps or T}")


@torch.no_grad()
def generate_samples(
    model,
    diffusion,
    num: int,
    *,
    batch_size: int = 256,
    sampler: str = "ancestral",
    steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    image_size: int | None = None,
    channels: int = 3,
    device: str | torch.device | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """``num`` samples as uint8 ``[num, H, W, 3]``.

    ``sampler="ancestral"``: Algorithm 2 with all T steps (``steps=None``), or ancestral sampling on
    K = ``steps`` evenly spaced timesteps (:func:`ddpm_ref.respace`). ``sampler="ddim"``: DDIM
    (Song et al. 2021) on the uniform stride of K = ``steps`` timesteps with ``eta``. Batch i starts
    from noise seeded by ``(seed, i)``. Under ``torchrun`` each rank samples every world_size-th
    batch; every rank returns the full set (gathered).
    """
    from .data import to_uint8
    from .sampling import ancestral_sample, ddim_sample

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
    proc = _sampling_process(diffusion, sampler, steps)

    def one_batch(i, s, e):
        g = torch.Generator(device=device).manual_seed(derive_seed(seed, _SEED_SAMPLE, i))
        shape = (e - s, channels, image_size, image_size)
        if sampler == "ancestral":
            x = ancestral_sample(proc, model, shape, generator=g, device=device, progress=False)["sample"]
        else:
            x = ddim_sample(proc, model, shape, eta=float(eta), generator=g, device=device, progress=False)["sample"]
        return to_uint8(x.float())

    with value_checks(False), _autocast(device, bf16):
        parts = _map_batches(num, batch_size, one_batch, desc=f"sampling ({sampler}, {proc.num_timesteps} steps)",
                             progress=progress)
    return np.concatenate(parts)


def save_samples(images: np.ndarray, out_dir: str | os.PathLike, meta: dict | None = None,
                 grid_size: int = 64) -> tuple[Path, Path]:
    """Write ``samples.npz`` (``images`` uint8 [N, H, W, 3] + ``meta`` as JSON text) and
    ``samples.png`` (a grid of the first ``grid_size`` images)."""
    from .data import save_image_grid

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / "samples.npz"
    np.savez(npz, images=images, meta=np.str_(json.dumps(meta or {})))
    k = min(grid_size, images.shape[0])
    png = save_image_grid(images[:k], out_dir / "samples.png", nrow=max(1, int(math.ceil(math.sqrt(k)))))
    return npz, png


def load_samples(path: str | os.PathLike) -> np.ndarray:
    """uint8 [N, H, W, 3] images from an .npz written by :func:`save_samples` (key ``images``,
    or the file's only 4-D uint8 array)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"samples file not found: {path}")
    with np.load(path, allow_pickle=False) as f:
        if "images" in f.files:
            x = f["images"]
        else:
            cands = [k for k in f.files if f[k].ndim == 4 and f[k].dtype == np.uint8]
            if len(cands) != 1:
                raise ValueError(f"{path}: expected an 'images' array (uint8 [N, H, W, 3]); found {f.files}")
            x = f[cands[0]]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{path}: images must be uint8 [N, H, W, 3], got {x.dtype} {x.shape}")
    return x


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
        raise ValueError(
            f"{spec}: not pixel-exact (JPEG files); FID reference statistics must come from exact "
            "pixels (PNG folders, the official CIFAR-10 archive, the shipped sample)"
        )
    if num_images is not None:
        if num_images < 2 or num_images > images.shape[0]:
            raise ValueError(f"num_images must lie in [2, {images.shape[0]}], got {num_images}")
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
