"""Samplers: Algorithm 2, DDIM and respacing, interpolation."""

import numpy as np
import pytest
import torch

from ddpm_ref.diffusion import make_diffusion
from ddpm_ref.sampling import (
    SpacedDiffusion,
    ancestral_sample,
    ddim_sample,
    interpolate,
    respace,
    space_timesteps,
)


def linear_model(seed=0, C=3):
    W = torch.randn(C, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.2

    def model(x, t):
        return torch.einsum("ij,nj...->ni...", W.to(x.dtype), x) * (
            1 + t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) / 100
        )

    return model


def test_ancestral_sample_is_reproducible_and_records_the_chain():
    d = make_diffusion("linear", 30)
    m = linear_model()
    a = ancestral_sample(
        d, m, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1), record_every=10, dtype=torch.float64
    )
    b = ancestral_sample(d, m, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(a["sample"], b["sample"])
    assert a["steps"].tolist() == [29, 20, 10, 0]
    assert a["x_t"].shape == (4, 2, 3, 4, 4) and a["pred_xstart"].shape == (4, 2, 3, 4, 4)
    assert a["pred_xstart"].abs().max() <= 1.0  # x0-hat is clipped


def test_ancestral_sample_equals_manual_algorithm_2():
    d = make_diffusion("linear", 20)
    m = linear_model(2)
    g = torch.Generator().manual_seed(5)
    out = ancestral_sample(d, m, (3, 3, 2, 2), generator=g, dtype=torch.float64)["sample"]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 3, 2, 2, generator=g, dtype=torch.float64)
    for i in range(19, -1, -1):  # Algorithm 2 written out, with the original's clipping of x0-hat
        t = torch.full((3,), i)
        eps = m(x, t)
        x0 = ((x - np.sqrt(1 - d.alphas_cumprod[i]) * eps) / np.sqrt(d.alphas_cumprod[i])).clamp(-1, 1)
        mean = d.posterior_mean_coef1[i] * x0 + d.posterior_mean_coef2[i] * x
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = mean + (np.sqrt(d.fixedlarge_variance[i]) * z if i > 0 else 0)
    assert torch.allclose(out, x, atol=1e-12)


def test_ddim_eta1_on_the_full_chain_is_ancestral_fixedsmall():
    d = make_diffusion("linear", 40, model_var_type="fixedsmall")
    m = linear_model(3)
    a = ancestral_sample(d, m, (2, 3, 4, 4), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    b = ddim_sample(d, m, (2, 3, 4, 4), eta=1.0, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(a["sample"], b["sample"], atol=1e-10)


def test_ddim_eta0_is_deterministic_given_xT():
    d = respace(make_diffusion("linear", 100), 10)
    m = linear_model(4)
    xT = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = ddim_sample(d, m, xT.shape, noise=xT, generator=torch.Generator().manual_seed(1))["sample"]
    b = ddim_sample(d, m, xT.shape, noise=xT, generator=torch.Generator().manual_seed(2))["sample"]
    assert torch.equal(a, b)


def test_space_timesteps():
    assert space_timesteps(1000, "ddim50")[:3] == [0, 20, 40] and len(space_timesteps(1000, "ddim50")) == 50
    assert space_timesteps(1000, 5) == [0, 250, 500, 749, 999]
    assert space_timesteps(10, [9, 0, 3]) == [0, 3, 9]
    for bad, match in [("ddimx", "look like 'ddim50'"), (0, "cannot keep 0"), ([1, 1], "distinct"), ([10], "distinct")]:
        with pytest.raises(ValueError, match=match):
            space_timesteps(10, bad)


def test_respaced_process_keeps_the_marginals_and_maps_timesteps():
    base = make_diffusion("linear", 1000)
    sp = respace(base, 25)
    assert np.allclose(sp.alphas_cumprod, base.alphas_cumprod[sp.timestep_map], rtol=1e-12)
    full = SpacedDiffusion(base.betas, range(1000))
    assert np.allclose(full.betas, base.betas, rtol=1e-9)
    seen = []
    sp.call_model(lambda x, t: seen.append(t.tolist()) or x, torch.zeros(2, 1), torch.tensor([0, 24]))
    assert seen == [[0, 999]]
    with pytest.raises(ValueError, match="already respaced"):
        respace(sp, 5)


def test_interpolation_endpoints_and_shared_reverse_noise():
    d = make_diffusion("linear", 50)
    m = linear_model(6)
    g = torch.Generator().manual_seed(0)
    xa, xb = (torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1).unbind(0)
    three = interpolate(d, m, xa, xb, 20, [0.0, 0.5, 1.0], seed=3)
    assert three.shape == (3, 3, 4, 4)
    # the reverse noise does not depend on which lambdas are decoded together
    one = interpolate(d, m, xa, xb, 20, [0.5], seed=3)
    assert torch.allclose(one[0], three[1], atol=1e-12)
    # at t = 0 the encoder adds almost no noise and the decoder mean is ~x0: endpoints reconstruct
    rec = interpolate(
        d, lambda x, t: d.predict_eps_from_xstart(x, t, torch.stack([xa, xb])[:1].expand_as(x)), xa, xb, 0, [0.0]
    )
    assert torch.allclose(rec[0], xa, atol=1e-6)


def test_sampler_bad_inputs():
    d = make_diffusion("linear", 10)
    m = linear_model()
    with pytest.raises(ValueError, match="shape must be"):
        ancestral_sample(d, m, (3,))
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 3, 4, 4\)"):
        ancestral_sample(d, m, (2, 3, 4, 4), noise=torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"start_t must lie in \[0, 10\)"):
        ancestral_sample(d, m, (2, 3, 4, 4), start_t=10)
    with pytest.raises(ValueError, match="record_every must be a positive int"):
        ancestral_sample(d, m, (2, 3, 4, 4), record_every=0)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_sample(d, m, (2, 3, 4, 4), eta=-1)
    x = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match="x_b must have the same shape"):
        interpolate(d, m, x, x[:2], 5, [0.5])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 10\)"):
        interpolate(d, m, x, x, 10, [0.5])
    with pytest.raises(ValueError, match="lambdas must not be empty"):
        interpolate(d, m, x, x, 5, [])


# ------------------------------------------------------------------ DDIM: eta, the family q_sigma, Theorem 1
def _processes():
    base, cos = make_diffusion("linear", 1000), make_diffusion("cosine", 1000)
    return {
        "linear 1000": base, "cosine 1000": cos, "linear 50": make_diffusion("linear", 50),
        "linear, 10 trailing": respace(base, 10, "trailing"), "linear, 10 linspace": respace(base, 10),
        "cosine, 25 trailing": respace(cos, 25, "trailing"), "linear, 7 stride": respace(base, "ddim7"),
    }


def _sigma2_eq16(d, eta):
    """DDIM eq. 16 written from alphabar alone: eta^2 (1 - ab_prev)/(1 - ab) (1 - ab/ab_prev)."""
    ab, abp = d.alphas_cumprod, d.alphas_cumprod_prev
    return eta**2 * (1 - abp) / (1 - ab) * (1 - ab / abp)


@pytest.mark.parametrize("name", list(_processes()))
def test_ddim_eta_over_its_whole_range(name):
    from ddpm_ref.sampling import ddim_max_eta, ddim_sigmas

    d = _processes()[name]
    ab, abp = d.alphas_cumprod, d.alphas_cumprod_prev
    bound = np.sqrt(np.min(((1 - ab) / (1 - ab / abp))[1:]))  # sigma^2 <= 1 - ab_prev, from eq. 16
    assert ddim_max_eta(d) == pytest.approx(bound, rel=1e-9) and ddim_max_eta(d) > 1
    for eta in np.concatenate([np.linspace(0, 2 * bound, 241), bound * (1 + np.array([-1e-6, 1e-6]))]):
        if eta <= bound * (1 - 1e-9):
            s = ddim_sigmas(d, eta)
            assert np.allclose(s**2, _sigma2_eq16(d, eta), rtol=1e-8, atol=1e-300)
            assert np.all(s[1:] ** 2 <= (1 - abp[1:]) * (1 + 1e-12)) and s[0] == 0
        elif eta >= bound * (1 + 1e-9):
            with pytest.raises(ValueError, match=f"eta = {eta:g} is too large for DDIM.*largest eta here is"):
                ddim_sigmas(d, eta)
    assert np.allclose(ddim_sigmas(d, 1.0) ** 2, d.posterior_variance, rtol=1e-12)  # eta = 1: beta~_t
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta must be >= 0 and finite"):
            ddim_sigmas(d, bad)


def test_ddim_sample_refuses_a_bad_eta_before_any_step():
    from ddpm_ref.sampling import ddim_max_eta

    d = respace(make_diffusion("linear", 1000), 10, "trailing")
    calls = []
    m = lambda x, t: calls.append(t) or torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="too large for DDIM"):
        ddim_sample(d, m, (2, 3, 2, 2), eta=1.001 * ddim_max_eta(d))
    assert calls == []
    x = ddim_sample(d, m, (2, 3, 2, 2), eta=ddim_max_eta(d), generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)["sample"]  # the bound itself is allowed
    assert torch.isfinite(x).all() and len(calls) == 10


def _coefficients(d, sig):
    """(a_t, b_t, var_t): q_sigma(x_{t-1} | x_t, x_0) = N(a_t x_t + b_t x_0, var_t), read off ddpm_ref."""
    from ddpm_ref.sampling import ddim_posterior_mean_variance

    T = d.num_timesteps
    t = torch.arange(T)
    one, zero = torch.ones(T, 1, dtype=torch.float64), torch.zeros(T, 1, dtype=torch.float64)
    a, var = ddim_posterior_mean_variance(d, zero, one, t, sig)
    b, _ = ddim_posterior_mean_variance(d, one, zero, t, sig)
    return a.numpy().ravel(), b.numpy().ravel(), var.numpy().ravel()


@pytest.mark.parametrize("name", ["linear 1000", "cosine, 25 trailing", "linear 50"])
def test_ddim_family_has_the_marginals_of_eq4_for_every_sigma(name):
    """DDIM's Lemma 1, exactly: chain the Gaussian q_sigma(x_{t-1} | x_t, x_0) down from
    q(x_T | x_0) in mean and variance (x_0 = 1) and compare with eq. 4 at every t; the joint
    covariance Cov(x_{t-1}, x_t) = sqrt(1 - ab_{t-1} - sigma_t^2) sqrt(1 - ab_t) tells the family apart."""
    from ddpm_ref.sampling import ddim_max_eta, ddim_sigmas

    d = _processes()[name]
    ab, omab = d.alphas_cumprod, d.one_minus_alphas_cumprod
    omab_prev = np.append(0.0, omab[:-1])
    rng = np.random.default_rng(0)
    sigmas = [ddim_sigmas(d, e) for e in (0.0, 0.5, 1.0, ddim_max_eta(d))]
    sigmas.append(np.sqrt(rng.uniform(0, 1, d.num_timesteps) * omab_prev))  # any valid sigma
    for sig in sigmas:
        a, b, var = _coefficients(d, sig)
        assert np.allclose(var, sig**2, rtol=1e-12)
        m, v = np.sqrt(ab[-1]), omab[-1]
        for t in range(d.num_timesteps - 1, 0, -1):
            cov = a[t] * v
            assert cov == pytest.approx(np.sqrt(max(omab_prev[t] - sig[t] ** 2, 0) * omab[t]), rel=1e-9, abs=1e-15)
            m, v = a[t] * m + b[t], a[t] ** 2 * v + sig[t] ** 2
            assert m == pytest.approx(np.sqrt(ab[t - 1]), rel=1e-10) and v == pytest.approx(omab[t - 1], rel=1e-9)
        assert a[0] == 0 and b[0] == 1  # code t = 0: the mean is x_0 itself
    # eta = 1 is DDPM's posterior, eq. 6-7
    a, b, var = _coefficients(d, ddim_sigmas(d, 1.0))
    assert np.allclose(a, d.posterior_mean_coef2, rtol=1e-9, atol=1e-15)
    assert np.allclose(b, d.posterior_mean_coef1, rtol=1e-9, atol=1e-15)
    assert np.allclose(var, d.posterior_variance, rtol=1e-12)


def test_ddim_objective_weights():
    """DDIM Theorem 1's gamma_t: at eta = 1 the eq. 12 weight beta_t^2 / (2 sigma_t^2 alpha_t (1 - ab_t)),
    and for any sigma the direct (cancellation-prone) form of d_t."""
    from ddpm_ref.sampling import ddim_objective_weights, ddim_sigmas

    for d in _processes().values():
        ab, abp, omab = d.alphas_cumprod, d.alphas_cumprod_prev, d.one_minus_alphas_cumprod
        sig = ddim_sigmas(d, 1.0)
        sig[0] = 0.3  # sigma_1: the decoder's standard deviation (DDIM eq. 10)
        g = ddim_objective_weights(d, sig)
        assert np.allclose(g[1:], d.betas[1:] ** 2 / (2 * sig[1:] ** 2 * d.alphas[1:] * omab[1:]), rtol=1e-9)
        assert g[0] == pytest.approx(omab[0] / (2 * 0.3**2 * ab[0]), rel=1e-12)
        sig = np.sqrt(np.random.default_rng(1).uniform(0.05, 0.95, d.num_timesteps) * np.append(0.5, omab[:-1]))
        direct = (np.sqrt(abp) - np.sqrt(np.append(0, (1 - abp - sig**2)[1:])) * np.sqrt(ab / omab)) ** 2
        assert np.allclose(ddim_objective_weights(d, sig), direct * omab / (2 * sig**2 * ab), rtol=1e-6)
    with pytest.raises(ValueError, match="needs every sigma_t > 0"):
        ddim_objective_weights(d, ddim_sigmas(d, 1.0))  # sigma_1 = 0
    with pytest.raises(ValueError, match="must not exceed 1 - alphabar"):
        ddim_objective_weights(d, np.ones(d.num_timesteps))


def _log_normal(x, mean, var):
    return -0.5 * ((x - mean) ** 2 / var + np.log(2 * np.pi) + torch.log(torch.as_tensor(var, dtype=x.dtype)))


def test_ddim_theorem_1_by_monte_carlo():
    """J_sigma (DDIM eq. 11) sampled from its definition along the q_sigma chain equals
    sum_t gamma_t E||eps - eps_theta||^2 + C with x_t drawn from eq. 4, within 5 standard errors."""
    from ddpm_ref.sampling import ddim_objective_weights, ddim_posterior_mean_variance, ddim_sigmas

    d = respace(make_diffusion("linear", 1000), 6)  # six large steps
    T, n = d.num_timesteps, 40_000
    g = torch.Generator().manual_seed(11)
    coef = torch.tensor([0.3, -0.2, 0.5, 0.1, 0.4, -0.1], dtype=torch.float64)

    def eps_theta(x, t):  # an arbitrary eps-network, affine in x per t
        return coef[t][:, None] * x + 0.05 * t[:, None]

    x0 = 0.5 + 0.4 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    for eta in (0.3, 1.0):
        sig = ddim_sigmas(d, eta)
        sig[0] = 0.2
        # J_sigma along the chain x_T ~ q(x_T | x_0), x_{t-1} ~ q_sigma(x_{t-1} | x_t, x_0)
        ab = torch.as_tensor(d.alphas_cumprod)
        x = ab[-1].sqrt() * x0 + (1 - ab[-1]).sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
        logr = _log_normal(x, ab[-1].sqrt() * x0, 1 - ab[-1]) - _log_normal(x, 0.0, 1.0)
        for k in range(T - 1, -1, -1):
            t = torch.full((n,), k)
            xh = (x - (1 - ab[k]).sqrt() * eps_theta(x, t)) / ab[k].sqrt()
            if k == 0:
                logr = logr - _log_normal(x0, xh, float(sig[0]) ** 2)
                break
            mq, vq = ddim_posterior_mean_variance(d, x0, x, t, sig)
            mp, _ = ddim_posterior_mean_variance(d, xh, x, t, sig)
            x_prev = mq + vq.sqrt() * torch.randn(n, 1, generator=g, dtype=torch.float64)
            logr = logr + _log_normal(x_prev, mq, vq) - _log_normal(x_prev, mp, vq)
            x = x_prev
        logr = logr.sum(1)
        J, J_se = logr.mean().item(), logr.std().item() / n**0.5
        # L_gamma + C with x_t from eq. 4 (ddpm_ref's q_sample), independent draws
        gam = ddim_objective_weights(d, sig)
        terms = torch.zeros(n, dtype=torch.float64)
        for k in range(T):
            t = torch.full((n,), k)
            e = torch.randn(n, 1, generator=g, dtype=torch.float64)
            terms += gam[k] * ((e - eps_theta(d.q_sample(x0, t, noise=e), t)) ** 2).sum(1)
        v_T = 1 - ab[-1]  # KL(N(sqrt(ab_T) x_0, v_T) || N(0, 1)), per dimension
        kl_T = (0.5 * (v_T + ab[-1] * x0**2 - 1 - v_T.log())).sum(1)
        rhs = terms + kl_T + 0.5 * np.log(2 * np.pi * sig[0] ** 2)
        L, L_se = rhs.mean().item(), rhs.std().item() / n**0.5
        assert abs(J - L) < 5 * np.hypot(J_se, L_se), (eta, J, L, J_se, L_se)
