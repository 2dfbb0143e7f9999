"""Gaussian KL against quadrature, the discretised decoder (eq. 13) against scipy and its normalisation."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from ddpm_ref.likelihood import (
    LOG2,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    mean_flat,
    nats_to_bits_per_dim,
    normal_kl,
    pixel_levels,
)


def t64(*v):
    return torch.tensor(v, dtype=torch.float64)


@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 1.3), (1.0, 2.0, 0.0, 0.7)])
def test_normal_kl_against_quadrature(m1, s1, m2, s2):
    p, q = norm(m1, s1), norm(m2, s2)
    quad, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -np.inf, np.inf, epsabs=1e-13)
    kl = normal_kl(t64(m1), t64(2 * math.log(s1)), t64(m2), t64(2 * math.log(s2)))
    assert kl.item() == pytest.approx(quad, abs=1e-10)


def test_normal_kl_is_elementwise_and_broadcasts_logvars_only():
    m1 = torch.zeros(2, 3, dtype=torch.float64)
    m2 = torch.ones(2, 3, dtype=torch.float64)
    lv = torch.zeros(2, 1, dtype=torch.float64)
    kl = normal_kl(m1, lv, m2, lv)
    assert kl.shape == (2, 3) and torch.allclose(kl, torch.full_like(m1, 0.5))
    with pytest.raises(ValueError, match="must broadcast to the mean's shape"):
        normal_kl(m1, torch.zeros(4, 2, 3, dtype=torch.float64), m2, lv)
    with pytest.raises(ValueError, match="same shape"):
        normal_kl(m1, lv, m2[:1], lv)
    with pytest.raises(ValueError, match="non-finite"):
        normal_kl(m1, lv, m2, lv + float("nan"))


def test_tf_cdf_approximation_is_close():
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    err = (approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max().item()
    assert 1e-5 < err < 3e-4  # a real approximation, and a good one


@pytest.mark.parametrize("cdf", ["exact", "tf_original"])
@pytest.mark.parametrize("mu, log_s", [(0.0, -3.0), (0.9, -5.0), (-0.97, -2.0), (0.2, 1.0), (3.0, -4.0)])
def test_decoder_probabilities_sum_to_one(cdf, mu, log_s):
    x = pixel_levels()  # all 256 bins
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mu), torch.full_like(x, log_s), cdf=cdf)
    total = torch.exp(logp).sum().item()
    tol = 1e-12 if cdf == "exact" else 1e-6  # the tf version clamps tiny masses at 1e-12
    assert total == pytest.approx(1.0, abs=tol)


def test_decoder_bins_against_scipy():
    x = pixel_levels()
    mu, s = 0.123, 0.02
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mu), torch.full_like(x, math.log(s)))
    xs = x.numpy()
    upper = np.where(xs > 0.999, np.inf, xs + 1 / 255)
    lower = np.where(xs < -0.999, -np.inf, xs - 1 / 255)
    # above the mean, difference the survival functions (the CDFs are both ~1 there and cancel)
    mass = np.where(
        lower > mu, norm.sf(lower, mu, s) - norm.sf(upper, mu, s), norm.cdf(upper, mu, s) - norm.cdf(lower, mu, s)
    )
    ok = mass > 1e-300
    assert np.allclose(np.exp(logp.numpy()[ok]), mass[ok], rtol=1e-9, atol=1e-300)


def test_decoder_is_stable_far_in_the_tails():
    # the bin at 0.5 for N(-0.9, 0.01^2) has mass ~ exp(-9800): must stay finite and exact in log space
    x = t64(0.5)
    logp = discretized_gaussian_log_likelihood(x, t64(-0.9), t64(math.log(0.01))).item()
    lo, hi = (0.5 - 1 / 255 + 0.9) / 0.01, (0.5 + 1 / 255 + 0.9) / 0.01
    ref = norm.logsf(lo) + math.log(-math.expm1(norm.logsf(hi) - norm.logsf(lo)))
    assert math.isfinite(logp) and logp == pytest.approx(ref, rel=1e-10)
    # the upper tail, mirrored
    logp2 = discretized_gaussian_log_likelihood(-x, t64(0.9), t64(math.log(0.01))).item()
    assert logp2 == pytest.approx(ref, rel=1e-10)


def test_decoder_rejects_bad_inputs():
    x = pixel_levels()[:4]
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        discretized_gaussian_log_likelihood(x * 3, x, torch.zeros_like(x))
    with pytest.raises(ValueError, match="means must have the same shape"):
        discretized_gaussian_log_likelihood(x, x[:2], torch.zeros_like(x))
    with pytest.raises(ValueError, match="cdf must be"):
        discretized_gaussian_log_likelihood(x, x, torch.zeros_like(x), cdf="logistic")


def test_mean_flat_and_units():
    x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    assert torch.equal(mean_flat(x), t64(5.5, 17.5))
    assert nats_to_bits_per_dim(3072 * LOG2, 3072) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="num_dims must be positive"):
        nats_to_bits_per_dim(1.0, 0)
