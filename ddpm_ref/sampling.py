"""Samplers: ancestral sampling (Algorithm 2), DDIM with respacing, and latent interpolation.

- :func:`ancestral_sample` runs Algorithm 2 from x_T ~ N(0, I) (or from any x_t) down to x_0,
  optionally recording x_t and the x0-hat predictions along the way (progressive
  generation, Section 4.3 and Figure 6).
- :class:`SpacedDiffusion` and :func:`space_timesteps` keep a subsequence of the T steps and
  re-derive betas from the kept alphabar values (an extension: Nichol & Dhariwal 2021,
  Song et al. 2021), which makes sampling 20-50x cheaper. Which K steps are kept is a named
  convention (``SPACINGS``: "linspace", "trailing", "leading", "stride"); one that would start the
  sampler more than one stride below T - 1 is refused (:func:`spacing_refusal`).
- :func:`ddim_sample` is the DDIM update (Song, Meng & Ermon 2021; DDIM eq. 12) with its eta
  (:func:`ddim_sigmas`, DDIM eq. 16, refused above :func:`ddim_max_eta`); with eta = 1 on the full
  chain it coincides with ancestral sampling under ``fixedsmall``. :func:`ddim_posterior_mean_variance`
  is DDIM's non-Markovian family (DDIM eq. 7) and :func:`ddim_objective_weights` the weights of
  its objective (DDIM Theorem 1).
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


#: The spacing conventions of :func:`space_timesteps`, by name.
SPACINGS = ("linspace", "trailing", "leading", "stride")


def _round_half_even(num: np.ndarray, den: int) -> np.ndarray:
    """Integers ``num`` / ``den`` (den > 0) rounded to the nearest integer, ties to the even one (as
    ``np.round``), in exact integer arithmetic: no floating-point tie-breaking."""
    q, r = np.divmod(num, den)
    return q + ((2 * r > den) | ((2 * r == den) & (q % 2 == 1)))


def smallest_stride(num_timesteps: int, k: int) -> int | None:
    """improved-diffusion's "ddimK" stride: the smallest integer s >= 1 with exactly ``k`` elements
    in range(0, T, s), or None if no stride gives ``k``.

    len(range(0, T, s)) = ceil(T / s) decreases with s, and ceil(T / s) = k exactly when
    T / k <= s < T / (k - 1); so s = ceil(T / k) if (k - 1) * ceil(T / k) < T, else none.
    """
    T, k = int(num_timesteps), int(k)
    s = -(-T // k)
    return s if (k - 1) * s < T else None


def _convention(T: int, k: int, spacing: str) -> tuple[list[int], float]:
    """The kept steps of a convention (ascending) and its stride (the nominal gap between them)."""
    if spacing == "linspace":
        if k == 1:
            return [0], float(T)
        return _round_half_even((T - 1) * np.arange(k, dtype=np.int64), k - 1).tolist(), (T - 1) / (k - 1)
    if spacing == "trailing":
        return (_round_half_even(T * np.arange(1, k + 1, dtype=np.int64), k) - 1).tolist(), T / k
    if spacing == "leading":
        return list(range(0, k * (T // k), T // k)), float(T // k)
    s = smallest_stride(T, k)
    if s is None:
        return [], 0.0
    return list(range(0, T, s)), float(s)


def spacing_refusal(num_timesteps: int, k: int, spacing: str) -> str | None:
    """Why :func:`space_timesteps` refuses to keep ``k`` of ``num_timesteps`` steps with ``spacing``
    (a phrase naming neither Python arguments nor CLI flags), or None if it does not.

    Refused: a ``"stride"`` K that no integer stride gives; a chain whose largest kept step lies more
    than one stride below T - 1 (``"leading"`` when T mod K > 1: the sampler would start from
    N(0, I) at a step that is not yet pure noise); and K = 1 for the conventions that pin step 0
    (they would keep t = 0 alone, the bottom of the chain), unless T = 1.
    """
    T, k = int(num_timesteps), int(k)
    if spacing not in SPACINGS:
        return f"unknown spacing {spacing!r} (known: {', '.join(SPACINGS)})"
    if not 1 <= k <= T:
        return f"cannot keep {k} of {T} timesteps"
    return _refusal(T, k, *_convention(T, k, spacing))


def _refusal(T: int, k: int, steps: list[int], stride: float) -> str | None:
    if not steps:
        s = -(-T // k)  # >= 2 here: stride s keeps fewer than K steps, stride s - 1 more
        return (f"no integer stride keeps exactly {k} of {T} steps (stride {s - 1} keeps "
                f"{len(range(0, T, s - 1))}, stride {s} keeps {len(range(0, T, s))})")
    if k == 1 and T > 1 and steps == [0]:
        return "a single kept step at t = 0 is the bottom of the chain, not its top"
    gap = (T - 1) - steps[-1]
    if gap > stride:
        return (f"the kept steps end at t = {steps[-1]}, {gap} steps below the top of the chain "
                f"(t = {T - 1}), more than one stride ({stride:g}): sampling would start from N(0, I) "
                "where x_t is not yet pure noise")
    return None


def space_timesteps(
    num_timesteps: int,
    spec: int | str | Sequence[int],
    spacing: str | None = None,
    *,
    allow_short: bool = False,
) -> list[int]:
    """Choose which of the code timesteps 0..T-1 a respaced sampler keeps (ascending).

    ``spec`` is the number of steps K (an int, with a ``spacing``), the string ``"ddimK"``
    (improved-diffusion's name for the ``"stride"`` rule), or a sequence of timesteps kept as given
    (distinct, in [0, T)). The conventions for an int K (code timesteps; "round" is exact, ties to
    even as ``np.round``):

    ============  ===================================================  ===========  ============
    spacing       kept steps                                           pins         stride h
    ============  ===================================================  ===========  ============
    ``linspace``  round((T - 1) i / (K - 1)), i = 0..K-1 (default)     0 and T - 1  (T-1)/(K-1)
    ``trailing``  round(T j / K) - 1, j = 1..K (Lin et al. 2024)        T - 1        T / K
    ``leading``   j * (T // K), j = 0..K-1 (DDIM's stride; diffusers)   0            T // K
    ``stride``    range(0, T, s), s the smallest stride with exactly K  0            s
                  elements (improved-diffusion's ``"ddimK"``)
    ============  ===================================================  ===========  ============

    Each gives exactly K distinct steps in [0, T), for every K in 1..T it accepts. ``trailing``
    accepts every K; ``linspace`` every K >= 2. ``leading`` ends at (K - 1)(T // K), i.e.
    T // K + (T mod K) - 1 below T - 1, so it stops more than one stride short of the top whenever
    T mod K > 1 (K = 600 of 1000: it ends at t = 599): refused then, because the sampler starts
    from N(0, I) at the largest kept step. ``stride`` always ends within one stride of T - 1, but
    no stride gives some K (600 of 1000): refused. K = 1 is refused for the conventions pinning 0.
    :func:`spacing_refusal` says why a choice is refused; ``allow_short=True`` keeps a chain that
    stops short anyway (to reproduce diffusers' "leading" at any K, or this function's pre-fix
    "ddimK", which was leading).
    """
    T = int(num_timesteps)
    if T < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if isinstance(spec, str):
        if not spec.startswith("ddim") or not spec[4:].isdigit():
            raise ValueError(f"string spec must look like 'ddim50', got {spec!r}")
        if spacing not in (None, "stride"):
            raise ValueError(f"spec {spec!r} is the 'stride' spacing; pass K = {spec[4:]} as an int to use {spacing!r}")
        k, spacing = int(spec[4:]), "stride"
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        k, spacing = int(spec), "linspace" if spacing is None else spacing
    else:
        if spacing is not None:
            raise ValueError("a spacing applies to a number of steps K, not to a list of timesteps")
        steps = sorted(int(s) for s in spec)
        if not steps or len(set(steps)) != len(steps) or steps[0] < 0 or steps[-1] >= T:
            raise ValueError(f"timesteps must be distinct integers in [0, {T}), got {spec!r}")
        return steps
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if not 1 <= k <= T:
        raise ValueError(f"cannot keep {k} of {T} timesteps")
    steps, stride = _convention(T, k, spacing)
    why = _refusal(T, k, steps, stride)
    if why is not None and not (allow_short and steps):
        use = " or ".join(repr(s) for s in ("trailing", "linspace") if spacing_refusal(T, k, s) is None)
        hint = "; or allow_short=True to keep it anyway" if steps else ""
        raise ValueError(f"spacing {spacing!r} with K = {k} of T = {T}: {why}; use spacing {use} "
                         f"(ending at t = T - 1){hint}")
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
    diffusion: GaussianDiffusion,
    spec: int | str | Sequence[int],
    spacing: str | None = None,
    *,
    allow_short: bool = False,
) -> SpacedDiffusion:
    """A :class:`SpacedDiffusion` keeping the steps ``spec`` of ``diffusion`` (K steps with
    ``spacing``, ``"ddimK"`` or a list; see :func:`space_timesteps`), with the same
    mean/variance/loss types."""
    if isinstance(diffusion, SpacedDiffusion):
        raise ValueError("respace a base GaussianDiffusion, not an already respaced one")
    return SpacedDiffusion(
        diffusion.betas,
        space_timesteps(diffusion.num_timesteps, spec, spacing, allow_short=allow_short),
        model_mean_type=diffusion.model_mean_type,
        model_var_type=diffusion.model_var_type,
        loss_type=diffusion.loss_type,
        hybrid_lambda=diffusion.hybrid_lambda,
    )


def ddim_max_eta(diffusion: GaussianDiffusion) -> float:
    """The largest eta for which DDIM's step (DDIM eq. 12) is defined on ``diffusion``.

    sigma_t(eta)^2 = eta^2 beta~_t (DDIM eq. 16) must not exceed 1 - alphabar_{t-1}, the variance
    the step shares between the eps-direction and the noise; with beta~_t = beta_t (1 - alphabar_{t-1})
    / (1 - alphabar_t) that is eta^2 <= (1 - alphabar_t) / beta_t for every paper t >= 2 (at t = 1,
    1 - alphabar_0 = 0 and sigma_1 = 0 for every eta). The bound is > 1 (1 - alphabar_t > beta_t
    for t >= 2), so DDPM's eta = 1 is always allowed; infinite for T = 1.
    """
    if diffusion.num_timesteps < 2:
        return float("inf")
    return float(np.sqrt(np.min(diffusion.one_minus_alphas_cumprod[1:] / diffusion.betas[1:])))


def ddim_sigmas(diffusion: GaussianDiffusion, eta: float) -> np.ndarray:
    """sigma_t(eta) of DDIM eq. 16, float64 [T] (code timesteps of ``diffusion``):

    sigma_t = eta sqrt((1 - alphabar_{t-1}) / (1 - alphabar_t)) sqrt(1 - alphabar_t / alphabar_{t-1})
            = eta sqrt(beta~_t),

    (1 - alphabar_t / alphabar_{t-1} is beta_t, also for a respaced process), so eta = 1 gives DDPM's
    posterior variance beta~_t and eta = 0 a deterministic step. Raises ValueError for a
    negative or non-finite eta, and for an eta above :func:`ddim_max_eta`, for which
    sigma_t^2 > 1 - alphabar_{t-1} at some t and the step of DDIM eq. 12 is not defined (no longer
    DDIM: the coefficient sqrt(1 - alphabar_{t-1} - sigma_t^2) would be imaginary).
    """
    eta = float(eta)
    if not (np.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be >= 0 and finite, got {eta}")
    # sigma_t^2 <= 1 - alphabar_{t-1}  <=>  1 - eta^2 beta_t / (1 - alphabar_t) >= 0 (for t >= 1, code)
    room = 1.0 - eta**2 * diffusion.betas[1:] / diffusion.one_minus_alphas_cumprod[1:]
    if room.size and room.min() < -1e-12:  # beyond float64 rounding of the bound itself
        t = int(np.argmin(room)) + 1
        raise ValueError(
            f"eta = {eta:g} is too large for DDIM on this {diffusion.num_timesteps}-step process: "
            f"sigma_t^2 = eta^2 beta~_t would exceed 1 - alphabar_{{t-1}} at code t = {t}, where the step "
            f"has no real coefficient sqrt(1 - alphabar_{{t-1}} - sigma_t^2); the largest eta here is "
            f"{ddim_max_eta(diffusion):.6g}"
        )
    return eta * np.sqrt(diffusion.posterior_variance)


def _ddim_tables(diffusion: GaussianDiffusion, sigmas) -> tuple[np.ndarray, np.ndarray]:
    """(sigma_t, sqrt(1 - alphabar_{t-1} - sigma_t^2)) as float64 [T] for a sigma array; the second
    is 0 at code t = 0 (1 - alphabar_0 = 0: the step returns x0-hat and sigma_0 is the decoder's)."""
    sig = np.asarray(sigmas, dtype=np.float64)
    T = diffusion.num_timesteps
    if sig.shape != (T,) or not np.all(np.isfinite(sig)) or np.any(sig < 0):
        raise ValueError(f"sigmas must be {T} finite numbers >= 0, got shape {sig.shape}")
    omab_prev = np.append(0.0, diffusion.one_minus_alphas_cumprod[:-1])
    room = omab_prev[1:] - sig[1:] ** 2
    if room.size and np.any(room < -1e-12 * omab_prev[1:]):
        t = int(np.argmin(room / omab_prev[1:])) + 1
        raise ValueError(f"sigma_t^2 must not exceed 1 - alphabar_{{t-1}} (DDIM eq. 7); it does at code t = {t}")
    return sig, np.append(0.0, np.sqrt(np.clip(room, 0.0, None)))


def _table(arr: np.ndarray, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    out = torch.as_tensor(arr, dtype=dtype, device=t.device)[t].to(x.dtype)
    return out.reshape((t.shape[0],) + (1,) * (x.ndim - 1))


def ddim_posterior_mean_variance(
    diffusion: GaussianDiffusion,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    sigmas,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q_sigma(x_{t-1} | x_t, x_0) of the non-Markovian family of DDIM eq. 6-7:

    N( sqrt(alphabar_{t-1}) x_0 + sqrt(1 - alphabar_{t-1} - sigma_t^2) (x_t - sqrt(alphabar_t) x_0)
       / sqrt(1 - alphabar_t),  sigma_t^2 I ).

    Chained down from q_sigma(x_T | x_0) = N(sqrt(alphabar_T) x_0, (1 - alphabar_T) I), its marginals
    q_sigma(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I) are the forward process's for every
    sigma (DDIM's Lemma 1). ``sigmas``: float64 [T] (:func:`ddim_sigmas`, or any sigma_t >= 0 with
    sigma_t^2 <= 1 - alphabar_{t-1}); sigma_t = sqrt(beta~_t) (eta = 1) gives DDPM's forward posterior
    q(x_{t-1} | x_t, x_0). ``x_start``, ``x_t``: [N, ...]; ``t``: code timesteps [N].
    Returns (mean [N, ...], variance [N, 1, ...]); at code t = 0 the mean is x_0 (alphabar_0 = 1).
    """
    diffusion._check_xt(x_t, t, "x_t")
    check_like("x_start", x_start, "x_t", x_t)
    check_tensor("x_start", x_start)
    sig, direction = _ddim_tables(diffusion, sigmas)
    eps = (x_t - diffusion.extract("sqrt_alphas_cumprod", t, x_t) * x_start) / diffusion.extract(
        "sqrt_one_minus_alphas_cumprod", t, x_t)
    mean = _table(np.sqrt(diffusion.alphas_cumprod_prev), t, x_t) * x_start + _table(direction, t, x_t) * eps
    return mean, _table(sig**2, t, x_t)


def ddim_objective_weights(diffusion: GaussianDiffusion, sigmas) -> np.ndarray:
    """The weights gamma_t of DDIM Theorem 1, float64 [T] (per dimension, code timesteps).

    DDIM's variational objective for q_sigma (DDIM eq. 11), with p_theta(x_{t-1} | x_t) =
    q_sigma(x_{t-1} | x_t, x0-hat) for t >= 2 and N(x0-hat, sigma_1^2 I) for t = 1 (DDIM eq. 10), is
    J_sigma = sum_t gamma_t E ||eps - eps_theta(sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, t)||^2 + C
    with C = E KL(q(x_T | x_0) || N(0, I)) + (d/2) log(2 pi sigma_1^2): the DDPM objective L_gamma up to
    per-t weights and a constant, so one trained eps-network serves every sigma (eta). Each term is
    a KL between Gaussians of equal variance sigma_t^2 whose means differ by d_t (x_0 - x0-hat), with
    x_0 - x0-hat = sqrt((1 - alphabar_t) / alphabar_t) (eps_theta - eps), so

    gamma_t = d_t^2 (1 - alphabar_t) / (2 sigma_t^2 alphabar_t),
    d_t = sqrt(alphabar_{t-1}) - sqrt(1 - alphabar_{t-1} - sigma_t^2) sqrt(alphabar_t / (1 - alphabar_t))
        = (alphabar_{t-1} beta_t + sigma_t^2 alphabar_t) / ((1 - alphabar_t) (sqrt(alphabar_{t-1})
          + sqrt(1 - alphabar_{t-1} - sigma_t^2) sqrt(alphabar_t / (1 - alphabar_t))))

    (the second form, free of cancellation, is the one computed; d_1 = 1). With eta = 1 it is the
    paper's weight of the eps-form bound term, beta_t^2 / (2 sigma_t^2 alpha_t (1 - alphabar_t)).
    ``sigmas``: float64 [T], all > 0 (the theorem's hypothesis; sigma_1 is the decoder's standard deviation).
    """
    sig, direction = _ddim_tables(diffusion, sigmas)
    if np.any(sig <= 0):
        raise ValueError("DDIM Theorem 1 needs every sigma_t > 0 (sigma_1 is the decoder's standard deviation)")
    abar, abar_prev = diffusion.alphas_cumprod, diffusion.alphas_cumprod_prev
    omab = diffusion.one_minus_alphas_cumprod
    d = (abar_prev * diffusion.betas + sig**2 * abar * (np.arange(diffusion.num_timesteps) > 0)) / (
        omab * (np.sqrt(abar_prev) + direction * np.sqrt(abar / omab)))
    return d**2 * omab / (2.0 * sig**2 * abar)


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
    """One DDIM update from x_t to x_{t-1} of ``diffusion`` (DDIM eq. 12, with sigma_t(eta) of DDIM eq. 16).

    x0-hat from the model (clipped to [-1, 1] with ``clip_denoised``), then a draw from
    q_sigma(x_{t-1} | x_t, x0-hat) (DDIM eq. 10 and 7, :func:`ddim_posterior_mean_variance`):
    x_{t-1} = sqrt(alphabar_{t-1}) x0-hat + sqrt(1 - alphabar_{t-1} - sigma_t^2) eps-hat + sigma_t z,
    with eps-hat re-derived from the clipped x0-hat and x_t; no noise at t = 0. An eta above
    :func:`ddim_max_eta` is refused (ValueError), not clamped. ``x``: [N, ...]; ``t``: code timesteps [N].
    """
    sigmas = ddim_sigmas(diffusion, eta)
    out = diffusion.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
    x0 = out["pred_xstart"]
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        check_like("noise", noise, "x", x)
    mean, var = ddim_posterior_mean_variance(diffusion, x0, x, t, sigmas)
    nonzero = (t != 0).to(x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return {"sample": mean + nonzero * torch.sqrt(var) * noise, "pred_xstart": x0}


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
    """Run :func:`ddim_step` (DDIM eq. 12) over every timestep of ``diffusion`` (use :func:`respace`
    first to sample with K steps). eta = 0 is deterministic given x_T; an eta above
    :func:`ddim_max_eta` is refused before any step. Returns ``{"sample": x_0}``."""
    ddim_sigmas(diffusion, eta)  # refuse a bad eta before drawing anything
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
