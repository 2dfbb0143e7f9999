"""Langevin dynamics with a diffusion model's score: unadjusted Langevin at one noise level and
the predictor-corrector sampler of Song et al. 2021.

Ancestral sampling (Algorithm 2) is not Markov chain Monte Carlo: it draws x_T ~ N(0, I) and
then each x_{t-1} ~ p_theta(x_{t-1} | x_t) once, an exact sample of p_theta(x_{0:T}) after T steps.
The samplers here are the MCMC alternatives the paper contrasts it with (Section 3.2: "sampling
... resembles Langevin dynamics with eps_theta as a learned gradient of the data density"):

- :func:`score_from_eps`: the score grad log q(x_t) implied by a noise prediction,
  s = -eps / sqrt(1 - abar_t) (Tweedie's formula; eq. 11 read as a score, Section 3.2).
- :func:`langevin_step` and :func:`unadjusted_langevin`: x <- x + eps s(x) + sqrt(2 eps) z with a
  fixed step size eps at one fixed noise level (the target is q(x_t) of one code timestep t).
  Without a Metropolis correction the chain's stationary law is not the target: for a Gaussian
  target of variance v it is Gaussian with variance v / (1 - eps / (2 v))
  (:func:`ula_gaussian_variance`); and a multimodal target needs a number of steps that grows
  with the barrier between modes.
- :func:`corrector_step_size` (Song et al. 2021, Algorithm 5, the "signal-to-noise" rule
  eps = 2 alpha_t (r ||z|| / ||s||)^2) and :func:`pc_sample`: Song et al. 2021's
  predictor-corrector sampler (their Algorithm 3 with the ancestral predictor, i.e. Algorithm 2
  of the DDPM paper, and the Langevin corrector of their Algorithm 5).

The step-size convention is Song et al.'s, x + eps s + sqrt(2 eps) z; in the notation
x + (eta / 2) s + sqrt(eta) z of Welling & Teh (and the book's glossary), eta = 2 eps.

Timesteps are the package's 0-based code timesteps (paper t = code t + 1): the score at code t is
that of q(x_{t+1}) in the paper's numbering, with abar = ``diffusion.alphas_cumprod[t]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ._validate import check_like, check_tensor
from .diffusion import GaussianDiffusion, Model
from .sampling import _initial_noise

__all__ = [
    "score_from_eps",
    "langevin_step",
    "unadjusted_langevin",
    "corrector_step_size",
    "pc_sample",
    "ula_gaussian_variance",
]

STEP_NORMS = ("sample", "batch")


def _check_diffusion(diffusion) -> None:
    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")


def _check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _check_count(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _check_code_t(diffusion: GaussianDiffusion, t) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise ValueError(f"t must be an int code timestep, got {t!r}")
    T = diffusion.num_timesteps
    if not 0 <= int(t) < T:
        raise ValueError(f"t must lie in [0, {T}) (0-based code timesteps; the paper's t = code t + 1), got {t}")
    return int(t)


def _flat_norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


def score_from_eps(
    diffusion: GaussianDiffusion, model: Model, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The model's score s_theta(x_t) = -eps_theta(x_t, t) / sqrt(1 - abar_t), same shape as ``x``.

    Tweedie's formula: the minimiser of L_simple (eq. 14) is E[eps | x_t] = -sqrt(1 - abar_t)
    grad log q(x_t), so a noise prediction is a scaled score (Section 3.2, eq. 11). ``t`` [N] are
    code timesteps of ``diffusion`` (a respaced diffusion maps them to the network's own). For
    ``model_mean_type`` ``"xstart"``/``"xprev"`` the implied eps is recovered from the unclipped
    x_0 prediction; a learned variance's channels are dropped.
    """
    _check_diffusion(diffusion)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=False)
    if diffusion.model_mean_type == "eps":
        eps = out["model_output"]
    else:
        eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    return -eps / diffusion.extract("sqrt_one_minus_alphas_cumprod", t, x)


def langevin_step(
    x: torch.Tensor, score: torch.Tensor, step_size, noise: torch.Tensor
) -> torch.Tensor:
    """One unadjusted Langevin step x + eps s + sqrt(2 eps) z (Song et al. 2021, Algorithm 5).

    ``x``, ``score`` and ``noise`` (z ~ N(0, I)) have the same shape [N, ...]; ``step_size`` eps is
    a positive number or a tensor [N] of positive per-example step sizes.
    """
    check_tensor("x", x)
    check_like("score", score, "x", x)
    check_like("noise", noise, "x", x)
    if isinstance(step_size, torch.Tensor):
        check_tensor("step_size", step_size, ndim=1)
        if step_size.shape[0] != x.shape[0]:
            raise ValueError(
                f"step_size must be a number or a tensor [N] = [{x.shape[0]}], got {tuple(step_size.shape)}"
            )
        if bool((step_size <= 0).any()):
            raise ValueError("step_size must be positive")
        eps = step_size.to(device=x.device, dtype=x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return x + eps * score + torch.sqrt(2.0 * eps) * noise
    eps = _check_positive("step_size", step_size)
    return x + eps * score + math.sqrt(2.0 * eps) * noise


@torch.no_grad()
def unadjusted_langevin(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    t: int,
    *,
    step_size: float,
    num_steps: int,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Unadjusted Langevin dynamics targeting q(x_t) at one fixed code timestep ``t``.

    Runs ``num_steps`` steps x <- x + eps s_theta(x, t) + sqrt(2 eps) z from the starting points
    ``x`` [N, ...] with the fixed step size ``step_size`` = eps and the score of
    :func:`score_from_eps`. No Metropolis-Hastings correction: the chain is biased (its stationary
    law is not q(x_t); see :func:`ula_gaussian_variance`) and needs many steps to move mass between
    separated modes. Returns ``{"sample": x after num_steps}`` and, with ``record_every=k``,
    ``"steps"`` (0, k, 2k, ..., the step counts recorded) and ``"trajectory"`` [K, N, ...].
    """
    _check_diffusion(diffusion)
    check_tensor("x", x, ndim_min=2)
    t = _check_code_t(diffusion, t)
    eps = _check_positive("step_size", step_size)
    num_steps = _check_count("num_steps", num_steps, 1)
    if record_every is not None:
        record_every = _check_count("record_every", record_every, 1)
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    steps, traj = [], []
    for k in tqdm(range(num_steps), disable=not progress, desc="langevin", leave=False):
        if record_every is not None and k % record_every == 0:
            steps.append(k)
            traj.append(x)
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = langevin_step(x, score_from_eps(diffusion, model, x, tt), eps, z)
    out = {"sample": x}
    if record_every is not None:
        if num_steps % record_every == 0:
            steps.append(num_steps)
            traj.append(x)
        out["steps"] = torch.tensor(steps, dtype=torch.long)
        out["trajectory"] = torch.stack(traj)
    return out


def corrector_step_size(
    score: torch.Tensor, noise: torch.Tensor, snr: float, alpha, *, norm: str = "sample"
) -> torch.Tensor:
    """The Langevin corrector's step size eps = 2 alpha (r ||z|| / ||s||)^2 (Song et al. 2021,
    Algorithm 5), per example: float64 tensor [N].

    ``score`` s and ``noise`` z are [N, ...]; ``snr`` is the target signal-to-noise ratio r of the
    step: this eps makes the drift and the noise of the step stand in the ratio
    ||eps s|| / ||sqrt(2 eps) z|| = r sqrt(alpha). ``alpha`` is alpha_t = 1 - beta_t of the level
    (a number or a tensor [N]). ``norm="sample"`` takes the norms of each example, as Algorithm 5
    is written; ``norm="batch"`` uses the batch means of the norms for every example, as Song et
    al.'s released code does (the step then depends on the other examples in the batch). In low
    dimension the per-sample rule is heavy-tailed: ||s|| can be near 0 (near a mode), which makes
    eps huge; in high dimension both norms concentrate and the two rules agree. A zero score
    makes the rule undefined: ValueError.
    """
    check_tensor("score", score, ndim_min=2)
    check_like("noise", noise, "score", score)
    r = _check_positive("snr", snr)
    if norm not in STEP_NORMS:
        raise ValueError(f"norm must be one of {STEP_NORMS}, got {norm!r}")
    if isinstance(alpha, torch.Tensor):
        check_tensor("alpha", alpha, ndim=1)
        if alpha.shape[0] != score.shape[0]:
            raise ValueError(f"alpha must be a number or a tensor [N] = [{score.shape[0]}], got {tuple(alpha.shape)}")
        a = alpha.detach().to(device=score.device, dtype=torch.float64)
        if bool(((a <= 0) | (a > 1)).any()):
            raise ValueError("alpha must lie in (0, 1]")
    else:
        a = _check_positive("alpha", alpha)
        if a > 1:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}")
    g_norm = _flat_norm(score.detach().to(torch.float64))
    z_norm = _flat_norm(noise.detach().to(torch.float64))
    if norm == "batch":
        g_norm = g_norm.mean().expand_as(g_norm)
        z_norm = z_norm.mean().expand_as(z_norm)
    if bool((g_norm == 0).any()):
        raise ValueError(
            "the score is zero for some example: the step-size rule 2 alpha (r ||z|| / ||s||)^2 is undefined"
        )
    return 2.0 * a * (r * z_norm / g_norm) ** 2


@torch.no_grad()
def pc_sample(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: Sequence[int],
    *,
    snr: float | None = 0.16,
    step_size: float | None = None,
    corrector_steps: int = 1,
    step_norm: str = "sample",
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """The predictor-corrector sampler (Song et al. 2021, Algorithms 3 and 5) on a DDPM.

    From x_T ~ N(0, I) (or ``noise``), for code t = T-1, ..., 0:

    1. corrector: ``corrector_steps`` Langevin steps x <- x + eps s_theta(x, t) + sqrt(2 eps) z at
       the noise level of code t, where x currently lives, with eps from the signal-to-noise rule
       :func:`corrector_step_size` (``snr``, alpha_t = 1 - beta_t; ``step_norm``) or, if
       ``step_size`` is given instead of ``snr``, that fixed eps;
    2. predictor: one step of Algorithm 2 (``diffusion.p_sample``: x_{t-1} = mu_theta + sigma_t z,
       no noise at code t = 0), the "ancestral sampling" predictor of Song et al. 2021.

    This is the order of Song et al.'s released code (corrector, then predictor, at each level),
    equivalent to their Algorithm 3 (predictor, then corrector at the new level) up to one extra
    correction of x_T, and with no correction of the final x_0, whose noise level is zero.
    ``corrector_steps=0`` is exactly Algorithm 2 with the same noise stream (none is drawn for the
    corrector). Each corrector step costs one more network evaluation.

    Returns ``{"sample": x_0 [N, ...], "step_sizes": float64 [T, corrector_steps]}``: the batch
    mean of eps at each level (row t = code t) and corrector step.
    """
    _check_diffusion(diffusion)
    corrector_steps = _check_count("corrector_steps", corrector_steps, 0)
    if (snr is None) == (step_size is None):
        raise ValueError("give exactly one of snr (the step-size rule) and step_size (a fixed step)")
    if snr is not None:
        snr = _check_positive("snr", snr)
    else:
        step_size = _check_positive("step_size", step_size)
    if step_norm not in STEP_NORMS:
        raise ValueError(f"step_norm must be one of {STEP_NORMS}, got {step_norm!r}")
    if noise is not None:
        device, dtype = noise.device, noise.dtype
    x = _initial_noise(shape, noise, generator, device, dtype)
    T = diffusion.num_timesteps
    steps = torch.zeros(T, corrector_steps, dtype=torch.float64)
    for i in tqdm(range(T - 1, -1, -1), disable=not progress, desc="pc", leave=False):
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        for j in range(corrector_steps):
            s = score_from_eps(diffusion, model, x, t)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if snr is not None:
                eps = corrector_step_size(s, z, snr, float(diffusion.alphas[i]), norm=step_norm)
            else:
                eps = torch.full((x.shape[0],), step_size, dtype=torch.float64)
            steps[i, j] = eps.mean() if snr is not None else step_size
            x = langevin_step(x, s, eps.to(x.device), z)
        x = diffusion.p_sample(model, x, t, generator=generator, clip_denoised=clip_denoised)["sample"]
    return {"sample": x, "step_sizes": steps}


def ula_gaussian_variance(
    variance: float, step_size: float, num_steps: int | None = None, initial_variance: float = 1.0
) -> float:
    """Variance of unadjusted Langevin on the Gaussian target N(m, v) (per coordinate), exactly.

    The step x <- x + eps (m - x) / v + sqrt(2 eps) z is linear: x - m <- a (x - m) + sqrt(2 eps) z
    with a = 1 - eps / v, so after k steps from variance v_0 the variance is
    a^(2k) v_0 + 2 eps (1 - a^(2k)) / (1 - a^2), and the stationary one (``num_steps=None``)
    2 eps / (1 - a^2) = v / (1 - eps / (2 v)): larger than v by the factor 1 / (1 - eps / (2 v))
    for every step size, the bias of the unadjusted chain. Needs 0 < eps < 2 v (else it diverges).
    """
    v = _check_positive("variance", variance)
    eps = _check_positive("step_size", step_size)
    if eps >= 2.0 * v:
        raise ValueError(f"unadjusted Langevin diverges on N(m, {v:g}) for step_size >= 2 v = {2 * v:g}, got {eps:g}")
    a2 = (1.0 - eps / v) ** 2
    stationary = 2.0 * eps / (1.0 - a2)
    if num_steps is None:
        return stationary
    k = _check_count("num_steps", num_steps, 0)
    v0 = float(initial_variance)
    if not (math.isfinite(v0) and v0 >= 0):
        raise ValueError(f"initial_variance must be a finite number >= 0, got {initial_variance!r}")
    return a2**k * v0 + stationary * (1.0 - a2**k)
