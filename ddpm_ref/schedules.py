"""Variance schedules beta_1..beta_T, computed in float64.

The paper (Section 4) fixes T = 1000 and a linear schedule from beta_1 = 1e-4 to
beta_T = 0.02. The original code also ships ``quad``, ``const``, ``jsd``,
``warmup10`` and ``warmup50``; ``cosine`` (Nichol & Dhariwal 2021, eq. 17) is an
extension. Every schedule is returned as a float64 NumPy array of length T whose
entry ``betas[t]`` (code index t = 0..T-1) is the paper's beta_{t+1}.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("linear", "quad", "const", "jsd", "warmup10", "warmup50", "cosine")


def _check_t(num_diffusion_timesteps: int) -> int:
    if isinstance(num_diffusion_timesteps, bool) or not isinstance(
        num_diffusion_timesteps, (int, np.integer)
    ):
        raise ValueError(
            "num_diffusion_timesteps must be a positive int, got "
            f"{num_diffusion_timesteps!r} ({type(num_diffusion_timesteps).__name__})"
        )
    if num_diffusion_timesteps < 1:
        raise ValueError(f"num_diffusion_timesteps must be >= 1, got {num_diffusion_timesteps}")
    return int(num_diffusion_timesteps)


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and 0.0 < v < 1.0):
            raise ValueError(f"{name} must be a finite number in (0, 1), got {v!r}")
    if beta_start > beta_end:
        raise ValueError(f"beta_start ({beta_start}) must not exceed beta_end ({beta_end})")


def cosine_alpha_bar(t: np.ndarray | float, s: float = 0.008) -> np.ndarray:
    """The cosine schedule's alphabar as a function of continuous time t in [0, 1].

    alphabar(t) = cos^2(((t + s) / (1 + s)) * pi / 2) / cos^2((s / (1 + s)) * pi / 2)
    (Nichol & Dhariwal 2021, eq. 17). Returned in float64.
    """
    t = np.asarray(t, dtype=np.float64)
    f = np.cos((t + s) / (1.0 + s) * np.pi / 2.0) ** 2
    f0 = math.cos(s / (1.0 + s) * math.pi / 2.0) ** 2
    return f / f0


def get_beta_schedule(
    name: str,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    num_diffusion_timesteps: int = 1000,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> np.ndarray:
    """Return betas (float64, shape [T]) for a named schedule.

    Schedules of the original DDPM code (``diffusion_utils_2.get_beta_schedule``):

    - ``linear``: beta_t evenly spaced from ``beta_start`` to ``beta_end`` (the paper's).
    - ``quad``: sqrt(beta_t) evenly spaced from sqrt(beta_start) to sqrt(beta_end).
    - ``const``: beta_t = beta_end for all t.
    - ``jsd``: beta_t = 1/T, 1/(T-1), ..., 1 (i.e. 1 / linspace(T, 1, T)).
    - ``warmup10`` / ``warmup50``: beta_end everywhere except the first 10% / 50% of the
      steps, which rise linearly from beta_start to beta_end.

    Extension: ``cosine`` (Nichol & Dhariwal 2021): beta_t = min(1 - alphabar(t/T) /
    alphabar((t-1)/T), max_beta) with ``cosine_s`` as the offset s; ``beta_start`` and
    ``beta_end`` are ignored.

    Raises ``ValueError`` for an unknown name, a non-positive T or betas outside (0, 1).
    """
    T = _check_t(num_diffusion_timesteps)
    if name == "cosine":
        if not (0.0 < max_beta < 1.0):
            raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
        steps = np.arange(T + 1, dtype=np.float64) / T
        ab = cosine_alpha_bar(steps, cosine_s)
        betas = np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)
    elif name in SCHEDULES:
        _check_beta_range(beta_start, beta_end)
        if name == "linear":
            betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
        elif name == "quad":
            betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
        elif name == "const":
            betas = np.full(T, beta_end, dtype=np.float64)
        elif name == "jsd":
            betas = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
        else:  # warmup10 / warmup50
            frac = 0.1 if name == "warmup10" else 0.5
            betas = np.full(T, beta_end, dtype=np.float64)
            n_warm = int(T * frac)
            betas[:n_warm] = np.linspace(beta_start, beta_end, n_warm, dtype=np.float64)
    else:
        raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")
    assert betas.shape == (T,) and betas.dtype == np.float64
    if not (np.all(betas > 0) and np.all(betas <= 1)):
        raise ValueError(f"schedule {name!r} produced betas outside (0, 1]")
    return betas
