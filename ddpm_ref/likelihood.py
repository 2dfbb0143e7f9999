"""Likelihood pieces of the variational bound (paper eq. 5, 13; Appendix A).

- :func:`normal_kl`: KL divergence between two diagonal Gaussians, element by element, in nats.
  Every L_{t-1} of eq. 5 is a sum of these over the D data dimensions.
- :func:`discretized_gaussian_log_likelihood`: the decoder p_theta(x_0 | x_1) of eq. 13, which
  integrates a Gaussian over the bin of width 2/255 around each of the 256 pixel levels in
  [-1, 1], with the edge bins extended to -inf and +inf so that the 256 probabilities sum to 1.
- :func:`mean_flat` and :data:`LOG2`: per-example means over all non-batch dimensions and the
  conversion from nats to bits, so that a term divided by ``D * log 2`` is in bits/dim.
"""

from __future__ import annotations

import math

import torch

from . import _validate
from ._validate import check_tensor

LOG2 = math.log(2.0)
"""Nats per bit: a quantity in nats divided by ``LOG2`` is in bits."""

HALF_BIN = 1.0 / 255.0
"""Half the width of one pixel bin when 256 levels are mapped to [-1, 1] (bin width 2/255)."""


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions except the first: [N, ...] -> [N]."""
    check_tensor("x", x, finite=False)
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _check_broadcast(name: str, v: torch.Tensor, ref: torch.Tensor) -> None:
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    try:
        shape = torch.broadcast_shapes(v.shape, ref.shape)
    except RuntimeError:
        shape = None
    if shape != ref.shape:
        raise ValueError(
            f"{name} with shape {tuple(v.shape)} must broadcast to the mean's shape "
            f"{tuple(ref.shape)} without enlarging it"
        )
    if v.device != ref.device:
        raise ValueError(f"{name} is on {v.device} but the mean is on {ref.device}")


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ) element by element, in nats.

    KL = 1/2 [ logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1 ]
    (derived symbolically in the variational-bound chapter, eq. 17-22 of Appendix A).

    ``mean1`` and ``mean2`` must have the same shape; the log-variances may be broadcastable
    to it (e.g. shape [N, 1, 1, 1]) but must not enlarge it. Returns a tensor of that shape.
    """
    check_tensor("mean1", mean1, ndim_min=0)
    check_tensor("mean2", mean2, ndim_min=0)
    if mean1.shape != mean2.shape:
        raise ValueError(
            f"mean1 and mean2 must have the same shape, got {tuple(mean1.shape)} and "
            f"{tuple(mean2.shape)}"
        )
    if mean1.device != mean2.device:
        raise ValueError(f"mean1 is on {mean1.device} but mean2 is on {mean2.device}")
    for name, v in (("logvar1", logvar1), ("logvar2", logvar2)):
        _check_broadcast(name, v, mean1)
        check_tensor(name, v, ndim_min=0)
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x), the exact standard normal CDF."""
    return torch.special.ndtr(x)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of Phi used by the original TensorFlow code (max error ~3e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _log_gaussian_bin_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, accurate in both tails.

    In the upper tail both CDFs are close to 1 and their difference cancels; by symmetry
    Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), so the bin is reflected into the lower tail first.
    Then log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - exp(log Phi(a) - log Phi(b))).
    """
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    d = (log_a - log_b).clamp(max=-1e-30)  # < 0 because a < b
    # log(1 - e^d): log(-expm1(d)) is accurate for d near 0, log1p(-exp(d)) for d << 0
    log1mexp = torch.where(d > -LOG2, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))
    return log_b + log1mexp


def discretized_gaussian_log_likelihood(
    x: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    *,
    cdf: str = "exact",
) -> torch.Tensor:
    """Log-likelihood of pixel values under the discretised Gaussian decoder of eq. 13, in nats.

    ``x``: data in [-1, 1] on the 256-level grid {-1, -1 + 2/255, ..., 1}, shape [N, ...].
    ``means``: Gaussian means, same shape as ``x``. ``log_scales``: log standard deviations,
    broadcastable to ``x``'s shape. Returns log p(x) element by element (same shape as ``x``).

    For an interior level x the probability is Phi((x + 1/255 - mu)/sigma) - Phi((x - 1/255 - mu)/sigma);
    the lowest level (x = -1) takes everything below -1 + 1/255 and the highest (x = 1)
    everything above 1 - 1/255, exactly as eq. 13's delta_- and delta_+.

    ``cdf="exact"`` (default) uses the exact normal CDF with a tail-stable log-difference.
    ``cdf="tf_original"`` reproduces the original TensorFlow code: the tanh approximation of
    Phi and logs clamped at 1e-12 (used when matching the original's numbers bit for bit).
    """
    check_tensor("x", x)
    check_tensor("means", means)
    if means.shape != x.shape:
        raise ValueError(
            f"means must have the same shape as x {tuple(x.shape)}, got {tuple(means.shape)}"
        )
    _check_broadcast("log_scales", log_scales, x)
    check_tensor("log_scales", log_scales, ndim_min=0)
    if _validate._VALUE_CHECKS:
        check_pixel_range("x", x)
    return _discretized_gaussian_log_likelihood(x, means, log_scales, cdf)


def check_pixel_range(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every value of ``x`` lies in [-1, 1] (a value check)."""
    if x.numel() and (float(x.min()) < -1.0 - 1e-6 or float(x.max()) > 1.0 + 1e-6):
        raise ValueError(
            f"{name} must lie in [-1, 1] (pixels scaled as v/127.5 - 1), got range "
            f"[{float(x.min()):.4g}, {float(x.max()):.4g}]"
        )


def _discretized_gaussian_log_likelihood(x, means, log_scales, cdf):
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered + HALF_BIN)
    min_in = inv_stdv * (centered - HALF_BIN)
    lowest = x < -0.999
    highest = x > 0.999
    if cdf == "exact":
        log_cdf_plus = torch.special.log_ndtr(plus_in)
        log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
        log_delta = _log_gaussian_bin_mass(min_in, plus_in)
    elif cdf == "tf_original":
        cdf_plus = approx_standard_normal_cdf(plus_in)
        cdf_min = approx_standard_normal_cdf(min_in)
        log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
        log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
        log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    else:
        raise ValueError(f"cdf must be 'exact' or 'tf_original', got {cdf!r}")
    log_probs = torch.where(
        lowest, log_cdf_plus, torch.where(highest, log_one_minus_cdf_min, log_delta)
    )
    assert log_probs.shape == x.shape
    return log_probs


def pixel_levels(dtype=torch.float64, device=None) -> torch.Tensor:
    """The 256 pixel levels in [-1, 1]: v / 127.5 - 1 for v = 0..255, shape [256]."""
    return torch.arange(256, dtype=dtype, device=device) / 127.5 - 1.0


def nats_to_bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Convert a total (summed over dimensions) negative log-likelihood in nats to bits/dim."""
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    return nats / (num_dims * LOG2)

