"""Samplers: ancestral sampling (Algorithm 2), DDIM with respacing, and latent interpolation.

- :func:`ancestral_sample` runs Algorithm 2 from x_T ~ N(0, I) (or from any x_t) down to x_0,
  optionally recording x_t and the x0-hat predictions along the way (progressive
  generation, Section 4.3 and Figure 6).
- :class:`SpacedDiffusion` and :func:`space_timesteps` keep a subsequence of the T steps and
  re-derive betas from the kept alphabar values (an extension: Nichol & Dhariwal 2021,
  Song et al. 2021), which makes sampling 20-50x cheaper.
- :func:`ddim_sample` is the DDIM update (Song, Meng & Ermon 2021, eq. 12) with its eta; with
  eta = 1 on the full chain it coincides with ancestral sampling under ``fixedsmall``.
- :func:`interpolate` encodes two images to x_t with q, mixes the latents linearly and
  decodes with the reverse process, with the reverse noise fixed across mixing weights
  (Section 4.4, Figure 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ._validate import check_like, check_tensor
from .diffusion import GaussianDiffusion, Model


def _initial_noise(shape, noise, generator, device, dtype):
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"shape must be [N, C, ...] with positive sizes, got {shape}")
    if noise is None:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    check_tensor("noise", noise)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    return noise


@torch.no_grad()
def ancestral_sample(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: Sequence[int],
    *,
    noise: torch.Tensor | None = None,
    start_t: int | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    record_every: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Algorithm 2: x_T ~ N(0, I); for t = T..1: x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    ``shape`` is [N, C, H, W]. ``noise`` is the starting point (x_T by default; with
    ``start_t=k`` it is x at code timestep k, i.e. the paper's x_{k+1}, and the chain runs from
    there). The per-step noise comes from ``generator``. Returns ``{"sample": x_0}``, plus, if
    ``record_every`` is set, ``"steps"`` (the code timesteps t recorded, descending),
    ``"x_t"`` [K, N, ...] (the input x at each recorded step) and ``"pred_xstart"`` [K, N, ...]
    (the x0-hat predicted from it): Figure 6's progressive generation.
    """
    T = diffusion.num_timesteps
    start = T - 1 if start_t is None else int(start_t)
    if not 0 <= start < T:
        raise ValueError(f"start_t must lie in [0, {T}), got {start_t}")
    if record_every is not None and int(record_every) < 1:
        raise ValueError(f"record_every must be a positive int, got {record_every}")
    if noise is not None:
        device, dtype = noise.device, noise.dtype
    x = _initial_noise(shape, noise, generator, device, dtype)
    steps, xs, x0s = [], [], []
    for i in tqdm(range(start, -1, -1), disable=not progress, desc="sampling", leave=False):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = diffusion.p_sample(model, x, t, generator=generator, clip_denoised=clip_denoised)
        if record_every is not None and (i % int(record_every) == 0 or i == start):
            steps.append(i)
            xs.append(x)
            x0s.append(out["pred_xstart"])
        x = out["sample"]
    result = {"sample": x}
    if record_every is not None:
        result["steps"] = torch.tensor(steps, dtype=torch.long)
        result["x_t"] = torch.stack(xs)
        result["pred_xstart"] = torch.stack(x0s)
    return result


def space_timesteps(num_timesteps: int, spec: int | str | Sequence[int]) -> list[int]:
    """Choose which of the original code timesteps 0..T-1 a respaced sampler keeps (ascending).

    ``spec``: an int K keeps K steps evenly spaced from 0 to T-1 (both ends included);
    ``"ddimK"`` keeps range(0, T, T // K) (DDIM's uniform stride, K steps); a sequence keeps
    exactly those timesteps.
    """
    T = int(num_timesteps)
    if isinstance(spec, str):
        if not spec.startswith("ddim") or not spec[4:].isdigit():
            raise ValueError(f"string spec must look like 'ddim50', got {spec!r}")
        k = int(spec[4:])
        if not 1 <= k <= T:
            raise ValueError(f"cannot keep {k} of {T} timesteps")
        steps = list(range(0, T, T // k))[:k]
    elif isinstance(spec, (int, np.integer)):
        k = int(spec)
        if not 1 <= k <= T:
            raise ValueError(f"cannot keep {k} of {T} timesteps")
        steps = sorted({int(round(v)) for v in np.linspace(0, T - 1, k)})
        if len(steps) != k:
            raise ValueError(f"{k} evenly spaced steps of {T} are not distinct")
    else:
        steps = sorted(int(s) for s in spec)
        if not steps or len(set(steps)) != len(steps) or steps[0] < 0 or steps[-1] >= T:
            raise ValueError(f"timesteps must be distinct integers in [0, {T}), got {spec!r}")
    return steps


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion over a subsequence of another's timesteps.

    Keeping steps s_0 < s_1 < ... < s_{K-1} of a base process with cumulative products
    alphabar, the respaced process has alphabar'_k = alphabar_{s_k} and hence
    beta'_k = 1 - alphabar_{s_k} / alphabar_{s_{k-1}} (with alphabar_{s_{-1}} = 1). Its marginals
    q(x_k | x_0) equal the base process's at the kept steps, so a network trained on the base
    process is used unchanged: :meth:`call_model` maps the respaced index k to the base
    timestep ``timestep_map[k]`` before calling it.
    """

    def __init__(self, base_betas: np.ndarray, use_timesteps: Sequence[int], **kwargs):
        base = GaussianDiffusion(np.asarray(base_betas, dtype=np.float64))
        use = space_timesteps(base.num_timesteps, list(use_timesteps))
        abar = base.alphas_cumprod[use]
        betas = 1.0 - abar / np.append(1.0, abar[:-1])
        #: base (original) code timestep of each respaced index, ascending
        self.timestep_map = np.asarray(use, dtype=np.int64)
        self.base_num_timesteps = base.num_timesteps
        super().__init__(betas, **kwargs)
        self._map_cache: dict[torch.device, torch.Tensor] = {}

    def call_model(self, model: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m = self._map_cache.get(t.device)
        if m is None:
            m = self._map_cache[t.device] = torch.as_tensor(self.timestep_map, device=t.device)
        return model(x, m[t])


def respace(
    diffusion: GaussianDiffusion, spec: int | str | Sequence[int]
) -> SpacedDiffusion:
    """A :class:`SpacedDiffusion` keeping the steps ``spec`` (see :func:`space_timesteps`) of
    ``diffusion``, with the same mean/variance/loss types."""
    if isinstance(diffusion, SpacedDiffusion):
        raise ValueError("respace a base GaussianDiffusion, not an already respaced one")
    return SpacedDiffusion(
        diffusion.betas,
        space_timesteps(diffusion.num_timesteps, spec),
        model_mean_type=diffusion.model_mean_type,
        model_var_type=diffusion.model_var_type,
        loss_type=diffusion.loss_type,
        hybrid_lambda=diffusion.hybrid_lambda,
    )


@torch.no_grad()
def ddim_step(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
) -> dict[str, torch.Tensor]:
    """One DDIM update from x_t to x_{t-1} of ``diffusion`` (Song et al. 2021, eq. 12).

    x0-hat from the model (clipped), eps-hat re-derived from it, then
    x_{t-1} = sqrt(abar_{t-1}) x0-hat + sqrt(1 - abar_{t-1} - s^2) eps-hat + s z with
    s^2 = eta^2 (1 - abar_{t-1}) / (1 - abar_t) (1 - abar_t / abar_{t-1}); no noise at t = 0.
    """
    if not (0.0 <= float(eta)):
        raise ValueError(f"eta must be >= 0, got {eta}")
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
    x0 = out["pred_xstart"]
    eps = diffusion.predict_eps_from_xstart(x, t, x0)
    abar = diffusion.extract("alphas_cumprod", t, x)
    abar_prev = diffusion.extract("alphas_cumprod_prev", t, x)
    sigma = (
        float(eta)
        * torch.sqrt((1.0 - abar_prev) / (1.0 - abar))
        * torch.sqrt(1.0 - abar / abar_prev)
    )
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        check_like("noise", noise, "x", x)
    mean = torch.sqrt(abar_prev) * x0 + torch.sqrt((1.0 - abar_prev - sigma**2).clamp(min=0)) * eps
    nonzero = (t != 0).to(x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return {"sample": mean + nonzero * sigma * noise, "pred_xstart": x0}


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Run :func:`ddim_step` over every timestep of ``diffusion`` (use :func:`respace` first to
    sample with K steps). eta = 0 is deterministic given x_T. Returns ``{"sample": x_0}``."""
    if noise is not None:
        device, dtype = noise.device, noise.dtype
    x = _initial_noise(shape, noise, generator, device, dtype)
    for i in tqdm(
        range(diffusion.num_timesteps - 1, -1, -1), disable=not progress, desc="ddim", leave=False
    ):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x = ddim_step(
            diffusion, model, x, t, eta=eta, generator=generator, clip_denoised=clip_denoised
        )["sample"]
    return {"sample": x}


@torch.no_grad()
def interpolate(
    diffusion: GaussianDiffusion,
    model: Model,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    t: int,
    lambdas: Sequence[float],
    *,
    seed: int = 0,
    clip_denoised: bool = True,
    progress: bool = False,
) -> torch.Tensor:
    """Interpolate two images in latent space (Section 4.4, Figure 8).

    ``x_a``, ``x_b``: [C, H, W] images in [-1, 1]; ``t``: code timestep of the latent (the paper
    uses its t = 500, i.e. code t = 499). Both images are encoded once with the stochastic encoder
    q(x_t | x_0) (noise drawn with ``seed``), mixed as (1 - lambda) x_t^a + lambda x_t^b for each
    lambda, and decoded by the reverse process with the same reverse noise for every lambda.
    Returns [len(lambdas), C, H, W]; lambda = 0 and 1 give reconstructions of x_a and x_b.
    """
    check_tensor("x_a", x_a, ndim_min=2)
    check_like("x_b", x_b, "x_a", x_a)
    check_tensor("x_b", x_b)
    lambdas = [float(v) for v in lambdas]
    if not lambdas:
        raise ValueError("lambdas must not be empty")
    T = diffusion.num_timesteps
    if not 0 <= int(t) < T:
        raise ValueError(f"t must lie in [0, {T}), got {t}")
    g = torch.Generator(device=x_a.device).manual_seed(seed)
    pair = torch.stack([x_a, x_b])
    tt = torch.full((2,), int(t), dtype=torch.long, device=x_a.device)
    lat = diffusion.q_sample(pair, tt, generator=g)
    lam = torch.tensor(lambdas, dtype=x_a.dtype, device=x_a.device).reshape(
        (-1,) + (1,) * x_a.ndim
    )
    mixed = (1.0 - lam) * lat[0] + lam * lat[1]
    # The same reverse noise for every lambda: one noise draw per step, shared across the batch.
    g_rev = torch.Generator(device=x_a.device).manual_seed(seed + 1)
    x = mixed
    for i in tqdm(range(int(t), -1, -1), disable=not progress, desc="interpolate", leave=False):
        tt = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        z = torch.randn(x.shape[1:], generator=g_rev, device=x.device, dtype=x.dtype)
        z = z.expand_as(x).contiguous()
        x = diffusion.p_sample(model, x, tt, noise=z, clip_denoised=clip_denoised)["sample"]
    return x
