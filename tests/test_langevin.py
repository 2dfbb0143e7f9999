"""ddpm_ref.langevin: scores from eps, unadjusted Langevin, the corrector's step-size rule and the
predictor-corrector sampler, checked against closed forms on Gaussian data.

Gaussian data x_0 ~ N(mu, s^2 I) keep every noisy marginal Gaussian,
q(x_t) = N(sqrt(abar) mu, (abar s^2 + 1 - abar) I), so the exact score is linear and every sampler
here is a linear recursion whose variance is known in closed form."""

import math

import numpy as np
import pytest
import torch

from ddpm_ref import langevin, toy
from ddpm_ref.diffusion import make_diffusion
from ddpm_ref.sampling import ancestral_sample, respace

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(mu, s, d=2):
    return toy.GaussianMixture([1.0], [[float(mu)] * d], [(s**2 * np.eye(d)).tolist()])


@pytest.fixture(scope="module")
def diffusion():
    # a short chain with the paper's range of noise levels: T = 100, betas 1e-3 .. 0.2
    return make_diffusion("linear", 100, beta_start=1e-3, beta_end=0.2)


def var_se(x):
    """Per-coordinate sample variance and its standard error sqrt(2 / (n - 1)) v (Gaussian)."""
    v = x.var(0)
    return v, v * math.sqrt(2.0 / (x.shape[0] - 1))


# ------------------------------------------------------------------------------------ the score
@pytest.mark.parametrize("code_t", [0, 7, 50, 99])
@pytest.mark.parametrize("mean_type", ["eps", "xstart"])
def test_score_from_eps_is_the_exact_score(diffusion, code_t, mean_type):
    mix = toy.GaussianMixture([0.3, 0.7], [[0.5, -1.0], [-0.8, 0.4]], [(0.04 * np.eye(2)).tolist()] * 2)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.full((30,), code_t)
    eps_model = toy.ExactEps(mix, diffusion)
    if mean_type == "eps":
        d, model = diffusion, eps_model
    else:  # the same exact model, asked for x_0 instead of eps
        d = make_diffusion("linear", 100, beta_start=1e-3, beta_end=0.2, model_mean_type="xstart")

        def model(x, t):
            return toy.optimal_xstart(mix, diffusion, x, t)

    got = langevin.score_from_eps(d, model, x, t)
    torch.testing.assert_close(got, toy.score_q_t(mix, diffusion, x, t), rtol=1e-9, atol=1e-9)


def test_score_from_eps_maps_respaced_timesteps(diffusion):
    mix = gaussian(0.3, 0.5)
    sp = respace(diffusion, [0, 10, 40, 99])
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    got = langevin.score_from_eps(sp, toy.ExactEps(mix, diffusion), x, torch.full((8,), 2))
    torch.testing.assert_close(got, toy.score_q_t(mix, diffusion, x, torch.full((8,), 40)), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- unadjusted Langevin
def test_langevin_step_is_the_formula():
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=F64)
    s = torch.tensor([[0.2, 0.1], [-1.0, 3.0]], dtype=F64)
    z = torch.tensor([[0.3, -0.7], [1.1, 0.4]], dtype=F64)
    got = langevin.langevin_step(x, s, 0.01, z)
    want = torch.tensor([[1.0 + 0.002 + math.sqrt(0.02) * 0.3, -2.0 + 0.001 - math.sqrt(0.02) * 0.7],
                         [0.5 - 0.01 + math.sqrt(0.02) * 1.1, 0.03 + math.sqrt(0.02) * 0.4]], dtype=F64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    per_example = langevin.langevin_step(x, s, torch.tensor([0.01, 0.04], dtype=F64), z)
    torch.testing.assert_close(per_example[0], want[0], rtol=0, atol=1e-15)
    torch.testing.assert_close(per_example[1], x[1] + 0.04 * s[1] + math.sqrt(0.08) * z[1], rtol=0, atol=1e-15)


@pytest.mark.parametrize("code_t, step", [(0, 0.02), (30, 0.2), (99, 0.5)])
def test_ula_variance_after_k_steps_and_stationary_bias(diffusion, code_t, step):
    mu, s = 0.7, 0.3
    mix = gaussian(mu, s)
    ab = diffusion.alphas_cumprod[code_t]
    v_t = ab * s**2 + 1 - ab  # the target's variance
    m_t = math.sqrt(ab) * mu
    n, k = 20000, 40
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=F64) + m_t
    out = langevin.unadjusted_langevin(diffusion, toy.ExactEps(mix, diffusion), x0, code_t, step_size=step,
                                       num_steps=k, generator=torch.Generator().manual_seed(4))
    v, se = var_se(out["sample"])
    want = langevin.ula_gaussian_variance(v_t, step, k, initial_variance=1.0)
    assert torch.all((v - want).abs() < 4.5 * se), (v, want, se)
    mean_se = math.sqrt(want / n)
    assert torch.all((out["sample"].mean(0) - m_t).abs() < 4.5 * mean_se)
    # the closed form, independently: the linear recursion x - m <- a (x - m) + sqrt(2 eps) z
    a = 1 - step / v_t
    vv = 1.0
    for _ in range(k):
        vv = a * a * vv + 2 * step
    assert abs(vv - want) < 1e-12
    stationary = langevin.ula_gaussian_variance(v_t, step)
    assert abs(stationary - v_t / (1 - step / (2 * v_t))) < 1e-12 and stationary > v_t


def test_ula_is_biased_at_stationarity_by_the_closed_form(diffusion):
    """Run long enough to be stationary: the variance is v / (1 - eps / (2 v)), not v (> 10 SE off)."""
    mix = gaussian(0.0, 1.0)  # every marginal is N(0, I): v = 1
    n, step = 20000, 0.4
    x0 = torch.zeros(n, 2, dtype=F64)
    out = langevin.unadjusted_langevin(diffusion, toy.ExactEps(mix, diffusion), x0, 10, step_size=step,
                                       num_steps=60, generator=torch.Generator().manual_seed(5), record_every=20)
    v, se = var_se(out["sample"])
    want = 1.0 / (1.0 - step / 2.0)
    assert torch.all((v - want).abs() < 4.5 * se)
    assert torch.all((v - 1.0) > 10 * se)  # the bias is resolved
    assert out["steps"].tolist() == [0, 20, 40, 60] and out["trajectory"].shape == (4, n, 2)
    torch.testing.assert_close(out["trajectory"][-1], out["sample"])
    torch.testing.assert_close(out["trajectory"][0], x0)


# ----------------------------------------------------------------------- corrector step size
def test_corrector_step_size_rule_per_sample_and_batch():
    g = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64)  # norms 5, 1, sqrt 2
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [2.0, 0.0]], dtype=F64)  # norms 1, 1, 2
    r, a = 0.16, 0.98
    got = langevin.corrector_step_size(g, z, r, a)
    want = torch.tensor(
        [2 * a * (r * 1 / 5) ** 2, 2 * a * (r * 1 / 1) ** 2, 2 * a * (r * 2 / math.sqrt(2)) ** 2], dtype=F64
    )
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    # the released code's rule: batch means of the norms, the same step for every example
    batch = langevin.corrector_step_size(g, z, r, a, norm="batch")
    gm, zm = (5 + 1 + math.sqrt(2)) / 3, (1 + 1 + 2) / 3
    torch.testing.assert_close(batch, torch.full((3,), 2 * a * (r * zm / gm) ** 2, dtype=F64), rtol=1e-14, atol=0)
    # the drift-to-noise ratio of the resulting step is r sqrt(alpha), for every example
    ratio = got * g.norm(dim=1) / (torch.sqrt(2 * got) * z.norm(dim=1))
    torch.testing.assert_close(ratio, torch.full((3,), r * math.sqrt(a), dtype=F64), rtol=1e-13, atol=0)
    # per-example alpha; per-sample steps do not depend on the rest of the batch
    per = langevin.corrector_step_size(g, z, r, torch.tensor([a, 0.5, 1.0], dtype=F64))
    torch.testing.assert_close(per[1:], torch.tensor([0.5, 1.0], dtype=F64) / a * want[1:], rtol=1e-14, atol=0)
    torch.testing.assert_close(langevin.corrector_step_size(g[1:], z[1:], r, a), want[1:], rtol=0, atol=0)


# ------------------------------------------------------------------------- the PC sampler
def _pc_variance_recursion(d, v0, step, corrector_steps):
    """Variance of pc_sample with a fixed corrector step on N(0, I) data (every marginal N(0, I), exact
    score -x): corrector v <- (1 - eps)^2 v + 2 eps, predictor v <- alpha v + sigma^2 (sigma = 0 at t = 0)."""
    v = v0
    for i in range(d.num_timesteps - 1, -1, -1):
        for _ in range(corrector_steps):
            v = (1 - step) ** 2 * v + 2 * step
        v = d.alphas[i] * v + (d.fixedlarge_variance[i] if i > 0 else 0.0)
    return v


@pytest.mark.parametrize("step, corrector_steps", [(0.05, 1), (0.3, 2)])
def test_pc_sample_with_fixed_step_matches_the_closed_form(diffusion, step, corrector_steps):
    model = toy.ExactEps(gaussian(0.0, 1.0), diffusion)
    n = 20000
    out = langevin.pc_sample(diffusion, model, (n, 2), snr=None, step_size=step, corrector_steps=corrector_steps,
                             generator=torch.Generator().manual_seed(6), dtype=F64, clip_denoised=False)
    v, se = var_se(out["sample"])
    want = _pc_variance_recursion(diffusion, 1.0, step, corrector_steps)
    assert want > 1.0  # the corrector's own bias: (1 - eps)^2 + 2 eps = 1 + eps^2 at v = 1
    assert torch.all((v - want).abs() < 4.5 * se), (v, want, se)
    assert torch.all(out["sample"].mean(0).abs() < 4.5 * math.sqrt(want / n))
    assert out["step_sizes"].shape == (diffusion.num_timesteps, corrector_steps)
    assert torch.all(out["step_sizes"] == step)


def test_pc_sample_without_corrector_is_algorithm_2(diffusion):
    mix = toy.GaussianMixture([0.25, 0.75], [[1.0, 0.0], [-1.0, 0.5]], [(0.01 * np.eye(2)).tolist()] * 2)
    model = toy.ExactEps(mix, diffusion)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    a = ancestral_sample(diffusion, model, (64, 2), noise=x_T, generator=torch.Generator().manual_seed(8))["sample"]
    b = langevin.pc_sample(diffusion, model, (64, 2), corrector_steps=0, noise=x_T,
                           generator=torch.Generator().manual_seed(8))["sample"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pc_sample_snr_rule_on_gaussian_data_recovers_the_law(diffusion):
    """With the step-size rule (batch norms, as the released code) and exact scores on N(mu, s^2 I)
    data in 64 dimensions, the samples' mean and variance match the data within 4.5 standard errors
    plus the corrector's own (small, O(eps^2)) bias."""
    mu, s, dim, n = 0.5, 0.5, 64, 500
    mix = gaussian(mu, s, d=dim)
    out = langevin.pc_sample(diffusion, toy.ExactEps(mix, diffusion), (n, dim), snr=0.16, step_norm="batch",
                             generator=torch.Generator().manual_seed(9), dtype=F64, clip_denoised=False)
    x = out["sample"]
    mean_err = (x.mean() - mu).abs().item()
    assert mean_err < 4.5 * s / math.sqrt(n * dim) + 0.01
    v = x.var(0).mean().item()
    assert abs(v - s**2) < 4.5 * s**2 * math.sqrt(2.0 / ((n - 1) * dim)) + 0.02 * s**2
    # the rule gives eps = 2 alpha r^2 ||z||^2 / ||s||^2 ~ 2 alpha r^2 v_t in high dimension
    ab = diffusion.alphas_cumprod
    v_t = ab * s**2 + 1 - ab
    expected = 2 * diffusion.alphas * 0.16**2 * v_t
    assert np.all(np.abs(out["step_sizes"][:, 0].numpy() / expected - 1) < 0.05)


# ---------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_value_errors(diffusion):
    model = toy.ExactEps(gaussian(0.0, 1.0), diffusion)
    x = torch.zeros(4, 2, dtype=F64)
    ula = langevin.unadjusted_langevin
    zeros, ones = torch.zeros(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64)
    cases = [
        (lambda: ula(diffusion, model, x, 0, step_size=0.0, num_steps=3), "step_size"),
        (lambda: ula(diffusion, model, x, 0, step_size=float("nan"), num_steps=3), "step_size"),
        (lambda: ula(diffusion, model, x, 100, step_size=0.1, num_steps=3), "t must lie"),
        (lambda: ula(diffusion, model, x, 0.5, step_size=0.1, num_steps=3), "t must be"),
        (lambda: ula(diffusion, model, x, 0, step_size=0.1, num_steps=0), "num_steps"),
        (lambda: ula("d", model, x, 0, step_size=0.1, num_steps=1), "GaussianDiffusion"),
        (lambda: ula(diffusion, model, torch.zeros(4), 0, step_size=0.1, num_steps=1), "x must"),
        (lambda: langevin.pc_sample(diffusion, model, (4, 2), snr=0.1, step_size=0.1), "exactly one"),
        (lambda: langevin.pc_sample(diffusion, model, (4, 2), snr=None), "exactly one"),
        (lambda: langevin.pc_sample(diffusion, model, (4, 2), snr=-1.0), "snr"),
        (lambda: langevin.pc_sample(diffusion, model, (4, 2), corrector_steps=-1), "corrector_steps"),
        (lambda: langevin.pc_sample(diffusion, model, (4, 2), step_norm="mean"), "step_norm"),
        (lambda: langevin.corrector_step_size(zeros, ones, 0.16, 0.9), "score is zero"),
        (lambda: langevin.corrector_step_size(torch.ones(2, 3), torch.ones(2, 4), 0.16, 0.9), "same shape"),
        (lambda: langevin.corrector_step_size(torch.ones(2, 3), torch.ones(2, 3), 0.16, 1.5), "alpha"),
        (lambda: langevin.langevin_step(x, x, torch.tensor([0.1, -0.1, 0.1, 0.1]), x), "positive"),
        (lambda: langevin.ula_gaussian_variance(1.0, 2.0), "diverges"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
