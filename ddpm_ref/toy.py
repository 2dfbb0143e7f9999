"""Low-dimensional toy problems with exact answers: Gaussian mixtures, their noisy marginals and
scores, a small MLP denoiser, a training loop, and distances between point clouds.

Why a Gaussian mixture. If the data are x_0 ~ sum_k w_k N(m_k, S_k), then by eq. 4
(x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps independent of x_0) every noisy marginal is
again a mixture with the same weights::

    q(x_t) = sum_k w_k N(x_t; sqrt(abar_t) m_k, abar_t S_k + (1 - abar_t) I),

so log q(x_t), the score grad log q(x_t) and the optimal noise prediction
E[eps | x_t] = -sqrt(1 - abar_t) grad log q(x_t) (Tweedie's formula; the minimiser of L_simple,
eq. 14, at each t) are all available in closed form. A network's eps_theta can be compared with
the exact one, and a sampler can be run with the exact eps to separate the error of the sampler
from the error of the network (:class:`ExactEps`).

Timesteps are the package's 0-based code timesteps t in {0, ..., T-1}; the paper's timestep is
t + 1 (see :mod:`ddpm_ref.diffusion`), so ``abar`` below is ``diffusion.alphas_cumprod[t]`` =
alphabar_{t+1}.

Contents
--------
- :class:`GaussianMixture` (any dimension; ``log_prob``, ``score``, ``sample``, ``noised``) and
  the named 2-D distributions :func:`gaussian_ring` (the classic 8 Gaussians on a circle) and
  :func:`swiss_roll_mixture` (isotropic Gaussians along a spiral).
- :func:`log_q_t`, :func:`score_q_t`, :func:`component_posterior_t`, :func:`optimal_eps`,
  :func:`optimal_xstart`: the exact marginal quantities at code timesteps ``t`` [N];
  :class:`ExactEps` wraps :func:`optimal_eps` as a model ``model(x, t)``.
  :func:`optimal_eps_at` is E[eps | x] at any noise level abar in (0, 1] (continuous time).
- :class:`ToyMLP`: a residual MLP with the U-Net's sinusoidal timestep embedding,
  ``model(x [N, d], t [N]) -> [N, d]`` (or [N, 2d] with ``learned_variance=True``).
- :func:`train_toy`: Algorithm 1 with :meth:`GaussianDiffusion.training_losses`; returns the loss
  curve.
- Sample-quality measures, deterministic and fast for a few thousand points:
  :func:`sliced_wasserstein` (W1 averaged over fixed directions; :func:`sliced_wasserstein_to_mixture`
  against the exact mixture instead of a sample), :func:`energy_distance`
  (Szekely's energy distance of the two empirical distributions), and, for a mixture,
  :func:`mean_log_likelihood` and :func:`mode_weights` (see their docs for what each does and
  does not detect).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ._validate import check_tensor, check_timesteps
from .diffusion import GaussianDiffusion
from .unet import timestep_embedding

__all__ = [
    "GaussianMixture",
    "gaussian_ring",
    "swiss_roll_mixture",
    "log_q_t",
    "score_q_t",
    "component_posterior_t",
    "optimal_eps",
    "optimal_xstart",
    "ExactEps",
    "optimal_eps_at",
    "ToyMLP",
    "train_toy",
    "sliced_wasserstein",
    "sliced_wasserstein_to_mixture",
    "energy_distance",
    "mean_log_likelihood",
    "mode_weights",
]

_F64 = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------- mixtures
def _as_f64(name: str, value, ndim: int) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=_F64).detach().clone()
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values")
    return t


class GaussianMixture:
    """A mixture of K Gaussians in d dimensions: p(x) = sum_k w_k N(x; m_k, S_k).

    Parameters are stored in float64 on the CPU: ``weights`` [K] (positive, summing to 1),
    ``means`` [K, d], ``covs`` [K, d, d] (symmetric positive definite). All evaluations are done
    in float64 and returned in float64 (cast as you need).
    """

    def __init__(self, weights, means, covs):
        w = _as_f64("weights", weights, 1)
        m = _as_f64("means", means, 2)
        S = _as_f64("covs", covs, 3)
        K, d = m.shape
        if K < 1 or d < 1:
            raise ValueError(f"means must be [K, d] with K, d >= 1, got {tuple(m.shape)}")
        if w.shape != (K,):
            raise ValueError(f"weights must have shape [K] = [{K}], got {tuple(w.shape)}")
        if S.shape != (K, d, d):
            raise ValueError(f"covs must have shape [K, d, d] = [{K}, {d}, {d}], got {tuple(S.shape)}")
        if bool((w <= 0).any()):
            raise ValueError("weights must be positive")
        if abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {float(w.sum()):.8g}")
        if not torch.allclose(S, S.transpose(1, 2), rtol=0, atol=1e-12):
            raise ValueError("covs must be symmetric")
        chol, info = torch.linalg.cholesky_ex(S)
        if bool((info != 0).any()):
            raise ValueError("covs must be positive definite")
        self.weights = w / w.sum()
        self.means = m
        self.covs = S
        self._chol = chol

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, d={self.dim})"

    # -------------------------------------------------------------- densities
    def _check_x(self, x) -> torch.Tensor:
        check_tensor("x", x, ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [N, {self.dim}], got {tuple(x.shape)}")
        return x

    def _terms(self, x: torch.Tensor, abar: torch.Tensor):
        """Per-component log(w_k N(x; sqrt(abar) m_k, C_k)) [N, K] and C_k^{-1} (x - sqrt(abar) m_k)
        [N, K, d], with C_k = abar S_k + (1 - abar) I; ``abar`` is float64 [N] in (0, 1]."""
        x = x.to(_F64).cpu()
        uniq, inv = torch.unique(abar, return_inverse=True)  # sampling uses one t per batch: U = 1
        eye = torch.eye(self.dim, dtype=_F64)
        C = uniq[:, None, None, None] * self.covs[None] + (1.0 - uniq)[:, None, None, None] * eye  # [U,K,d,d]
        L = torch.linalg.cholesky(C)
        logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # [U, K]
        prec = torch.cholesky_inverse(L)  # [U, K, d, d]
        diff = x[:, None, :] - torch.sqrt(abar)[:, None, None] * self.means[None]  # [N, K, d]
        prec_diff = torch.einsum("nkij,nkj->nki", prec[inv], diff)
        maha = (diff * prec_diff).sum(-1)  # [N, K]
        logcomp = torch.log(self.weights)[None] - 0.5 * (self.dim * _LOG_2PI + logdet[inv] + maha)
        return logcomp, prec_diff

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) [N] (float64) for x [N, d]."""
        self._check_x(x)
        logcomp, _ = self._terms(x, torch.ones(x.shape[0], dtype=_F64))
        return torch.logsumexp(logcomp, dim=1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities p(k | x) [N, K] (float64)."""
        self._check_x(x)
        logcomp, _ = self._terms(x, torch.ones(x.shape[0], dtype=_F64))
        return torch.softmax(logcomp, dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The score grad_x log p(x) = -sum_k p(k | x) S_k^{-1} (x - m_k), [N, d] float64."""
        self._check_x(x)
        logcomp, prec_diff = self._terms(x, torch.ones(x.shape[0], dtype=_F64))
        r = torch.softmax(logcomp, dim=1)
        return -(r[..., None] * prec_diff).sum(1)

    def noised(self, abar: float) -> GaussianMixture:
        """The law of sqrt(abar) x + sqrt(1 - abar) eps: weights w_k, means sqrt(abar) m_k,
        covariances abar S_k + (1 - abar) I (eq. 4 applied to each component)."""
        abar = float(abar)
        if not 0.0 < abar <= 1.0:
            raise ValueError(f"abar must lie in (0, 1], got {abar}")
        eye = torch.eye(self.dim, dtype=_F64)
        return GaussianMixture(self.weights, math.sqrt(abar) * self.means, abar * self.covs + (1.0 - abar) * eye)

    # -------------------------------------------------------------- sampling
    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        return_components: bool = False,
    ):
        """Draw ``n`` points [n, d] (in ``dtype``; drawn in float64). With ``return_components``
        also returns the component index of each point [n] (int64)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        k = torch.multinomial(self.weights, int(n), replacement=True, generator=generator)
        z = torch.randn(int(n), self.dim, generator=generator, dtype=_F64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self._chol[k], z)
        x = x.to(dtype)
        return (x, k) if return_components else x


def gaussian_ring(
    num_modes: int = 8, radius: float = 1.0, std: float = 0.1, weights: Sequence[float] | None = None
) -> GaussianMixture:
    """``num_modes`` isotropic Gaussians (standard deviation ``std``) with equal weights (or
    ``weights``) at angles 2 pi k / num_modes on a circle of ``radius``: the classic
    "8 Gaussians" toy problem. The default radius 1 puts the data at the scale of pixels in
    [-1, 1], the scale the paper's schedule was designed for."""
    if isinstance(num_modes, bool) or not isinstance(num_modes, int) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive int, got {num_modes!r}")
    if not (radius >= 0 and math.isfinite(radius)) or not (std > 0 and math.isfinite(std)):
        raise ValueError(f"need radius >= 0 and std > 0 (finite), got radius={radius}, std={std}")
    ang = 2.0 * math.pi * torch.arange(num_modes, dtype=_F64) / num_modes
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    w = torch.full((num_modes,), 1.0 / num_modes, dtype=_F64) if weights is None else weights
    covs = (std**2) * torch.eye(2, dtype=_F64).expand(num_modes, 2, 2)
    return GaussianMixture(w, means, covs)


def swiss_roll_mixture(
    num_modes: int = 24, turns: float = 1.5, scale: float = 1.0, std: float = 0.05
) -> GaussianMixture:
    """Isotropic Gaussians (``std``) with equal weights at points evenly spaced in angle along
    the spiral r = scale * theta / theta_max, theta in [pi/2, theta_max = 2 pi * turns + pi/2]:
    a "swiss roll" whose scores are still exact."""
    if isinstance(num_modes, bool) or not isinstance(num_modes, int) or num_modes < 2:
        raise ValueError(f"num_modes must be an int >= 2, got {num_modes!r}")
    if not (turns > 0 and scale > 0 and std > 0):
        raise ValueError(f"turns, scale and std must be positive, got {turns}, {scale}, {std}")
    theta_max = 2.0 * math.pi * turns + math.pi / 2
    theta = torch.linspace(math.pi / 2, theta_max, num_modes, dtype=_F64)
    r = scale * theta / theta_max
    means = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    covs = (std**2) * torch.eye(2, dtype=_F64).expand(num_modes, 2, 2)
    return GaussianMixture(torch.full((num_modes,), 1.0 / num_modes, dtype=_F64), means, covs)


# ------------------------------------------------------------------- exact marginal quantities
def _check_mixture_args(mixture, diffusion, x, t):
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
    mixture._check_x(x)
    check_timesteps(t, x, diffusion.num_timesteps)
    if x.device.type != "cpu":
        raise ValueError(f"the exact toy quantities are computed on the CPU; x is on {x.device}")
    return torch.as_tensor(diffusion.alphas_cumprod, dtype=_F64)[t.cpu()]


def log_q_t(
    mixture: GaussianMixture, diffusion: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Exact log q(x_t) [N] (float64, differentiable in x) of the noisy marginal at code timesteps
    ``t`` [N]: q(x_t) = sum_k w_k N(sqrt(abar) m_k, abar S_k + (1 - abar) I), abar = alphas_cumprod[t]."""
    abar = _check_mixture_args(mixture, diffusion, x, t)
    logcomp, _ = mixture._terms(x, abar)
    return torch.logsumexp(logcomp, dim=1)


def score_q_t(
    mixture: GaussianMixture, diffusion: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Exact score grad_x log q(x_t) [N, d] (float64) at code timesteps ``t`` [N]:
    -sum_k q(k | x_t) C_k^{-1} (x_t - sqrt(abar) m_k) with C_k = abar S_k + (1 - abar) I."""
    abar = _check_mixture_args(mixture, diffusion, x, t)
    logcomp, prec_diff = mixture._terms(x, abar)
    r = torch.softmax(logcomp, dim=1)
    return -(r[..., None] * prec_diff).sum(1)


def component_posterior_t(
    mixture: GaussianMixture, diffusion: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """q(k | x_t) [N, K] (float64): the probability that x_t, at code timesteps ``t`` [N], came from
    an x_0 of mixture component k (Bayes' rule with the noisy components of :func:`log_q_t`)."""
    abar = _check_mixture_args(mixture, diffusion, x, t)
    logcomp, _ = mixture._terms(x, abar)
    return torch.softmax(logcomp, dim=1)


def optimal_eps(
    mixture: GaussianMixture, diffusion: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """E[eps | x_t] = -sqrt(1 - abar_t) grad log q(x_t) [N, d] (float64): the minimiser of
    L_simple (eq. 14) over all functions of (x_t, t), i.e. the best possible eps_theta.

    Computed as sum_k q(k | x_t) E[eps | x_t, k] with E[eps | x_t, k] = sqrt(1 - abar) C_k^{-1}
    (x_t - sqrt(abar) m_k), the Gaussian conditional mean (Cov(eps, x_t | k) = sqrt(1 - abar) I)."""
    abar = _check_mixture_args(mixture, diffusion, x, t)
    logcomp, prec_diff = mixture._terms(x, abar)
    r = torch.softmax(logcomp, dim=1)
    one_minus = torch.as_tensor(diffusion.one_minus_alphas_cumprod, dtype=_F64)[t.cpu()]
    return torch.sqrt(one_minus)[:, None] * (r[..., None] * prec_diff).sum(1)


def optimal_xstart(
    mixture: GaussianMixture, diffusion: GaussianDiffusion, x: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t - sqrt(1 - abar) E[eps | x_t]) / sqrt(abar) [N, d] (float64): eq. 4
    solved for x_0 with the optimal eps (the best possible x0-hat)."""
    eps = optimal_eps(mixture, diffusion, x, t)
    abar = torch.as_tensor(diffusion.alphas_cumprod, dtype=_F64)[t.cpu()][:, None]
    one_minus = torch.as_tensor(diffusion.one_minus_alphas_cumprod, dtype=_F64)[t.cpu()][:, None]
    return (x.to(_F64) - torch.sqrt(one_minus) * eps) / torch.sqrt(abar)


class ExactEps:
    """The exact eps-predictor E[eps | x_t] of a mixture as a model: ``model(x [N, d], t [N])``.

    ``diffusion`` must be the *base* diffusion the timesteps refer to: a respaced
    :class:`ddpm_ref.sampling.SpacedDiffusion` maps its indices to base timesteps before calling
    the model, exactly as for a trained network. Output in ``x.dtype``.
    """

    def __init__(self, mixture: GaussianMixture, diffusion: GaussianDiffusion):
        if not isinstance(mixture, GaussianMixture):
            raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
        self.mixture, self.diffusion = mixture, diffusion

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return optimal_eps(self.mixture, self.diffusion, x, t).to(x.dtype)


def optimal_eps_at(mixture: GaussianMixture, x: torch.Tensor, abar) -> torch.Tensor:
    """E[eps | x] [N, d] (float64, differentiable in x) for x = sqrt(abar) x_0 + sqrt(1 - abar) eps at
    ANY noise level ``abar`` in (0, 1]: a float, or one per example (a tensor [N]); continuous time, e.g.
    ``VPSchedule.alpha_bar(s)`` of :mod:`ddpm_ref.ode`. It is -sqrt(1 - abar) grad log q_abar(x), the
    exact eps of :func:`optimal_eps` without a discrete schedule; at abar = 1 it is 0 (no noise)."""
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    mixture._check_x(x)
    ab = torch.as_tensor(abar, dtype=_F64).detach().cpu()
    if ab.ndim == 0:
        ab = ab.expand(x.shape[0])
    if ab.shape != (x.shape[0],):
        raise ValueError(f"abar must be a float or a tensor [N] = [{x.shape[0]}], got shape {tuple(ab.shape)}")
    if not bool(((ab > 0) & (ab <= 1)).all()):
        raise ValueError(f"abar must lie in (0, 1], got values in [{float(ab.min())}, {float(ab.max())}]")
    logcomp, prec_diff = mixture._terms(x, ab.contiguous())
    r = torch.softmax(logcomp, dim=1)
    return torch.sqrt(-torch.expm1(torch.log(ab)))[:, None] * (r[..., None] * prec_diff).sum(1)


# ------------------------------------------------------------------------------------ the network
class _Block(nn.Module):
    def __init__(self, hidden: int, emb: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.temb = nn.Linear(emb, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h, temb):
        return h + self.fc2(torch.nn.functional.silu(self.fc1(torch.nn.functional.silu(h)) + self.temb(temb)))


class ToyMLP(nn.Module):
    """A small residual MLP eps_theta(x_t, t) for points in R^d.

    The code timestep t (0-based, as fed to the U-Net) is embedded with the U-Net's sinusoidal
    :func:`ddpm_ref.unet.timestep_embedding` (``emb_dim``), passed through dense - swish - dense,
    and added inside each of ``num_blocks`` residual blocks
    ``h <- h + W2 swish(W1 swish(h) + V temb)``; the output is a dense layer after a swish.
    ``forward(x [N, d], t [N] int) -> [N, d]``, or [N, 2d] with ``learned_variance=True`` (the
    second half for the variance, as the U-Net's 6 channels).

    The input layer sees x and, with ``num_frequencies = F > 0``, the Fourier features
    sin(2^j pi x_i), cos(2^j pi x_i) for j = 0..F-1 of every coordinate (as NeRF's positional
    encoding). A plain MLP learns functions of x that vary on short length scales slowly (its
    "spectral bias"); near t = 0 the optimal eps of sharp data (e.g. modes of width 0.1) is
    exactly such a function, and these features let a small network fit it in seconds.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        num_blocks: int = 3,
        emb_dim: int = 64,
        *,
        num_frequencies: int = 0,
        learned_variance: bool = False,
        num_timesteps: int = 1000,
    ):
        super().__init__()
        for name, v, lo in (("dim", dim, 1), ("hidden", hidden, 1), ("num_blocks", num_blocks, 0),
                            ("emb_dim", emb_dim, 4), ("num_frequencies", num_frequencies, 0),
                            ("num_timesteps", num_timesteps, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
        self.dim, self.emb_dim, self.num_timesteps = dim, emb_dim, num_timesteps
        self.num_frequencies = num_frequencies
        self.register_buffer(
            "freqs", math.pi * 2.0 ** torch.arange(num_frequencies, dtype=torch.float32), persistent=False
        )
        self.learned_variance = bool(learned_variance)
        self.out_dim = 2 * dim if learned_variance else dim
        self.temb = nn.Sequential(nn.Linear(emb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim * (1 + 2 * num_frequencies), hidden)
        self.blocks = nn.ModuleList(_Block(hidden, hidden) for _ in range(num_blocks))
        self.out = nn.Linear(hidden, self.out_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [N, {self.dim}], got {tuple(x.shape)}")
        check_timesteps(t, x, self.num_timesteps)
        temb = self.temb(timestep_embedding(t, self.emb_dim).to(x.dtype))
        feats = x
        if self.num_frequencies:
            arg = (x[:, :, None] * self.freqs.to(x.dtype)).reshape(x.shape[0], -1)  # [N, d F]
            feats = torch.cat([x, torch.sin(arg), torch.cos(arg)], dim=1)
        h = self.inp(feats)
        for blk in self.blocks:
            h = blk(h, temb)
        return self.out(torch.nn.functional.silu(h))


# ------------------------------------------------------------------------------------ training
def _data_sampler(sampler):
    if isinstance(sampler, GaussianMixture):
        return lambda n, g: sampler.sample(n, generator=g)
    if isinstance(sampler, torch.Tensor):
        check_tensor("sampler (a data set)", sampler, ndim=2)
        data = sampler

        def draw(n, g):
            return data[torch.randint(data.shape[0], (n,), generator=g)]

        return draw
    if callable(sampler):
        return sampler
    raise ValueError(
        "sampler must be a GaussianMixture, a data tensor [M, d], or a callable (n, generator) -> [n, d]; "
        f"got {type(sampler).__name__}"
    )


def train_toy(
    diffusion: GaussianDiffusion,
    model: nn.Module,
    sampler,
    steps: int,
    batch: int,
    lr: float,
    seed: int = 0,
    *,
    grad_clip: float | None = 1.0,
    lr_decay: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Algorithm 1 on toy data; returns the loss of every step as float64 [steps].

    Each step draws x_0 (``batch`` points from ``sampler``: a :class:`GaussianMixture`, a fixed
    data set [M, d] sampled with replacement, or a callable ``(n, generator) -> [n, d]``),
    t ~ Uniform{0..T-1} (code timesteps, the paper's t ~ Uniform{1..T}) and eps ~ N(0, I), and
    takes an Adam step on the batch mean of :meth:`GaussianDiffusion.training_losses` (L_simple,
    eq. 14, for the paper's ``mse`` loss). The learning rate is ``lr``, decayed to 0 along a
    cosine over the run if ``lr_decay`` (it makes the short toy runs end closer to a minimum);
    the gradient norm is clipped at ``grad_clip`` (None = off). All randomness of the loop comes
    from one generator seeded with ``seed``; the model's initialisation is the caller's.
    """
    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("steps", steps), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if grad_clip is not None and not (grad_clip > 0):
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    draw = _data_sampler(sampler)
    g = torch.Generator().manual_seed(int(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    dtype = params[0].dtype
    opt = torch.optim.Adam(params, lr=float(lr))
    sched = (
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps)))
        if lr_decay
        else None
    )
    T = diffusion.num_timesteps
    losses = np.empty(int(steps), dtype=np.float64)
    model.train()
    for i in tqdm(range(int(steps)), disable=not progress, desc="train_toy", leave=False):
        x0 = draw(int(batch), g).to(dtype)
        t = torch.randint(T, (int(batch),), generator=g)
        loss = diffusion.training_losses(model, x0, t, generator=g)["loss"].mean()
        value = loss.item()
        if not math.isfinite(value):
            raise ValueError(f"non-finite loss {value} at step {i}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, float(grad_clip))
        opt.step()
        if sched is not None:
            sched.step()
        losses[i] = value
    model.eval()
    return losses


# ------------------------------------------------------------------------------------ distances
def _check_clouds(a, b):
    check_tensor("a", a, ndim=2)
    check_tensor("b", b, ndim=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same dimension, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 1 or b.shape[0] < 1:
        raise ValueError("a and b must contain at least one point each")
    return a.detach().to(_F64).cpu(), b.detach().to(_F64).cpu()


def _directions(d: int, num_projections: int) -> torch.Tensor:
    if d == 2:  # evenly spaced angles on a half circle: every direction, no randomness
        ang = math.pi * torch.arange(num_projections, dtype=_F64) / num_projections
        return torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    v = torch.randn(num_projections, d, generator=torch.Generator().manual_seed(0), dtype=_F64)
    return v / v.norm(dim=1, keepdim=True)


def _w1_1d(pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """W1 between the empirical laws of the rows of pa [P, N] and pb [P, M]: the integral of
    |F_a - F_b| over the line, exactly (piecewise-constant CDFs). Returns [P]."""
    sa, _ = torch.sort(pa, dim=1)
    sb, _ = torch.sort(pb, dim=1)
    z, _ = torch.sort(torch.cat([sa, sb], dim=1), dim=1)
    left = z[:, :-1].contiguous()
    Fa = torch.searchsorted(sa, left, right=True).to(_F64) / pa.shape[1]
    Fb = torch.searchsorted(sb, left, right=True).to(_F64) / pb.shape[1]
    return ((Fa - Fb).abs() * (z[:, 1:] - z[:, :-1])).sum(dim=1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, num_projections: int = 64) -> float:
    """Sliced Wasserstein-1 distance between the point clouds a [N, d] and b [M, d] (float64).

    The average over ``num_projections`` fixed unit directions u of the exact 1-D Wasserstein-1
    distance between the projected empirical distributions {u.a_i} and {u.b_j}. In 2-D the
    directions are the evenly spaced angles pi k / P (deterministic, no random projections);
    in higher dimensions they are drawn once from a generator seeded with 0. The result is in
    the data's units, symmetric, 0 for identical sets (and for equal empirical distributions),
    and grows linearly with a shift: a translation by a vector s adds up to |s| (exactly
    |s| * mean |cos| = 2|s|/pi in 2-D for a pure translation of identical shapes). With N
    samples from the same law it is of order 1/sqrt(N), the noise floor of any comparison.
    """
    if isinstance(num_projections, bool) or not isinstance(num_projections, int) or num_projections < 1:
        raise ValueError(f"num_projections must be a positive int, got {num_projections!r}")
    a, b = _check_clouds(a, b)
    u = _directions(a.shape[1], num_projections)
    return float(_w1_1d(u @ a.T, u @ b.T).mean())


def sliced_wasserstein_to_mixture(
    samples: torch.Tensor, mixture: GaussianMixture, num_projections: int = 32, grid_size: int = 10_000
) -> float:
    """Sliced Wasserstein-1 distance between the point cloud ``samples`` [N, d] and the *exact*
    ``mixture`` (float64): the mean over the fixed directions u of :func:`sliced_wasserstein` of the
    1-D distance W1 = integral |F_N(z) - F(z)| dz between the empirical CDF of {u.x_i} and the CDF of
    the projected mixture, sum_k w_k Phi((z - u.m_k) / sqrt(u' S_k u)).

    The integral is a midpoint rule on ``grid_size`` points spanning the samples and 10 standard
    deviations around every projected component; its error is below one grid step (typically far
    below). Compared with the distance to a finite reference sample, only the samples' own
    randomness remains: for exact samples the expected value is the noise floor E W1(F_N, F), of
    order 1/sqrt(N).
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    for name, v, lo in (("num_projections", num_projections, 1), ("grid_size", grid_size, 100)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    check_tensor("samples", samples, ndim=2)
    if samples.shape[1] != mixture.dim or samples.shape[0] < 1:
        raise ValueError(f"samples must have shape [N >= 1, {mixture.dim}], got {tuple(samples.shape)}")
    x = samples.detach().to(_F64).cpu()
    u = _directions(mixture.dim, num_projections)
    px, _ = torch.sort(u @ x.T, dim=1)  # [P, N]
    mu = u @ mixture.means.T  # [P, K]
    sd = torch.sqrt(torch.einsum("pi,kij,pj->pk", u, mixture.covs, u))  # [P, K]
    total = 0.0
    for p in range(num_projections):
        lo = min(float(px[p, 0]), float((mu[p] - 10 * sd[p]).min()))
        hi = max(float(px[p, -1]), float((mu[p] + 10 * sd[p]).max()))
        h = (hi - lo) / grid_size
        z = lo + h * (torch.arange(grid_size, dtype=_F64) + 0.5)
        F = (mixture.weights * torch.special.ndtr((z[:, None] - mu[p]) / sd[p])).sum(1)
        Fn = torch.searchsorted(px[p].contiguous(), z, right=True).to(_F64) / x.shape[0]
        total += float((Fn - F).abs().sum()) * h
    return total / num_projections


def _mean_pairwise_distance(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> float:
    total = torch.zeros((), dtype=_F64)
    for s in range(0, a.shape[0], chunk):
        d = torch.cdist(a[s : s + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
        total = total + d.sum()
    return float(total) / (a.shape[0] * b.shape[0])


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance between the empirical distributions of a [N, d] and b [M, d] (float64):

        E(a, b) = 2 mean_ij |a_i - b_j| - mean_ij |a_i - a_j| - mean_ij |b_i - b_j|

    (Szekely & Rizzo; Euclidean norms, all pairs including i = j, i.e. the V-statistic). It is
    >= 0, 0 if and only if the two empirical distributions are equal, symmetric, and sqrt(E) is a
    metric; it equals the squared MMD with the kernel k(x, y) = -|x - y|. Cost O(N M).
    """
    a, b = _check_clouds(a, b)
    ab = _mean_pairwise_distance(a, b)
    aa = _mean_pairwise_distance(a, a)
    bb = _mean_pairwise_distance(b, b)
    return 2.0 * ab - aa - bb


def mean_log_likelihood(samples: torch.Tensor, mixture: GaussianMixture) -> float:
    """Mean log-density (nats) of ``samples`` [N, d] under the true ``mixture``.

    Its expectation for exact samples is -H(p) (minus the differential entropy); blurry samples
    (mass between modes) score lower. It does NOT detect missing modes or too-sharp samples: all
    mass on one mode's centre scores higher than the data. Read it together with a distance and
    :func:`mode_weights`.
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    check_tensor("samples", samples, ndim=2)
    return float(mixture.log_prob(samples.detach().to(_F64).cpu()).mean())


def mode_weights(samples: torch.Tensor, mixture: GaussianMixture) -> np.ndarray:
    """Fraction of ``samples`` [N, d] assigned to each component (by the largest p(k | x)), [K]:
    compare with ``mixture.weights`` to see missing or over-represented modes."""
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    check_tensor("samples", samples, ndim=2)
    k = mixture.responsibilities(samples.detach().to(_F64).cpu()).argmax(dim=1)
    return np.bincount(k.numpy(), minlength=mixture.num_components) / samples.shape[0]
