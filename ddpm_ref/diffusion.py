"""The Gaussian diffusion of Ho, Jain & Abbeel (2020): coefficients, q, posterior, p, losses, bound.

Timestep convention (read this once)
------------------------------------
The paper numbers the latent steps t = 1..T (x_0 is data, x_T is noise). The code, like the
original implementation, indexes arrays and feeds the network with a 0-based ``t`` in
``{0, ..., T-1}``. **Code index t is the paper's timestep t + 1**::

    paper_t = t + 1              (see :func:`paper_timestep` / :func:`code_timestep`)
    betas[t]                = beta_{t+1}
    alphas_cumprod[t]       = alphabar_{t+1}
    alphas_cumprod_prev[t]  = alphabar_t   (alphabar_0 = 1: padded on the LEFT with 1)
    q_sample(x0, t)         samples x_{t+1} ~ q(x_{t+1} | x_0)
    p_sample(model, x, t)   maps x_{t+1} to x_t (code t = 0 maps x_1 to x_0: no noise added)
    vb term at code t       = the paper's L_t (t = 0: decoder L_0; t >= 1: KL term L_t)

So the array of per-step bound terms ``terms_bpd[:, t]`` is L_t in the paper's own naming, and
the prior term L_T is reported separately.

Everything the paper defines as a function of the schedule is precomputed once, in float64,
under the original code's names (``posterior_mean_coef1``, ``posterior_log_variance_clipped``,
...). Tensors are gathered with :meth:`GaussianDiffusion.extract` and cast to the data's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from . import _validate
from ._validate import check_like, check_tensor, check_timesteps
from .likelihood import LOG2, _discretized_gaussian_log_likelihood, check_pixel_range, mean_flat, normal_kl
from .schedules import get_beta_schedule

MEAN_TYPES = ("eps", "xstart", "xprev")
VAR_TYPES = ("fixedlarge", "fixedsmall", "learned", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A denoising network: ``model(x_t [N, C, ...], t [N] int64 0-based) -> [N, C or 2C, ...]``."""


def paper_timestep(t):
    """Map the code's 0-based timestep to the paper's 1-based one: ``paper_t = t + 1``."""
    return t + 1


def code_timestep(paper_t):
    """Map the paper's 1-based timestep (1..T) to the code's 0-based one: ``t = paper_t - 1``."""
    return paper_t - 1


class GaussianDiffusion:
    """The forward process q, its posterior, the reverse process p_theta, losses and the bound.

    Parameters
    ----------
    betas:
        float64 array [T] of the variance schedule, ``betas[t] = beta_{t+1}`` (eq. 2).
    model_mean_type:
        What the network predicts (Section 3.2): ``"eps"`` (the noise, eq. 11, the paper's
        choice), ``"xstart"`` (x_0) or ``"xprev"`` (the posterior mean mu~_t directly).
    model_var_type:
        Reverse variance Sigma_theta = sigma_t^2 I: ``"fixedlarge"`` (sigma_t^2 = beta_t, with
        the first entry replaced by beta~_1 so that every log-variance is finite; the paper's
        CIFAR-10 choice), ``"fixedsmall"`` (sigma_t^2 = beta~_t), ``"learned"`` (the network's
        second C output channels are log sigma_t^2) or ``"learned_range"`` (Nichol & Dhariwal
        2021: they are v in [-1, 1] interpolating log beta~_t and log beta_t).
    loss_type:
        ``"mse"`` = L_simple (eq. 14) for the chosen target; ``"kl"`` = the true bound term
        L_{t-1} (eq. 5), in bits/dim, with the decoder NLL L_0 at t = 0; ``"hybrid"`` =
        L_simple + hybrid_lambda * T * L_t with the mean frozen in the bound term (Nichol &
        Dhariwal 2021; needs a learned variance).
    hybrid_lambda:
        Weight lambda of the bound in the hybrid loss (0.001 in Nichol & Dhariwal).
    """

    def __init__(
        self,
        betas: np.ndarray,
        *,
        model_mean_type: str = "eps",
        model_var_type: str = "fixedlarge",
        loss_type: str = "mse",
        hybrid_lambda: float = 0.001,
    ):
        if model_mean_type not in MEAN_TYPES:
            raise ValueError(f"model_mean_type must be one of {MEAN_TYPES}, got {model_mean_type!r}")
        if model_var_type not in VAR_TYPES:
            raise ValueError(f"model_var_type must be one of {VAR_TYPES}, got {model_var_type!r}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        learned = model_var_type in ("learned", "learned_range")
        if loss_type == "mse" and learned:
            raise ValueError(
                "loss_type='mse' trains only the mean; with a learned variance use "
                "loss_type='hybrid' (mse + bound) or 'kl'"
            )
        if loss_type == "hybrid" and not learned:
            raise ValueError(
                "loss_type='hybrid' adds a bound term that only trains a learned variance; "
                f"model_var_type={model_var_type!r} is fixed, use 'mse' or 'kl'"
            )
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.hybrid_lambda = float(hybrid_lambda)

        betas = np.asarray(betas)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.issubdtype(betas.dtype, np.floating):
            raise ValueError(f"betas must be floating point, got dtype {betas.dtype}")
        betas = betas.astype(np.float64)
        if not (np.all(np.isfinite(betas)) and np.all(betas > 0) and np.all(betas <= 1)):
            raise ValueError("betas must be finite and lie in (0, 1]")
        if betas[0] >= 1:
            raise ValueError("betas[0] must be < 1 (otherwise x_1 carries no information)")

        #: beta_t, eq. 2. [T] float64.
        self.betas = betas
        self.num_timesteps = T = int(betas.shape[0])
        #: alpha_t = 1 - beta_t (Section 3.2, above eq. 4).
        self.alphas = 1.0 - betas
        #: alphabar_t = prod_{s<=t} alpha_s (eq. 4).
        self.alphas_cumprod = np.cumprod(self.alphas)
        #: alphabar_{t-1}, with alphabar_0 = 1 (left-padded: index 0 is the paper's t = 1).
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        #: alphabar_{t+1}, with 0 appended on the right (used by reverse DDIM / encoders).
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        assert self.alphas_cumprod_prev.shape == (T,)

        # 1 - alphabar_t without cancellation: 1 - prod(1 - beta_s) = -expm1(sum log1p(-beta_s)).
        # (Computed naively it loses ~12 digits at small t, where alphabar_t is within 1e-4 of 1.)
        one_minus_ab = -np.expm1(np.cumsum(np.log1p(-betas)))
        one_minus_ab_prev = np.append(0.0, one_minus_ab[:-1])
        #: 1 - alphabar_t, the variance of q(x_t | x_0) (eq. 4), accurate to the last digit.
        self.one_minus_alphas_cumprod = one_minus_ab

        #: sqrt(alphabar_t): the mean coefficient of q(x_t | x_0) (eq. 4).
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        #: sqrt(1 - alphabar_t): the standard deviation of q(x_t | x_0) (eq. 4).
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(one_minus_ab)
        #: log(1 - alphabar_t): the log-variance of q(x_t | x_0).
        self.log_one_minus_alphas_cumprod = np.log(one_minus_ab)
        #: 1 / sqrt(alphabar_t): x_0 = sqrt_recip * x_t - sqrt_recipm1 * eps (eq. 4 inverted).
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        #: sqrt(1 / alphabar_t - 1).
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(one_minus_ab / self.alphas_cumprod)

        #: beta~_t = (1 - alphabar_{t-1}) / (1 - alphabar_t) * beta_t (eq. 7). Zero at code t = 0.
        self.posterior_variance = betas * one_minus_ab_prev / one_minus_ab
        #: log beta~_t with the t = 0 entry (log 0 = -inf) replaced by log beta~ at code t = 1.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
            if T > 1
            else np.array([betas[0]])
        )
        #: mu~_t = coef1 * x_0 + coef2 * x_t (eq. 7): coef1 = sqrt(alphabar_{t-1}) beta_t / (1 - alphabar_t).
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus_ab
        #: coef2 = sqrt(alpha_t) (1 - alphabar_{t-1}) / (1 - alphabar_t) (eq. 7).
        self.posterior_mean_coef2 = (
            one_minus_ab_prev * np.sqrt(self.alphas) / one_minus_ab
        )
        #: sigma_t^2 of ``fixedlarge``: beta_t, with the first entry replaced by beta~ at code t = 1
        #: (beta~ is 0 at code t = 0, so log beta~ would be -inf there; Section 3.2).
        self.fixedlarge_variance = np.append(
            self.posterior_variance[1] if T > 1 else betas[0], betas[1:]
        )
        self.fixedlarge_log_variance = np.log(self.fixedlarge_variance)

        self._torch_cache: dict[tuple[str, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ helpers
    COEFFICIENT_NAMES = (
        "betas", "alphas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next",
        "one_minus_alphas_cumprod",
        "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
        "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
        "fixedlarge_variance", "fixedlarge_log_variance",
    )  # fmt: skip

    def extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Gather coefficient ``name`` at timesteps ``t`` [N] and shape it [N, 1, ..., 1] like ``x``.

        The float64 table is moved to ``t``'s device once and cached; the gathered values are cast
        to ``x.dtype`` (so float32 data gets float32 coefficients, rounded from float64).
        """
        key = (name, t.device)
        table = self._torch_cache.get(key)
        if table is None:
            arr = getattr(self, name)
            # MPS has no float64: keep float32 there
            dtype = torch.float32 if t.device.type == "mps" else torch.float64
            table = torch.as_tensor(arr, dtype=dtype, device=t.device)
            self._torch_cache[key] = table
        out = table[t].to(x.dtype)
        return out.reshape((t.shape[0],) + (1,) * (x.ndim - 1))

    def _check_xt(self, x: torch.Tensor, t: torch.Tensor, name: str = "x") -> None:
        check_tensor(name, x)
        check_timesteps(t, x, self.num_timesteps)

    def _noise_like(self, x, noise, generator, name="noise"):
        if noise is None:
            return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        check_like(name, noise, "x", x)
        check_tensor(name, noise)
        return noise

    # ------------------------------------------------------------------ forward process q
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I) (eq. 4).

        ``x_start`` [N, ...], ``t`` [N] (code timesteps). Variances have shape [N, 1, ..., 1].
        """
        self._check_xt(x_start, t, "x_start")
        mean = self.extract("sqrt_alphas_cumprod", t, x_start) * x_start
        var = self.extract("one_minus_alphas_cumprod", t, x_start)
        log_var = self.extract("log_one_minus_alphas_cumprod", t, x_start)
        return mean, var, log_var

    def q_sample(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0): x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps (eq. 4; eq. 9).

        ``noise`` (same shape, dtype and device as ``x_start``) is eps; drawn from ``generator`` if None.
        """
        self._check_xt(x_start, t, "x_start")
        noise = self._noise_like(x_start, noise, generator)
        return (
            self.extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """The forward-process posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) (eq. 6-7).

        mu~_t = posterior_mean_coef1 * x_0 + posterior_mean_coef2 * x_t. Returns
        ``(mean [N, ...], variance [N, 1, ...], log_variance_clipped [N, 1, ...])``; at code t = 0 the
        variance is 0 and its log is clipped to log beta~ of code t = 1 (never used as a variance there).
        """
        self._check_xt(x_t, t, "x_t")
        check_like("x_start", x_start, "x_t", x_t)
        check_tensor("x_start", x_start)
        mean = (
            self.extract("posterior_mean_coef1", t, x_t) * x_start
            + self.extract("posterior_mean_coef2", t, x_t) * x_t
        )
        var = self.extract("posterior_variance", t, x_t)
        log_var = self.extract("posterior_log_variance_clipped", t, x_t)
        return mean, var, log_var

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
        """x_0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t): eq. 4 solved for x_0 (used in eq. 15)."""
        self._check_xt(x_t, t, "x_t")
        check_like("eps", eps, "x_t", x_t)
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor):
        """eps = (x_t / sqrt(alphabar_t) - x_0) / sqrt(1 / alphabar_t - 1): eq. 4 solved for eps."""
        self._check_xt(x_t, t, "x_t")
        check_like("pred_xstart", pred_xstart, "x_t", x_t)
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart
        ) / self.extract("sqrt_recipm1_alphas_cumprod", t, x_t)

    def predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor):
        """x_0 from the posterior mean: x_0 = (mu~_t - coef2 x_t) / coef1 (eq. 7 solved for x_0)."""
        self._check_xt(x_t, t, "x_t")
        check_like("xprev", xprev, "x_t", x_t)
        return (
            xprev - self.extract("posterior_mean_coef2", t, x_t) * x_t
        ) / self.extract("posterior_mean_coef1", t, x_t)

    # ------------------------------------------------------------------ reverse process p
    def model_output_channels(self, data_channels: int) -> int:
        """Channels the network must output: C, or 2C when the variance is learned."""
        return 2 * data_channels if self.model_var_type in ("learned", "learned_range") else data_channels

    def _split_output(self, output: torch.Tensor, x: torch.Tensor):
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"model must return a torch.Tensor, got {type(output).__name__}")
        C = x.shape[1] if x.ndim > 1 else 1
        want = (x.shape[0], self.model_output_channels(C)) + tuple(x.shape[2:])
        if x.ndim < 2 or tuple(output.shape) != want:
            raise ValueError(
                f"model output must have shape {want} for x of shape {tuple(x.shape)} and "
                f"model_var_type={self.model_var_type!r}, got {tuple(output.shape)}"
            )
        if output.dtype != x.dtype:
            output = output.to(x.dtype)  # e.g. bf16 autocast output for float32 data
        if self.model_var_type in ("learned", "learned_range"):
            return output[:, :C], output[:, C:]
        return output, None

    def p_mean_variance_from_output(
        self,
        output: torch.Tensor,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I) given the network's output at (x_t, t).

        Returns a dict with ``mean``, ``variance``, ``log_variance`` (broadcastable to x),
        ``pred_xstart`` (x0-hat, clipped to [-1, 1] if ``clip_denoised``, as in Algorithm 2's
        original implementation) and ``model_output`` (the mean part of the output).

        - eps (eq. 11): x0-hat = predict_xstart_from_eps, mean = mu~_t(x0-hat, x_t).
        - xstart: x0-hat = output, mean = mu~_t(x0-hat, x_t).
        - xprev: mean = output (not clipped), x0-hat recovered from it.
        """
        self._check_xt(x, t)
        mean_out, var_out = self._split_output(output, x)

        if self.model_var_type == "fixedlarge":
            variance = self.extract("fixedlarge_variance", t, x)
            log_variance = self.extract("fixedlarge_log_variance", t, x)
        elif self.model_var_type == "fixedsmall":
            variance = self.extract("posterior_variance", t, x)
            log_variance = self.extract("posterior_log_variance_clipped", t, x)
        elif self.model_var_type == "learned":
            log_variance = var_out
            variance = torch.exp(log_variance)
        else:  # learned_range: v in [-1, 1] -> interpolate between log beta~_t and log beta_t
            min_log = self.extract("posterior_log_variance_clipped", t, x)
            max_log = torch.log(self.extract("betas", t, x))
            frac = (var_out + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)

        def maybe_clip(v):
            return v.clamp(-1.0, 1.0) if clip_denoised else v

        if self.model_mean_type == "xprev":
            pred_xstart = maybe_clip(self.predict_xstart_from_xprev(x, t, mean_out))
            mean = mean_out
        else:
            if self.model_mean_type == "xstart":
                pred_xstart = maybe_clip(mean_out)
            else:
                pred_xstart = maybe_clip(self.predict_xstart_from_eps(x, t, mean_out))
            mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "model_output": mean_out,
        }

    def p_mean_variance(
        self, model: Model, x: torch.Tensor, t: torch.Tensor, *, clip_denoised: bool = True
    ) -> dict[str, torch.Tensor]:
        """Run ``model(x, t)`` and return :meth:`p_mean_variance_from_output` of its output."""
        self._check_xt(x, t)
        return self.p_mean_variance_from_output(
            self.call_model(model, x, t), x, t, clip_denoised=clip_denoised
        )

    def call_model(self, model: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Evaluate the network at code timesteps ``t`` (a respaced diffusion maps them first)."""
        return model(x, t)

    def p_sample(
        self,
        model: Model,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One step of Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with z = 0 at code t = 0.

        Returns ``{"sample": x_{t-1}, "pred_xstart": x0-hat, "mean", "log_variance"}``.
        """
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised)
        noise = self._noise_like(x, noise, generator)
        nonzero = (t != 0).to(x.dtype).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {
            "sample": sample,
            "pred_xstart": out["pred_xstart"],
            "mean": out["mean"],
            "log_variance": out["log_variance"],
        }

    # ------------------------------------------------------------------ bound and losses
    def vb_terms_bpd_from_output(
        self,
        output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        clip_denoised: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The bound term at code t in bits/dim, per example: [N].

        t >= 1: L_t = KL(q(x_t | x_{t+1}, x_0) || p_theta(x_t | x_{t+1})) (paper indices, eq. 5),
        averaged over dimensions and divided by log 2. t = 0: the decoder term
        L_0 = -log p_theta(x_0 | x_1) (eq. 13), likewise per dimension in bits.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance_from_output(output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / LOG2
        if _validate._VALUE_CHECKS:  # the decoder is only defined for pixel data, needed where t = 0
            check_pixel_range("x_start (where t = 0)", x_start[t == 0])
        decoder_nll = -mean_flat(
            _discretized_gaussian_log_likelihood(
                x_start, out["mean"], (0.5 * out["log_variance"]).expand_as(x_start), "exact"
            )
        ) / LOG2
        return {
            "output": torch.where(t == 0, decoder_nll, kl),
            "pred_xstart": out["pred_xstart"],
        }

    def training_losses(
        self,
        model: Model,
        x_start: torch.Tensor,
        t: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example training loss at timesteps ``t`` (Algorithm 1), shape [N].

        ``mse`` (L_simple, eq. 14): mean over pixels of ||target - model(x_t, t)||^2 with target
        eps, x_0 or mu~_t according to ``model_mean_type``. ``kl``: the bound term of
        :meth:`vb_terms_bpd_from_output` (eq. 5; bits/dim). ``hybrid``: mse + lambda * T * bound
        term, with the mean detached in the bound term so that it trains the variance only.
        Returns ``{"loss": [N], ...}`` with the parts (``"mse"``, ``"vb"``) that were computed.
        """
        self._check_xt(x_start, t, "x_start")
        noise = self._noise_like(x_start, noise, generator)
        x_t = self.q_sample(x_start, t, noise)
        output = self.call_model(model, x_t, t)
        mean_out, var_out = self._split_output(output, x_t)
        terms: dict[str, torch.Tensor] = {}

        if self.loss_type == "kl":
            terms["vb"] = self.vb_terms_bpd_from_output(output, x_start, x_t, t)["output"]
            terms["loss"] = terms["vb"]
            return terms

        if self.model_mean_type == "eps":
            target = noise
        elif self.model_mean_type == "xstart":
            target = x_start
        else:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        terms["mse"] = mean_flat((target - mean_out) ** 2)
        if self.loss_type == "hybrid":
            frozen = torch.cat([mean_out.detach(), var_out], dim=1)
            terms["vb"] = self.vb_terms_bpd_from_output(frozen, x_start, x_t, t)["output"]
            terms["loss"] = terms["mse"] + self.hybrid_lambda * self.num_timesteps * terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    def prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example in bits/dim, shape [N] (eq. 5).

        Has no learnable parameter; about 1e-5 bits/dim for the paper's schedule (Section 4, first paragraph).
        """
        check_tensor("x_start", x_start)
        n = x_start.shape[0]
        t = torch.full((n,), self.num_timesteps - 1, dtype=torch.long, device=x_start.device)
        mean, _, log_var = self.q_mean_variance(x_start, t)
        kl = normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var))
        return mean_flat(kl) / LOG2

    @torch.no_grad()
    def calc_bpd_loop(
        self,
        model: Model,
        x_start: torch.Tensor,
        *,
        clip_denoised: bool = True,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The full variational bound (eq. 3/5) for a batch, in bits/dim, with its breakdown.

        For every code t (T-1 down to 0) draws x_t ~ q(x_t | x_0) independently and evaluates the
        bound term. Returns

        - ``total_bpd`` [N]: L_T + sum_t terms = the negative ELBO in bits/dim (an upper bound on
          -log2 p(x_0) / D),
        - ``prior_bpd`` [N]: L_T,
        - ``terms_bpd`` [N, T]: column t is the paper's L_t (column 0 is the decoder L_0),
        - ``xstart_mse`` [N, T] and ``eps_mse`` [N, T]: squared errors of x0-hat and of the implied
          eps per step (used for the rate-distortion plot of Section 4.3).
        """
        check_tensor("x_start", x_start, ndim_min=2)
        N, T = x_start.shape[0], self.num_timesteps
        terms = torch.zeros(N, T, dtype=x_start.dtype, device=x_start.device)
        xstart_mse = torch.zeros_like(terms)
        eps_mse = torch.zeros_like(terms)
        for t_int in tqdm(range(T - 1, -1, -1), disable=not progress, desc="bound", leave=False):
            t = torch.full((N,), t_int, dtype=torch.long, device=x_start.device)
            noise = torch.randn(
                x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype
            )
            x_t = self.q_sample(x_start, t, noise)
            output = self.call_model(model, x_t, t)
            vb = self.vb_terms_bpd_from_output(output, x_start, x_t, t, clip_denoised=clip_denoised)
            terms[:, t_int] = vb["output"]
            xstart_mse[:, t_int] = mean_flat((vb["pred_xstart"] - x_start) ** 2)
            eps = self.predict_eps_from_xstart(x_t, t, vb["pred_xstart"])
            eps_mse[:, t_int] = mean_flat((eps - noise) ** 2)
        prior = self.prior_bpd(x_start)
        return {
            "total_bpd": terms.sum(dim=1) + prior,
            "prior_bpd": prior,
            "terms_bpd": terms,
            "xstart_mse": xstart_mse,
            "eps_mse": eps_mse,
        }

    @torch.no_grad()
    def estimate_bpd(
        self,
        model: Model,
        x_start: torch.Tensor,
        *,
        t_samples: int,
        generator: torch.Generator | None = None,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """An unbiased estimate of the bound (eq. 5) in bits/dim from K + 1 network evaluations per image.

        ``x_start`` [N, C, ...] in [-1, 1]; K = ``t_samples`` in [1, T-1]. With the paper's indices,

            L = L_T + sum_{t=1}^{T-1} L_t + L_0,

        and this method computes

        - L_T exactly (:meth:`prior_bpd`, no network);
        - L_0 (eq. 13) from one draw of x_1, exactly as :meth:`calc_bpd_loop` does (1 evaluation);
        - the KL sum by stratified importance sampling (K evaluations): the strata and proposal p
          of :func:`bound_strata`; in stratum k (proposal mass P_k) each of its m_k draws takes
          t ~ p(t) / P_k and a fresh x_t ~ q(x_t | x_0), and contributes y = L_t(x_t) P_k / p(t);
          the estimate is sum_k mean_j y_kj. Each image gets its own timesteps and noise.

        E[estimate] = L_T + sum_t E_q[L_t] + E_q[L_0], the expectation of :meth:`calc_bpd_loop`'s
        total. Returns float64 [N] tensors (float32 on MPS):

        - ``total_bpd``, ``prior_bpd`` (L_T), ``decoder_bpd`` (L_0), ``kl_bpd`` (the estimated sum);
        - ``kl_bpd_stderr``: sqrt(sum_k s_k^2 / m_k) with s_k^2 the sample variance of y in stratum
          k, an unbiased variance estimate of ``kl_bpd`` over the draws of t and x_t (NaN for K = 1,
          where a single draw has no spread);
        - ``total_bpd_stderr``: the same number: L_T is exact, and the one draw of x_1 behind L_0 is
          the same single draw the full loop uses (its spread, about 0.02 bits/dim for the book's
          small model, is not included; it is included in a standard error taken over images).
        """
        check_tensor("x_start", x_start, ndim_min=2)
        T = self.num_timesteps
        strata = bound_strata(T, t_samples)
        N, dev = x_start.shape[0], x_start.device
        fdt = torch.float32 if dev.type == "mps" else torch.float64

        def term(t: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(x_start.shape, generator=generator, device=dev, dtype=x_start.dtype)
            x_t = self.q_sample(x_start, t, noise)
            out = self.call_model(model, x_t, t)
            vb = self.vb_terms_bpd_from_output(out, x_start, x_t, t, clip_denoised=clip_denoised)
            return vb["output"].to(fdt)

        decoder = term(torch.zeros(N, dtype=torch.long, device=dev))
        prob = torch.as_tensor(strata.prob, dtype=fdt, device=dev)
        kl = torch.zeros(N, dtype=fdt, device=dev)
        kl_var = torch.zeros(N, dtype=fdt, device=dev)
        for k, m in enumerate(strata.samples):
            lo, hi = int(strata.edges[k]), int(strata.edges[k + 1])
            mass = float(strata.mass[k])
            inner_cdf = torch.cumsum(prob[lo:hi], 0) / mass  # p(t' <= t | stratum k), t in [lo, hi)
            ys = []
            for _ in range(int(m)):
                u = torch.rand(N, generator=generator, device=dev, dtype=fdt)
                idx = torch.searchsorted(inner_cdf, u, right=True).clamp(max=hi - lo - 1)
                t = (lo + idx).to(torch.long)
                ys.append(term(t) * mass / prob[t])
            y = torch.stack(ys, dim=1)  # [N, m]
            kl = kl + y.mean(dim=1)
            kl_var = kl_var + (y.var(dim=1) / m if m > 1 else torch.full_like(kl, float("nan")))
        prior = self.prior_bpd(x_start).to(fdt)
        stderr = kl_var.sqrt()
        return {
            "total_bpd": prior + decoder + kl,
            "total_bpd_stderr": stderr,
            "prior_bpd": prior,
            "decoder_bpd": decoder,
            "kl_bpd": kl,
            "kl_bpd_stderr": stderr.clone(),
        }



class BoundStrata(NamedTuple):
    """How :meth:`GaussianDiffusion.estimate_bpd` samples the T-1 KL terms (see :func:`bound_strata`).

    - ``edges`` [S+1] int: stratum k holds the code timesteps ``edges[k] <= t < edges[k+1]``;
      ``edges[0] = 1`` and ``edges[S] = T``, so the strata partition {1, ..., T-1} (the paper's
      KL terms L_1 .. L_{T-1}; code t = 0 is the decoder L_0, never sampled).
    - ``samples`` [S] int: draws per stratum, summing to K (2 each, 3 in stratum 0 when K is odd;
      1 when K = 1).
    - ``prob`` [T] float64: the proposal p(t) = (1/t) / sum_{s=1}^{T-1} (1/s) for t >= 1, p(0) = 0.
    - ``mass`` [S] float64: p(stratum k) = sum of ``prob`` over the stratum.
    """

    edges: np.ndarray
    samples: np.ndarray
    prob: np.ndarray
    mass: np.ndarray


def check_t_samples(t_samples, num_timesteps: int) -> int:
    """Validate K for :meth:`GaussianDiffusion.estimate_bpd`: an int in [1, T-1]."""
    if isinstance(t_samples, bool) or not isinstance(t_samples, (int, np.integer)):
        raise ValueError(f"t_samples must be an int, got {type(t_samples).__name__}")
    if num_timesteps < 2:
        raise ValueError("a diffusion with T = 1 has no KL terms to sample; use calc_bpd_loop")
    if not 1 <= int(t_samples) <= num_timesteps - 1:
        raise ValueError(
            f"t_samples must lie in [1, T-1] = [1, {num_timesteps - 1}] (the number of KL terms), "
            f"got {int(t_samples)}"
        )
    return int(t_samples)


def bound_strata(num_timesteps: int, t_samples: int) -> BoundStrata:
    """Strata and proposal for estimating sum_{t=1}^{T-1} L_t (paper indices) from K = ``t_samples`` terms.

    The proposal is p(t) proportional to 1/t: for an eps-predicting model the weight of eq. 12,
    beta_t^2 / (2 sigma_t^2 alpha_t (1 - alphabar_t)), falls like 1/(2t) at small t, where almost all
    of the KL sum of a trained model lies (chapter 5). S = max(1, K // 2) contiguous strata of
    about equal proposal mass (the first ones may be single timesteps), each with at least two
    draws when K >= 2, so that the within-stratum variance, and hence the standard error, has an
    unbiased estimate. Any partition and any proposal that is positive on {1, ..., T-1} give an
    unbiased estimator; these choices only set its variance.
    """
    T = int(num_timesteps)
    K = check_t_samples(t_samples, T)
    S = max(1, K // 2)
    samples = np.full(S, 2 if K >= 2 else 1, dtype=np.int64)
    samples[0] += K - int(samples.sum())  # K odd: one extra draw in the first stratum
    weight = np.zeros(T)
    weight[1:] = 1.0 / np.arange(1, T)
    prob = weight / weight.sum()
    cum = np.cumsum(prob)  # cum[t] = p(t' <= t)
    edges = [1]
    for k in range(1, S):
        # first e with p(t < e) >= k / S, kept strictly increasing with room for the strata left
        e = int(np.searchsorted(cum, k / S, side="left")) + 1
        edges.append(min(max(e, edges[-1] + 1), T - (S - k)))
    edges.append(T)
    edges = np.asarray(edges, dtype=np.int64)
    mass = np.array([prob[a:b].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return BoundStrata(edges, samples, prob, mass)


def make_diffusion(
    schedule: str = "linear",
    num_timesteps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    **kwargs,
) -> GaussianDiffusion:
    """Build a :class:`GaussianDiffusion` from a named schedule (defaults: the paper's T = 1000,
    linear 1e-4..0.02, eps / fixedlarge / mse). Extra keyword arguments go to the constructor."""
    betas = get_beta_schedule(
        schedule, beta_start=beta_start, beta_end=beta_end, num_diffusion_timesteps=num_timesteps
    )
    return GaussianDiffusion(betas, **kwargs)
