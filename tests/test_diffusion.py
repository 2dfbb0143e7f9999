"""GaussianDiffusion: coefficients, q, posterior, p, losses and the bound.

Closed forms are checked in float64 against independent computations (explicit products, the
precision form of the posterior, Gaussian conditioning), the sampling formulas by Monte Carlo
with tolerances of several standard errors, and the bound on a perfect-knowledge toy against its
closed form computed with scipy.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpm_ref.diffusion import GaussianDiffusion, code_timestep, make_diffusion, paper_timestep
from ddpm_ref.likelihood import LOG2

T = 1000


@pytest.fixture(scope="module")
def diff():
    return make_diffusion("linear", T)


def long(*v):
    return torch.tensor(v, dtype=torch.long)


# ---------------------------------------------------------------- coefficients
def test_timestep_mapping():
    assert paper_timestep(0) == 1 and paper_timestep(999) == 1000
    assert code_timestep(1) == 0 and code_timestep(1000) == 999
    assert torch.equal(paper_timestep(torch.arange(3)), torch.tensor([1, 2, 3]))


def test_alphas_cumprod_is_the_explicit_product(diff):
    for t in (0, 1, 10, 499, 999):
        explicit = math.prod(1.0 - diff.betas[s] for s in range(t + 1))
        assert diff.alphas_cumprod[t] == pytest.approx(explicit, rel=1e-13)
    assert diff.alphas_cumprod.dtype == np.float64


def test_prev_is_padded_on_the_left_and_next_on_the_right(diff):
    assert diff.alphas_cumprod_prev[0] == 1.0  # alphabar_0 = 1
    assert np.array_equal(diff.alphas_cumprod_prev[1:], diff.alphas_cumprod[:-1])
    assert np.array_equal(diff.alphas_cumprod_next[:-1], diff.alphas_cumprod[1:])
    assert diff.alphas_cumprod_next[-1] == 0.0


def test_one_minus_alphas_cumprod_is_exact_to_the_last_digits(diff):
    # exact rational arithmetic on the float64 betas: no cancellation anywhere
    from fractions import Fraction

    for t in (0, 1, 10, 100, 999):
        exact = 1 - math.prod(1 - Fraction(float(b)) for b in diff.betas[: t + 1])
        assert diff.one_minus_alphas_cumprod[t] == pytest.approx(float(exact), rel=1e-14)
    # the naive 1 - alphabar loses digits at small t; ours does not
    naive = 1 - diff.alphas_cumprod[0]
    assert abs(naive / diff.betas[0] - 1) > 1e-14
    assert diff.one_minus_alphas_cumprod[0] == pytest.approx(diff.betas[0], rel=1e-15)


def test_derived_arrays(diff):
    a, oma = diff.alphas_cumprod, diff.one_minus_alphas_cumprod
    assert np.allclose(a + oma, 1, rtol=0, atol=1e-15)
    assert np.allclose(diff.sqrt_alphas_cumprod**2, a, rtol=1e-15, atol=0)
    assert np.allclose(diff.sqrt_one_minus_alphas_cumprod**2, oma, rtol=1e-15, atol=0)
    assert np.allclose(np.exp(diff.log_one_minus_alphas_cumprod), oma, rtol=1e-14, atol=0)
    assert np.allclose(diff.sqrt_recip_alphas_cumprod * diff.sqrt_alphas_cumprod, 1, rtol=1e-15)
    assert np.allclose(diff.sqrt_recipm1_alphas_cumprod**2, oma / a, rtol=1e-14, atol=0)


def test_posterior_variance_is_the_inverse_of_summed_precisions(diff):
    # 1 / beta~_t = alpha_t / beta_t + 1 / (1 - alphabar_{t-1})  (completing the square, eq. 6-7)
    t = np.arange(1, T)  # code t >= 1 (at code t = 0 the prior precision is infinite)
    precision = diff.alphas[t] / diff.betas[t] + 1.0 / (1.0 - diff.alphas_cumprod_prev[t])
    assert np.allclose(diff.posterior_variance[t], 1.0 / precision, rtol=1e-12, atol=0)
    assert diff.posterior_variance[0] == 0.0
    # log clipped: entry 0 copies entry 1, the rest is log beta~
    assert diff.posterior_log_variance_clipped[0] == diff.posterior_log_variance_clipped[1]
    assert np.allclose(np.exp(diff.posterior_log_variance_clipped[1:]), diff.posterior_variance[1:], rtol=1e-14)


def test_posterior_mean_coefs_by_gaussian_conditioning(diff):
    # Given x0: x_{t-1} = sqrt(ab_prev) x0 + e1 (var 1 - ab_prev), x_t = sqrt(a_t) x_{t-1} + e2 (var b_t).
    # Regress x_{t-1} on x_t: slope = Cov / Var(x_t) = sqrt(a_t)(1 - ab_prev) / (1 - ab_t) = coef2, and
    # intercept = sqrt(ab_prev) x0 - slope * sqrt(ab_t) x0 = coef1 x0.
    t = np.arange(T)
    a, ab, abp = diff.alphas[t], diff.alphas_cumprod[t], diff.alphas_cumprod_prev[t]
    slope = np.sqrt(a) * (1 - abp) / (1 - ab)
    intercept = np.sqrt(abp) - slope * np.sqrt(ab)
    resid = (1 - abp) - slope**2 * (1 - ab)
    # (the naive 1 - alphabar here cancels ~12 digits at small t: hence the looser tolerances)
    assert np.allclose(diff.posterior_mean_coef2, slope, rtol=1e-11, atol=1e-16)
    assert np.allclose(diff.posterior_mean_coef1, intercept, rtol=1e-10, atol=1e-12)  # intercept cancels
    assert np.allclose(diff.posterior_variance, resid, rtol=1e-8, atol=1e-15)
    # at code t = 0 (paper t = 1) the posterior is a point mass at x0
    assert diff.posterior_mean_coef1[0] == pytest.approx(1.0, abs=1e-15)
    assert diff.posterior_mean_coef2[0] == 0.0


def test_fixedlarge_replaces_first_entry(diff):
    assert diff.fixedlarge_variance[0] == diff.posterior_variance[1]
    assert np.array_equal(diff.fixedlarge_variance[1:], diff.betas[1:])
    assert np.all(np.isfinite(diff.fixedlarge_log_variance))


def test_extract_shapes_and_dtypes(diff):
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    c = diff.extract("alphas_cumprod", long(0, 5, 999), x)
    assert c.shape == (3, 1, 1, 1) and c.dtype == torch.float32
    assert c[1, 0, 0, 0].item() == pytest.approx(diff.alphas_cumprod[5], rel=1e-7)
    c64 = diff.extract("alphas_cumprod", long(0, 5, 999), x.double())
    assert c64[2].item() == diff.alphas_cumprod[999]


# ---------------------------------------------------------------- Monte Carlo
def test_q_sample_moments_match_eq4(diff):
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.tensor([0.7], dtype=torch.float64).expand(n, 1).contiguous()
    for t_code in (0, 99, 499, 999):
        t = torch.full((n,), t_code, dtype=torch.long)
        xt = diff.q_sample(x0, t, generator=g)[:, 0]
        mean, var = 0.7 * diff.sqrt_alphas_cumprod[t_code], 1 - diff.alphas_cumprod[t_code]
        se_mean = math.sqrt(var / n)
        se_var = var * math.sqrt(2 / (n - 1))
        assert abs(xt.mean().item() - mean) < 5 * se_mean
        assert abs(xt.var().item() - var) < 5 * se_var


def test_q_sample_equals_the_explicit_chain_in_distribution():
    d = make_diffusion("linear", 50)
    g = torch.Generator().manual_seed(1)
    n = 100_000
    x = torch.full((n, 1), -0.3, dtype=torch.float64)
    for s in range(50):  # x_{s+1} = sqrt(1 - beta) x_s + sqrt(beta) eps  (eq. 2)
        x = math.sqrt(1 - d.betas[s]) * x + math.sqrt(d.betas[s]) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    mean, var = -0.3 * d.sqrt_alphas_cumprod[-1], 1 - d.alphas_cumprod[-1]
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(x.var().item() - var) < 5 * var * math.sqrt(2 / n)


def test_posterior_by_sampling_and_regression(diff):
    g = torch.Generator().manual_seed(2)
    n = 200_000
    x0v = 0.4
    for t_code in (1, 50, 600):
        x0 = torch.full((n, 1), x0v, dtype=torch.float64)
        tprev = torch.full((n,), t_code - 1, dtype=torch.long)
        x_prev = diff.q_sample(x0, tprev, generator=g)
        beta = diff.betas[t_code]
        x_t = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * torch.randn(n, 1, generator=g, dtype=torch.float64)
        X = torch.cat([torch.ones(n, 1, dtype=torch.float64), x_t], 1)
        coef = torch.linalg.lstsq(X, x_prev).solution[:, 0]
        resid = (x_prev - X @ coef[:, None]).var().item()
        t = torch.full((n,), t_code, dtype=torch.long)
        mean, var, _ = diff.q_posterior_mean_variance(x0, x_t, t)
        # slope and intercept against coef2 and coef1 * x0; residual variance against beta~
        se_slope = math.sqrt(diff.posterior_variance[t_code] / (n * x_t.var().item()))
        assert abs(coef[1].item() - diff.posterior_mean_coef2[t_code]) < 6 * se_slope
        assert abs(resid - var[0].item()) < 6 * var[0].item() * math.sqrt(2 / n)
        assert torch.allclose(mean, diff.posterior_mean_coef1[t_code] * x0 + diff.posterior_mean_coef2[t_code] * x_t)


# ---------------------------------------------------------------- reparameterisations
def test_eps_and_xstart_round_trips(diff):
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = long(0, 10, 500, 999)
    xt = diff.q_sample(x0, t, eps)
    assert torch.allclose(diff.predict_xstart_from_eps(xt, t, eps), x0, atol=1e-10)
    assert torch.allclose(diff.predict_eps_from_xstart(xt, t, x0), eps, atol=1e-9)
    mu, _, _ = diff.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(diff.predict_xstart_from_xprev(xt, t, mu), x0, atol=1e-9)


@pytest.mark.parametrize("mean_type", ["eps", "xstart", "xprev"])
def test_perfect_predictions_give_the_posterior(mean_type):
    d = make_diffusion("linear", T, model_mean_type=mean_type, model_var_type="fixedsmall")
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = long(0, 300, 999)
    xt = d.q_sample(x0, t, eps)
    true_mean, true_var, true_logvar = d.q_posterior_mean_variance(x0, xt, t)
    target = {"eps": eps, "xstart": x0, "xprev": true_mean}[mean_type]
    out = d.p_mean_variance(lambda x, tt: target, xt, t, clip_denoised=False)
    assert torch.allclose(out["mean"], true_mean, atol=1e-9)
    assert torch.allclose(out["pred_xstart"], x0, atol=1e-8)
    assert torch.equal(out["log_variance"], true_logvar.expand_as(out["log_variance"]))


def test_variance_types():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = long(0, 700)
    out6 = torch.randn(2, 6, 4, 4, generator=g, dtype=torch.float64)
    d = make_diffusion("linear", T, model_var_type="learned", loss_type="kl")
    r = d.p_mean_variance(lambda x, tt: out6, x, t)
    assert torch.equal(r["log_variance"], out6[:, 3:])
    d = make_diffusion("linear", T, model_var_type="learned_range", loss_type="kl")
    v = torch.cat([out6[:, :3], torch.full_like(out6[:, :3], 1.0)], 1)  # v = +1 -> log beta_t
    r = d.p_mean_variance(lambda x, tt: v, x, t)
    assert torch.allclose(r["log_variance"][1], torch.full_like(x[1], math.log(d.betas[700])))
    v[:, 3:] = -1.0  # v = -1 -> log beta~_t (clipped)
    r = d.p_mean_variance(lambda x, tt: v, x, t)
    assert torch.allclose(r["log_variance"][1], torch.full_like(x[1], d.posterior_log_variance_clipped[700]))
    d = make_diffusion("linear", T, model_var_type="fixedlarge")
    r = d.p_mean_variance(lambda x, tt: out6[:, :3], x, t)
    assert r["log_variance"][0].item() == pytest.approx(math.log(d.posterior_variance[1]))
    assert r["log_variance"][1].item() == pytest.approx(math.log(d.betas[700]))


def test_p_sample_adds_no_noise_at_t0_and_sigma_otherwise(diff):
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    noise = torch.ones_like(x)
    out = diff.p_sample(lambda x, t: torch.zeros_like(x), x, long(0, 10), noise=noise)
    assert torch.equal(out["sample"][0], out["mean"][0])
    sigma = math.sqrt(diff.betas[10])  # fixedlarge
    assert torch.allclose(out["sample"][1] - out["mean"][1], torch.full_like(x[1], sigma))


# ---------------------------------------------------------------- losses
def test_lsimple_is_eps_mse(diff):
    g = torch.Generator().manual_seed(6)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = long(0, 1, 500, 999)
    pred = torch.randn(x0.shape, generator=g)
    losses = diff.training_losses(lambda x, tt: pred, x0, t, noise=noise)
    assert torch.allclose(losses["loss"], ((noise - pred) ** 2).mean(dim=(1, 2, 3)))


def test_kl_loss_at_t0_is_the_decoder_nll():
    d = make_diffusion("linear", T, loss_type="kl")
    g = torch.Generator().manual_seed(7)
    x0 = (torch.randint(0, 256, (2, 3, 4, 4), generator=g).double() / 127.5) - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = long(0, 0)
    model = lambda x, tt: noise  # noqa: E731  perfect eps -> the decoder mean is x0 itself
    loss = d.training_losses(model, x0, t, noise=noise)["loss"]
    sigma = math.sqrt(d.fixedlarge_variance[0])
    # closed form per pixel: interior bins 2 Phi(1/(255 sigma)) - 1; edge bins Phi(1/(255 sigma))
    p_in, p_edge = 2 * norm.cdf(1 / (255 * sigma)) - 1, norm.cdf(1 / (255 * sigma))
    edge = (x0.abs() > 0.999).double()
    nll = -(edge * math.log(p_edge) + (1 - edge) * math.log(p_in)).mean(dim=(1, 2, 3)) / LOG2
    assert torch.allclose(loss, nll, rtol=1e-9)


def test_hybrid_trains_the_variance_only_through_the_bound():
    d = make_diffusion("linear", 100, model_var_type="learned_range", loss_type="hybrid")
    g = torch.Generator().manual_seed(8)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    out = torch.randn(2, 6, 4, 4, generator=g).requires_grad_(True)
    terms = d.training_losses(lambda x, tt: out, x0, long(3, 50), noise=noise)
    terms["loss"].sum().backward()
    grad_mean_expected = 2 * (out[:, :3] - noise) / 48  # d mse / d output (mean part) only
    assert torch.allclose(out.grad[:, :3], grad_mean_expected.detach(), atol=1e-6)
    assert out.grad[:, 3:].abs().sum() > 0
    assert torch.allclose(terms["loss"], terms["mse"] + 0.001 * 100 * terms["vb"])


# ---------------------------------------------------------------- the bound: perfect-knowledge toy
def test_bound_of_a_point_mass_matches_its_closed_form():
    """Data = one known image x0. The oracle eps-model predicts the true noise, so every KL term
    vanishes under fixedsmall, and the bound is L_T + L_0 in closed form (computed with scipy)."""
    d = make_diffusion("linear", 200, model_var_type="fixedsmall")
    g = torch.Generator().manual_seed(9)
    x0 = (torch.randint(0, 256, (1, 3, 4, 4), generator=g).double() / 127.5) - 1
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # make sure both edge bins occur
    x0 = x0.expand(3, -1, -1, -1).contiguous()

    def oracle(x, t):
        return d.predict_eps_from_xstart(x, t, x0)

    r = d.calc_bpd_loop(oracle, x0, generator=torch.Generator().manual_seed(0))
    # L_T: KL(N(sqrt(ab_T) x0, 1 - ab_T) || N(0, 1)) per dimension, in bits
    ab = d.alphas_cumprod[-1]
    x = x0[0].numpy().ravel()
    LT = np.mean(0.5 * (-1 - np.log(1 - ab) + (1 - ab) + ab * x**2)) / math.log(2)
    # L_0: the decoder mean is exactly x0, its variance exp(posterior_log_variance_clipped[0])
    sigma = math.exp(0.5 * d.posterior_log_variance_clipped[0])
    p = np.where(np.abs(x) > 0.999, norm.cdf(1 / (255 * sigma)), 2 * norm.cdf(1 / (255 * sigma)) - 1)
    L0 = -np.mean(np.log(p)) / math.log(2)
    assert r["terms_bpd"][:, 1:].abs().max().item() < 1e-9  # every L_t, t >= 1, vanishes
    assert np.allclose(r["prior_bpd"].numpy(), LT, rtol=1e-10)
    assert np.allclose(r["terms_bpd"][:, 0].numpy(), L0, rtol=1e-10)
    assert np.allclose(r["total_bpd"].numpy(), LT + L0, rtol=1e-9)


def test_bound_of_gaussian_data_with_the_exact_reverse_model():
    """Data x0 ~ N(0, I): the true reverse conditionals are Gaussian with variance beta_t (the
    'fixedlarge' optimum, Section 3.2) and mean sqrt(alpha_t) ... ; the oracle eps-model
    E[eps | x_t] = sqrt(1 - ab_t) x_t makes every KL term equal its closed form
    E[KL(N(mu~, beta~) || N(mu, beta))], and the sum of all terms is the exact entropy gap."""
    Tn = 40
    d = make_diffusion("linear", Tn, beta_start=1e-3, beta_end=0.2, model_var_type="fixedlarge")
    g = torch.Generator().manual_seed(10)
    n = 20_000
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64)

    def oracle(x, t):  # E[eps | x_t] for standard-normal data: Cov(eps, x_t) / Var(x_t) = sqrt(1 - ab)
        return d.extract("sqrt_one_minus_alphas_cumprod", t, x) * x

    t_code = 25
    t = torch.full((n,), t_code, dtype=torch.long)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xt = d.q_sample(x0, t, noise)
    vb = d.vb_terms_bpd_from_output(oracle(xt, t), x0, xt, t)["output"]
    # Closed form: mean difference mu~ - mu = coef1 (x0 - E[x0|x_t]); E[(x0 - E[x0|x_t])^2] = 1 - ab
    ab, c1 = d.alphas_cumprod[t_code], d.posterior_mean_coef1[t_code]
    bt, s2 = d.posterior_variance[t_code], d.betas[t_code]
    kl = 0.5 * (math.log(s2 / bt) + bt / s2 - 1 + c1**2 * (1 - ab) / s2)
    se = vb.std().item() / math.sqrt(n)
    assert abs(vb.mean().item() - kl / math.log(2)) < 5 * se


# ---------------------------------------------------------------- bad inputs
def test_constructor_rejects_bad_configurations():
    b = np.linspace(1e-4, 0.02, 10)
    with pytest.raises(ValueError, match="model_mean_type must be one of"):
        GaussianDiffusion(b, model_mean_type="v")
    with pytest.raises(ValueError, match="model_var_type must be one of"):
        GaussianDiffusion(b, model_var_type="big")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        GaussianDiffusion(b, loss_type="l1")
    with pytest.raises(ValueError, match="use loss_type='hybrid'"):
        GaussianDiffusion(b, model_var_type="learned", loss_type="mse")
    with pytest.raises(ValueError, match="only trains a learned variance"):
        GaussianDiffusion(b, loss_type="hybrid")
    with pytest.raises(ValueError, match="non-empty 1-D array"):
        GaussianDiffusion(b.reshape(2, 5))
    with pytest.raises(ValueError, match="must be finite and lie in"):
        GaussianDiffusion(np.append(b, np.nan))
    with pytest.raises(ValueError, match="must be floating point"):
        GaussianDiffusion(np.arange(1, 4))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x: (x, torch.tensor([0.0, 1.0])), "integer dtype"),
        (lambda x: (x, long(0)), r"shape \[N\] = \[2\]"),
        (lambda x: (x, torch.zeros(2, 1, dtype=torch.long)), r"shape \[N\]"),
        (lambda x: (x, long(0, 1000)), r"must lie in \[0, 1000\).*got values in \[0, 1000\]"),
        (lambda x: (x, long(-1, 3)), r"must lie in \[0, 1000\)"),
        (lambda x: (x, [0, 1]), "must be an integer torch.Tensor"),
        (lambda x: (x.masked_fill(x > 0, float("nan")), long(0, 1)), "non-finite"),
        (lambda x: (x.masked_fill(x > 0, float("inf")), long(0, 1)), "non-finite"),
        (lambda x: (x.long(), long(0, 1)), "floating-point"),
        (lambda x: (x.numpy(), long(0, 1)), "must be a torch.Tensor"),
        (lambda x: (x, long(0, 1).to("meta")), "is on meta but x is on cpu"),
    ],
)
def test_q_sample_rejects_bad_inputs(diff, make, match):
    x = torch.randn(2, 3, 4, 4)
    x_in, t_in = make(x)
    with pytest.raises(ValueError, match=match):
        diff.q_sample(x_in, t_in)


def test_noise_and_pairs_must_match_exactly(diff):
    x = torch.randn(2, 3, 4, 4)
    t = long(0, 1)
    with pytest.raises(ValueError, match=r"noise must have the same shape as x \(2, 3, 4, 4\), got \(2, 3, 4, 1\)"):
        diff.q_sample(x, t, torch.randn(2, 3, 4, 1))  # would silently broadcast otherwise
    with pytest.raises(ValueError, match="noise has dtype torch.float64 but x has dtype torch.float32"):
        diff.q_sample(x, t, torch.randn(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="x_start must have the same shape as x_t"):
        diff.q_posterior_mean_variance(x[:1], x, t)
    with pytest.raises(ValueError, match="eps must have the same shape"):
        diff.predict_xstart_from_eps(x, t, x[:, :1])


def test_model_output_shape_is_checked(diff):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"model output must have shape \(2, 3, 4, 4\).*got \(2, 6, 4, 4\)"):
        diff.p_mean_variance(lambda x, t: torch.cat([x, x], 1), x, long(0, 1))
    d = make_diffusion("linear", T, model_var_type="learned", loss_type="kl")
    with pytest.raises(ValueError, match=r"model output must have shape \(2, 6, 4, 4\)"):
        d.p_mean_variance(lambda x, t: x, x, long(0, 1))
    with pytest.raises(ValueError, match="model must return a torch.Tensor"):
        diff.p_mean_variance(lambda x, t: x.numpy(), x, long(0, 1))


def test_value_checks_can_be_disabled_for_the_hot_path(diff):
    from ddpm_ref import value_checks

    x = torch.randn(2, 3)
    x[0, 0] = float("nan")
    with value_checks(False):
        out = diff.q_sample(x, long(0, 1))  # no sync, no error: the trainer guards its loss
    assert torch.isnan(out[0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        diff.q_sample(x, long(0, 1))
    with value_checks(False), pytest.raises(ValueError, match="same shape"):
        diff.q_sample(x, long(0, 1), torch.randn(2, 4))  # shape checks always run
