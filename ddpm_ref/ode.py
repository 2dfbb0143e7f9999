"""The probability-flow ODE of a DDPM: deterministic sampling and exact log-likelihood.

Continuous time (Song et al. 2021)
----------------------------------
With beta_i = beta(i / T) / T, the forward chain of eq. 2 tends, as T -> infinity, to the
variance-preserving SDE on s in [0, 1] (the VP SDE, Song et al. 2021, eq. 11)::

    dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw,

whose marginals given x_0 are eq. 4's with alphabar(s) = exp(-int_0^s beta(u) du). Its reverse-time SDE
(Song et al. 2021, eq. 6, after Anderson 1982) and its probability-flow ODE (Song et al. 2021, eq. 13)
have the same marginals q_s; for the VP SDE (f = -1/2 beta x, g^2 = beta) the ODE is::

    dx/ds = -1/2 beta(s) [x + grad log q_s(x)],    grad log q_s(x) = -eps(x, s) / sqrt(1 - alphabar(s)),

the score of an eps-prediction network (Tweedie's formula; Song et al. 2021, Appendix B). Integrated
from x(1) ~ N(0, I) (eq. 1's prior p(x_T)) down to s ~ 0 it is a deterministic sampler; DDIM with
eta = 0 is its Euler discretisation in the variable sqrt((1 - alphabar) / alphabar) (DDIM eq. 14).
Integrated upward from a point x(s_0), the instantaneous change of variables (Chen et al. 2018;
Song et al. 2021, Appendix D.2, eq. 39)::

    log q_{s_0}(x(s_0)) = log p_1(x(1)) + int_{s_0}^1 div f(x(s), s) ds,   f = dx/ds,

gives the exact log-likelihood of the flow's model; the divergence is an exact trace (D vector-Jacobian
products; low dimension) or Hutchinson's estimator E_v[v^T (df/dx) v] (one product per probe v with
E[v v^T] = I; Hutchinson 1990), with the standard error of the mean over probes.

The solver: scipy's ``solve_ivp``
---------------------------------
Both directions call :func:`scipy.integrate.solve_ivp` (explicit Runge-Kutta with error control,
Dormand-Prince RK45 by default, the method of Song et al.'s own code) on the whole batch flattened into
one float64 state, with ``rtol`` and ``atol``. ``torchdiffeq`` 0.2.5 would install beside the pinned
torch (pip resolves it against the installed torch, pulling no other), but it adds a dependency for no
capability needed here: scipy is already pinned, the per-step cost is the network, not the
solver, and the float64 state keeps the accumulated log-density accurate whatever dtype the network
runs in. The price is a host round trip of the state per evaluation (a few MB for a batch of
CIFAR-10 images), small next to a U-Net forward pass on a GPU. One error-controlled solve per batch means
the step sizes (hence the samples' accuracy) depend on which points share a batch, as in Song et al.

Time and the discrete network
-----------------------------
:class:`VPSchedule` gives alphabar(s) and beta(s) = -d log alphabar / ds. ``VPSchedule.linear`` is
Song et al.'s beta(s) = beta_min + s (beta_max - beta_min) (0.1 and 20 are the limit of the paper's
T = 1000, 1e-4..0.02). ``VPSchedule.from_diffusion`` interpolates log alphabar linearly between the
nodes s_i = (i + 1) / T, where it equals ``diffusion.alphas_cumprod[i]`` exactly (so the ODE's marginal
at s_i is eq. 4's at the paper's t = i + 1). A network trained at T discrete steps only accepts integer
timesteps, so :class:`NetworkEps` evaluates it at the node nearest to s: a drift that is piecewise
constant in the network's time input, O(1/T) away from a continuous-time network's.

Everything is counted: each evaluation of eps (one batched forward pass of the network) is one
network function evaluation (NFE).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ._validate import check_tensor
from .diffusion import GaussianDiffusion, Model

__all__ = [
    "VPSchedule",
    "NetworkEps",
    "probability_flow_drift",
    "exact_divergence",
    "hutchinson_divergence",
    "make_probes",
    "solve_flow",
    "flow_log_likelihood",
    "ode_sample",
    "ode_log_likelihood",
]

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]
"""An eps-predictor in continuous time: ``eps_fn(x [N, ...], s) -> [N, ...]`` with s in [0, 1]."""

_SOLVERS = ("RK45", "RK23", "DOP853")
_LOG_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------------------------------ schedule
class VPSchedule:
    """alphabar(s), beta(s) of a variance-preserving SDE on s in [0, 1] (Song et al. 2021, eq. 11).

    ``alphabar(s) = exp(log_alpha_bar(s))`` with log alphabar(0) = 0, and beta(s) = -d log alphabar / ds,
    so that q(x_s | x_0) = N(sqrt(alphabar(s)) x_0, (1 - alphabar(s)) I) (eq. 4 in continuous time).
    ``s_min`` is the smallest time at which an eps-predictor is defined (0 for an exact score; 1/T for
    a network trained on T steps). Build with :meth:`linear` or :meth:`from_diffusion`. All values are
    float64; the methods accept floats or arrays.
    """

    def __init__(self, log_alpha_bar, beta, *, s_min: float = 0.0, name: str = "custom", diffusion=None):
        self._log_ab, self._beta = log_alpha_bar, beta
        self.s_min, self.name, self.diffusion = float(s_min), name, diffusion

    def __repr__(self) -> str:
        return f"VPSchedule({self.name}, s_min={self.s_min:g})"

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0, s_min: float = 1e-5) -> VPSchedule:
        """Song et al.'s VP SDE: beta(s) = beta_min + s (beta_max - beta_min), log alphabar(s) =
        -(beta_min s + (beta_max - beta_min) s^2 / 2). The defaults are T * (1e-4, 0.02) for T = 1000:
        the limit of the paper's schedule with beta_i = beta(i / T) / T. ``s_min`` > 0 (Song et al.'s
        1e-5 for likelihoods): at s = 0 the score is eps / sqrt(1 - alphabar) = 0 / 0."""
        _check_time("s_min", s_min)
        if not 0 < s_min < 1:
            raise ValueError(f"s_min must lie in (0, 1), got {s_min}")
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if beta_min > beta_max:
            raise ValueError(f"beta_min ({beta_min}) must not exceed beta_max ({beta_max})")
        b0, b1 = float(beta_min), float(beta_max)
        return cls(lambda s: -(b0 * s + 0.5 * (b1 - b0) * s * s),
                   lambda s: b0 + s * (b1 - b0) + 0.0 * s, s_min=s_min, name=f"linear({b0:g}, {b1:g})")

    @classmethod
    def from_diffusion(cls, diffusion: GaussianDiffusion) -> VPSchedule:
        """The continuous schedule through a discrete one: log alphabar(s) is the cubic spline through the
        nodes s_i = (i + 1) / T (code timestep i, the paper's t = i + 1), where alphabar(s_i) =
        ``diffusion.alphas_cumprod[i]`` exactly, and alphabar(0) = 1 (the monotone PCHIP interpolant
        instead if the spline's beta would dip to 0 somewhere). So beta(s) > 0 is smooth (an
        error-controlled solver sees no jumps, which a piecewise-constant beta would give it at every
        node) and its average over (i / T, (i + 1) / T] is -T log(1 - beta_{i+1}) (-> the paper's
        T beta_{i+1} as beta -> 0). ``s_min`` = 1 / T."""
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
        from scipy.interpolate import CubicSpline, PchipInterpolator

        if not diffusion.alphas_cumprod[-1] > 0:
            raise ValueError("the schedule reaches alphabar_T = 0 (a beta of 1): log alphabar, the score and the "
                             "ODE are undefined there; use a schedule with every beta < 1")
        T = diffusion.num_timesteps
        nodes = np.arange(T + 1, dtype=np.float64) / T
        log_ab = np.append(0.0, np.cumsum(np.log1p(-diffusion.betas)))
        spline = CubicSpline(nodes, log_ab)  # C^2: beta(s) smooth between nodes, no kinks for the solver
        slope = spline.derivative()
        if not (-slope(np.linspace(0.0, 1.0, 16 * T + 1))).min() > 0:  # an overshoot: fall back to monotone
            spline = PchipInterpolator(nodes, log_ab)  # C^1, beta >= 0
            slope = spline.derivative()

        def log_alpha_bar(s):
            return spline(np.clip(s, 0.0, 1.0))

        def beta(s):
            return -slope(np.clip(s, 0.0, 1.0))

        return cls(log_alpha_bar, beta, s_min=1.0 / T, name=f"from_diffusion(T={T})", diffusion=diffusion)

    def log_alpha_bar(self, s):
        """log alphabar(s) (float64)."""
        return np.asarray(self._log_ab(np.asarray(s, dtype=np.float64)), dtype=np.float64)[()]

    def alpha_bar(self, s):
        """alphabar(s) = exp(-int_0^s beta) (float64)."""
        return np.exp(self.log_alpha_bar(s))

    def one_minus_alpha_bar(self, s):
        """1 - alphabar(s), computed as -expm1(log alphabar(s)) (no cancellation at small s)."""
        return -np.expm1(self.log_alpha_bar(s))

    def beta(self, s):
        """beta(s) = -d log alphabar(s) / ds (float64)."""
        return np.asarray(self._beta(np.asarray(s, dtype=np.float64)), dtype=np.float64)[()]

    def snr(self, s):
        """SNR(s) = alphabar(s) / (1 - alphabar(s)) (Kingma et al. 2021: the continuous-time bound depends on
        the schedule only through the endpoints of the SNR, SNR(s_min) and SNR(1))."""
        return self.alpha_bar(s) / self.one_minus_alpha_bar(s)

    def timestep(self, s: float) -> int:
        """The code timestep of a discrete schedule (:meth:`from_diffusion`) nearest to time s:
        round(s T) - 1, clamped to [0, T - 1]."""
        if self.diffusion is None:
            raise ValueError(f"{self!r} is not built from a discrete diffusion: it has no code timesteps")
        T = self.diffusion.num_timesteps
        return int(min(max(int(round(float(s) * T)) - 1, 0), T - 1))


def _check_schedule(schedule):
    if not isinstance(schedule, VPSchedule):
        raise ValueError(f"schedule must be a VPSchedule, got {type(schedule).__name__}")


def _check_time(name: str, s, lo: float = 0.0) -> float:
    if isinstance(s, bool) or not isinstance(s, (int, float, np.floating)) or not math.isfinite(s):
        raise ValueError(f"{name} must be a finite number, got {s!r}")
    if not lo <= float(s) <= 1.0:
        raise ValueError(f"{name} must lie in [{lo:g}, 1], got {s}")
    return float(s)


def _check_tol(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return float(v)


# ------------------------------------------------------------------------------------ the network
class NetworkEps:
    """A DDPM network as a continuous-time eps-predictor ``eps_fn(x, s)``, counting its evaluations.

    At time s the network is called at the nearest code timestep of ``diffusion``
    (:meth:`VPSchedule.timestep`; through ``diffusion.call_model``, so a respaced diffusion maps its
    indices first). Its output becomes eps: ``"eps"`` models directly; ``"xstart"`` models through
    eq. 4 solved for eps at that timestep (``predict_eps_from_xstart``). A learned variance (the
    second half of the channels) is checked for shape and ignored: the ODE has no variance.
    ``"xprev"`` models are refused: their output is the mean of one discrete reverse step, which
    gives a score only through that step's size. ``calls`` counts network evaluations.

    ``clip_denoised``: clip x0-hat to [-1, 1] and re-derive eps from it, as DDIM and Algorithm 2's
    original implementation do: the flow of the clipped denoiser, which keeps a weak model's samples in
    the data range. Off (the default) it is the probability-flow ODE itself, as a likelihood needs.
    """

    def __init__(self, diffusion: GaussianDiffusion, model: Model, *, clip_denoised: bool = False):
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
        if not callable(model):
            raise ValueError(f"model must be callable model(x, t), got {type(model).__name__}")
        if diffusion.model_mean_type == "xprev":
            raise ValueError(
                "the probability-flow ODE needs eps (or x0) from the network, but model_mean_type 'xprev' "
                "predicts the mean of one discrete reverse step; use an 'eps' or 'xstart' model"
            )
        self.diffusion, self.model, self.clip_denoised = diffusion, model, bool(clip_denoised)
        self.schedule = VPSchedule.from_diffusion(diffusion)
        self.calls = 0

    def __call__(self, x: torch.Tensor, s: float) -> torch.Tensor:
        d = self.diffusion
        t = torch.full((x.shape[0],), self.schedule.timestep(s), dtype=torch.long, device=x.device)
        out, _ = d._split_output(d.call_model(self.model, x, t), x)  # variance half (if any) dropped
        self.calls += 1
        if self.clip_denoised:
            x0 = out if d.model_mean_type == "xstart" else d.predict_xstart_from_eps(x, t, out)
            return d.predict_eps_from_xstart(x, t, x0.clamp(-1.0, 1.0))
        if d.model_mean_type == "xstart":
            return d.predict_eps_from_xstart(x, t, out)
        return out


# ------------------------------------------------------------------------------------ the drift
def probability_flow_drift(schedule: VPSchedule, eps: torch.Tensor, x: torch.Tensor, s: float) -> torch.Tensor:
    """dx/ds of the probability-flow ODE of the VP SDE (Song et al. 2021, eq. 13 with eq. 11's f, g):

        f(x, s) = -1/2 beta(s) [x + grad log q_s(x)],  grad log q_s(x) = -eps / sqrt(1 - alphabar(s)),

    given ``eps`` = eps(x, s) [same shape as x]. Returned in x's dtype."""
    b = float(schedule.beta(s))
    sig = math.sqrt(float(schedule.one_minus_alpha_bar(s)))
    return -0.5 * b * (x - eps / sig)


def _eps_checked(eps_fn, x, s):
    eps = eps_fn(x, s)
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        raise ValueError(f"eps_fn must return a tensor of x's shape {tuple(x.shape)}, "
                         f"got {getattr(eps, 'shape', type(eps).__name__)}")
    return eps


# ------------------------------------------------------------------------------------ divergence
def make_probes(shape: Sequence[int], num: int, kind: str = "rademacher",
                generator: torch.Generator | None = None, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``num`` probe vectors v [num, *shape] with E[v] = 0, E[v v^T] = I for Hutchinson's estimator:
    ``"rademacher"`` (entries +-1; the smaller variance) or ``"gaussian"`` (N(0, 1) entries)."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"the number of probes must be a positive int, got {num!r}")
    shape = (int(num),) + tuple(int(v) for v in shape)
    if kind == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    else:
        raise ValueError(f"probe kind must be 'rademacher' or 'gaussian', got {kind!r}")
    return v


def _exact_trace(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d out_i / d x_i per example [N] by D vector-Jacobian products (out = f(x), x [N, ...])."""
    n = x.shape[0]
    flat = out.reshape(n, -1)
    tr = torch.zeros(n, dtype=out.dtype, device=out.device)
    for i in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
        tr = tr + g.reshape(n, -1)[:, i].to(out.dtype)
    return tr


def _hutchinson(out: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """v_m^T (d out / d x) v_m per probe and example [M, N] (one vector-Jacobian product per probe)."""
    n = x.shape[0]
    est = []
    for v in probes:
        (g,) = torch.autograd.grad(out, x, grad_outputs=v.to(out.dtype), retain_graph=True)
        est.append((g * v.to(g.dtype)).reshape(n, -1).sum(1))
    return torch.stack(est)


def _check_fn_input(fn, x):
    if not callable(fn):
        raise ValueError(f"fn must be callable fn(x), got {type(fn).__name__}")
    check_tensor("x", x, ndim_min=2)


def exact_divergence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """div fn(x) = tr(d fn / d x) per example [N] for x [N, ...] (the examples independent), by
    D = prod(x.shape[1:]) vector-Jacobian products: exact, for low dimension."""
    _check_fn_input(fn, x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"fn must map x {tuple(x.shape)} to a tensor of the same shape")
        return _exact_trace(out, xg).detach()


def hutchinson_divergence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          probes: torch.Tensor) -> torch.Tensor:
    """Hutchinson's estimates v^T (d fn / d x) v of div fn(x), one per probe: [M, N] for x [N, ...] and
    ``probes`` [M, N, ...] (:func:`make_probes`). Each is unbiased (E[v v^T] = I); average over probes
    and take std / sqrt(M) as the standard error."""
    _check_fn_input(fn, x)
    if not isinstance(probes, torch.Tensor) or probes.ndim != x.ndim + 1 or probes.shape[1:] != x.shape:
        raise ValueError(f"probes must have shape [M, {', '.join(map(str, x.shape))}], "
                         f"got {getattr(probes, 'shape', type(probes).__name__)}")
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"fn must map x {tuple(x.shape)} to a tensor of the same shape")
        return _hutchinson(out, xg, probes.to(x.device)).detach()


# ------------------------------------------------------------------------------------ solving
def _solve(rhs, y0: np.ndarray, s_from: float, s_to: float, rtol: float, atol: float, method: str):
    from scipy.integrate import solve_ivp

    sol = solve_ivp(rhs, (s_from, s_to), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise ValueError(f"the ODE solver ({method}) failed between s = {s_from:g} and {s_to:g}: {sol.message}; "
                         "try larger tolerances or check the model for non-finite outputs")
    return sol


def _check_solver_args(schedule, eps_fn, x, rtol, atol, method):
    _check_schedule(schedule)
    if not callable(eps_fn):
        raise ValueError(f"eps_fn must be callable eps_fn(x, s), got {type(eps_fn).__name__}")
    check_tensor("x", x, ndim_min=2)
    if x.shape[0] < 1:
        raise ValueError(f"x must hold at least one example, got shape {tuple(x.shape)}")
    if method not in _SOLVERS:
        raise ValueError(f"method must be one of {_SOLVERS} (explicit, error-controlled), got {method!r}")
    return _check_tol("rtol", rtol), _check_tol("atol", atol)


def solve_flow(
    schedule: VPSchedule,
    eps_fn: EpsFn,
    x: torch.Tensor,
    s_from: float,
    s_to: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
) -> dict:
    """Carry the points x [N, ...] at time ``s_from`` along the probability-flow ODE (Song et al. 2021,
    eq. 13) to time ``s_to`` (either direction) with scipy's error-controlled ``solve_ivp``.

    Returns ``{"x": x(s_to)`` (x's dtype and device), ``"nfe"``: evaluations of ``eps_fn`` (each one batched
    forward pass; RK45 uses 6 per accepted step plus rejected steps and the initial step selection),
    ``"solver_steps"``: accepted steps, ``"solver_nfev"``: scipy's own count (equal to ``"nfe"``)}.
    Both times must lie in [schedule.s_min, 1].
    """
    rtol, atol = _check_solver_args(schedule, eps_fn, x, rtol, atol, method)
    s_from = _check_time("s_from", s_from, schedule.s_min)
    s_to = _check_time("s_to", s_to, schedule.s_min)
    if s_from == s_to:
        raise ValueError(f"s_from and s_to must differ, got {s_from} twice")
    shape, device, dtype = tuple(x.shape), x.device, x.dtype
    nfe = 0

    def rhs(s, y):
        nonlocal nfe
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        with torch.no_grad():
            eps = _eps_checked(eps_fn, xt, s)
            nfe += 1
            f = probability_flow_drift(schedule, eps, xt, s)
        return f.detach().to("cpu", torch.float64).reshape(-1).numpy()

    y0 = x.detach().to("cpu", torch.float64).reshape(-1).numpy()
    sol = _solve(rhs, y0, s_from, s_to, rtol, atol, method)
    out = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(device=device, dtype=dtype)
    return {"x": out, "nfe": nfe, "solver_steps": int(sol.t.shape[0] - 1), "solver_nfev": int(sol.nfev)}


def _standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    z = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    return -0.5 * (z.shape[1] * _LOG_2PI + (z * z).sum(1))


def flow_log_likelihood(
    schedule: VPSchedule,
    eps_fn: EpsFn,
    x: torch.Tensor,
    *,
    s_start: float | None = None,
    s_end: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "RK45",
    divergence: str = "auto",
    num_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Exact log-density of the points x [N, ...] at time ``s_start`` under the probability-flow ODE's
    model, by the instantaneous change of variables (Song et al. 2021, Appendix D.2, eq. 39):

        log p_{s_start}(x) = log p_{s_end}(x(s_end)) + int_{s_start}^{s_end} div f(x(s), s) ds,

    with f the drift of :func:`probability_flow_drift`, so div f = -1/2 beta(s) (D - div eps / sqrt(1 -
    alphabar(s))), D = prod(x.shape[1:]). The ODE for x and the integral are solved together (one
    float64 state). ``p_{s_end}`` is ``prior_log_prob`` (default N(0, I), eq. 1's p(x_T)).

    ``divergence``: ``"exact"`` (D vector-Jacobian products per evaluation), ``"hutchinson"``
    (``num_probes`` probes of kind ``probe``, drawn once from ``generator`` and held fixed along the
    path, one product each; an unbiased estimate per probe) or ``"auto"`` (exact for D <= 64).

    Returns a dict of float64 [N] tensors ``"log_likelihood"`` (with Hutchinson: the mean over probes),
    ``"stderr"`` (std over probes / sqrt(M); zeros for the exact trace; NaN for one probe),
    ``"prior"`` (log p_{s_end}(x(s_end))), ``"delta"`` (the integral), plus ``"x_end"`` (x(s_end)),
    ``"nfe"`` (network evaluations), ``"vjp"`` (vector-Jacobian products) and ``"method"``.
    """
    rtol, atol = _check_solver_args(schedule, eps_fn, x, rtol, atol, method)
    s_start = schedule.s_min if s_start is None else _check_time("s_start", s_start, schedule.s_min)
    s_end = _check_time("s_end", s_end, schedule.s_min)
    if not s_start < s_end:
        raise ValueError(f"s_start must be below s_end (the flow runs from the data toward noise), "
                         f"got s_start={s_start}, s_end={s_end}")
    n, shape, device, dtype = x.shape[0], tuple(x.shape), x.device, x.dtype
    D = int(np.prod(shape[1:]))
    if divergence == "auto":
        divergence = "exact" if D <= 64 else "hutchinson"
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact', 'hutchinson' or 'auto', got {divergence!r}")
    if divergence == "hutchinson":
        probes = make_probes(shape, num_probes, probe, generator, dtype=dtype).to(device)
        m = int(num_probes)
    else:
        probes, m = None, 1
    if prior_log_prob is not None and not callable(prior_log_prob):
        raise ValueError(f"prior_log_prob must be callable (x -> [N]) or None, got {type(prior_log_prob).__name__}")
    nx = n * D
    counts = {"nfe": 0, "vjp": 0}

    def rhs(s, y):
        xt = torch.from_numpy(y[:nx]).reshape(shape).to(device=device, dtype=dtype)
        with torch.enable_grad():
            xg = xt.detach().requires_grad_(True)
            eps = _eps_checked(eps_fn, xg, s)
            counts["nfe"] += 1
            if probes is None:
                div_eps = _exact_trace(eps, xg)[None]  # [1, N]
                counts["vjp"] += D
            else:
                div_eps = _hutchinson(eps, xg, probes)  # [M, N]
                counts["vjp"] += m
        b = float(schedule.beta(s))
        sig = math.sqrt(float(schedule.one_minus_alpha_bar(s)))
        f = probability_flow_drift(schedule, eps.detach(), xt, s)
        div_f = -0.5 * b * (D - div_eps.detach().to(torch.float64) / sig)
        return np.concatenate([f.to("cpu", torch.float64).reshape(-1).numpy(),
                               div_f.to("cpu", torch.float64).reshape(-1).numpy()])

    y0 = np.concatenate([x.detach().to("cpu", torch.float64).reshape(-1).numpy(), np.zeros(m * n)])
    sol = _solve(rhs, y0, s_start, s_end, rtol, atol, method)
    y1 = sol.y[:, -1]
    x_end = torch.from_numpy(y1[:nx].copy()).reshape(shape)
    delta = torch.from_numpy(y1[nx:].copy()).reshape(m, n)
    if prior_log_prob is None:
        prior = _standard_normal_log_prob(x_end)
    else:
        prior = torch.as_tensor(prior_log_prob(x_end.to(device=device, dtype=dtype))).detach()
        prior = prior.to("cpu", torch.float64)
        if prior.shape != (n,):
            raise ValueError(f"prior_log_prob must return one value per example [{n}], got {tuple(prior.shape)}")
    ll = prior[None] + delta  # [M, N]
    if m > 1:
        stderr = ll.std(0, unbiased=True) / math.sqrt(m)
    elif probes is None:
        stderr = torch.zeros(n, dtype=torch.float64)
    else:
        stderr = torch.full((n,), float("nan"), dtype=torch.float64)
    return {"log_likelihood": ll.mean(0), "stderr": stderr, "prior": prior, "delta": delta.mean(0),
            "x_end": x_end.to(device=device, dtype=dtype), "nfe": counts["nfe"], "vjp": counts["vjp"],
            "method": divergence}


# ------------------------------------------------------------------------------------ DDPM front ends
@torch.no_grad()
def ode_sample(
    diffusion: GaussianDiffusion,
    model: Model,
    shape: Sequence[int],
    *,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    method: str = "RK45",
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    denoise: bool = True,
    clip_denoised: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Sample with the probability-flow ODE (Song et al. 2021, eq. 13) of a trained DDPM network.

    x(1) = x_T ~ N(0, I) (or ``noise`` [shape]) is carried by :func:`solve_flow` from s = 1 (code
    timestep T - 1) to s = 1/T (code timestep 0, the paper's x_1), with the network evaluated at the
    nearest code timestep (:class:`NetworkEps`). With ``denoise`` the result is then x0-hat =
    (x_1 - sqrt(1 - alphabar_1) eps) / sqrt(alphabar_1) (eq. 15; the last DDIM step, i.e. an Euler step
    of the ODE over the final 1/T, where the score of the data is not defined; not clipped).
    Returns ``{"sample"`` [shape], ``"nfe"``: network evaluations (+1 for ``denoise``),
    ``"solver_steps"}``. The learned-variance half of a model's output is ignored. ``clip_denoised``
    follows the flow of the clipped x0-hat (:class:`NetworkEps`; then the result lies in [-1, 1]).
    """
    from .sampling import _initial_noise

    eps_fn = NetworkEps(diffusion, model, clip_denoised=clip_denoised)
    if noise is not None:
        device, dtype = noise.device, noise.dtype
    x = _initial_noise(shape, noise, generator, device, dtype)
    sched = eps_fn.schedule
    res = solve_flow(sched, eps_fn, x, 1.0, sched.s_min, rtol=rtol, atol=atol, method=method)
    x = res["x"]
    if denoise:
        t0 = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        x = diffusion.predict_xstart_from_eps(x, t0, eps_fn(x, sched.s_min))
    assert eps_fn.calls == res["nfe"] + int(bool(denoise))
    return {"sample": x, "nfe": eps_fn.calls, "solver_steps": res["solver_steps"]}


def ode_log_likelihood(
    diffusion: GaussianDiffusion,
    model: Model,
    x: torch.Tensor,
    **kwargs,
) -> dict:
    """:func:`flow_log_likelihood` with a trained DDPM network (:class:`NetworkEps`): the exact
    log-density of x at s = 1/T (the paper's x_1) under the network's probability-flow ODE, in nats
    per example. Keyword arguments go to :func:`flow_log_likelihood` (tolerances, divergence, probes)."""
    eps_fn = NetworkEps(diffusion, model)
    return flow_log_likelihood(eps_fn.schedule, eps_fn, x, **kwargs)
