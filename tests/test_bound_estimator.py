"""The unbiased estimator of the variational bound: GaussianDiffusion.estimate_bpd and bound_strata.

Strategy: a batch of R copies of the same image gives R independent estimates in one call (every
image draws its own timesteps and noise), so the mean and the standard error over repeats are cheap.

* With an oracle network that knows x_0, mu_theta equals the posterior mean and every KL term is the
  variance-mismatch constant 1/2 (log(sigma_t^2 / beta~_t) + beta~_t / sigma_t^2 - 1), a number per t
  computed here from the betas with numpy: the exact sum is known, and an estimator with a wrong
  weight or a shifted stratum misses it by many standard errors (the mutants below show it).
* With a network whose terms depend on x_t, the estimate agrees with calc_bpd_loop (the full T-term
  loop) within the combined standard error, and the per-image standard error is calibrated: its
  square matches the spread of the estimates over repeats.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddpm_ref.diffusion as diffusion_mod
from ddpm_ref.diffusion import BoundStrata, bound_strata, make_diffusion

pytestmark = pytest.mark.usefixtures("one_thread")

Z_MAX = 4.5  # agreement within 4.5 standard errors


def _pixels(n, shape, seed):
    """n images on the 256-level grid in [-1, 1], float64 [n, *shape]."""
    g = np.random.default_rng(seed)
    return torch.from_numpy(g.integers(0, 256, size=(n, *shape)) / 127.5 - 1.0)


def _oracle(diffusion, x0):
    """eps-network that knows x_0 (the batch): eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar), from numpy betas."""
    abar = torch.from_numpy(np.cumprod(1.0 - diffusion.betas))

    def model(x_t, t):
        a = abar[t].reshape(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - a.sqrt() * x0) / (1.0 - a).sqrt()

    return model


def _variance_mismatch_sum(betas):
    """sum_{t>=1} (paper indices) of the fixedlarge KL constant per dimension, bits: computed from betas only."""
    betas = np.asarray(betas, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = (1.0 - abar_prev) / (1.0 - abar) * betas
    r = beta_tilde[1:] / betas[1:]  # beta~_t / sigma_t^2 with sigma_t^2 = beta_t (fixedlarge, code t >= 1)
    c = 0.5 * (-np.log(r) + r - 1.0) / math.log(2.0)
    return c.sum(), c


def _z(mean, se, ref):
    return abs(mean - ref) / se


# ------------------------------------------------------------------------------------------ strata
@pytest.mark.parametrize("T", [2, 3, 4, 7, 50, 1000])
def test_strata_partition_the_kl_terms_for_every_K(T):
    w = np.zeros(T)
    w[1:] = 1.0 / np.arange(1, T)
    for K in range(1, T):
        s = bound_strata(T, K)
        assert isinstance(s, BoundStrata)
        e = s.edges
        assert e[0] == 1 and e[-1] == T and np.all(np.diff(e) >= 1)  # covers 1..T-1 once, no empty stratum
        assert len(s.samples) == len(e) - 1 == max(1, K // 2)
        assert s.samples.sum() == K and (K == 1 or s.samples.min() >= 2)
        assert s.prob[0] == 0 and np.allclose(s.prob, w / w.sum(), rtol=1e-13, atol=0)
        assert np.allclose(s.mass, np.add.reduceat(w, e[:-1]) / w.sum(), rtol=1e-12)
        assert math.isclose(s.mass.sum(), 1.0, rel_tol=1e-12)


def test_strata_have_about_equal_proposal_mass():
    s = bound_strata(1000, 16)  # 8 strata
    assert np.all(np.abs(s.mass - 1 / 8) < 0.03)


@pytest.mark.parametrize("K", [0, -1, 50, 51])
def test_bad_t_samples_are_refused(K):
    d = make_diffusion("linear", 50)
    with pytest.raises(ValueError, match=r"t_samples must lie in \[1, T-1\] = \[1, 49\]"):
        d.estimate_bpd(lambda x, t: x, _pixels(2, (1, 2, 2), 0), t_samples=K)


@pytest.mark.parametrize("K", [1.5, "4", True, None])
def test_t_samples_must_be_an_int(K):
    d = make_diffusion("linear", 50)
    with pytest.raises(ValueError, match="t_samples must be an int"):
        d.estimate_bpd(lambda x, t: x, _pixels(2, (1, 2, 2), 0), t_samples=K)


def test_other_bad_inputs():
    d = make_diffusion("linear", 50)
    with pytest.raises(ValueError, match="T = 1 has no KL terms"):
        make_diffusion("linear", 1).estimate_bpd(lambda x, t: x, _pixels(2, (1, 2, 2), 0), t_samples=1)
    with pytest.raises(ValueError, match="x_start must have at least 2 dimension"):
        d.estimate_bpd(lambda x, t: x, torch.zeros(4, dtype=torch.float64), t_samples=2)
    with pytest.raises(ValueError, match="x_start must be a torch.Tensor"):
        d.estimate_bpd(lambda x, t: x, np.zeros((2, 4)), t_samples=2)
    with pytest.raises(ValueError, match="non-finite"):
        d.estimate_bpd(lambda x, t: x, torch.full((2, 1, 2, 2), float("nan")), t_samples=2)
    with pytest.raises(ValueError, match="model output must have shape"):
        d.estimate_bpd(lambda x, t: x[:, :1, :1], _pixels(2, (1, 2, 2), 0), t_samples=2)
    assert d.estimate_bpd(lambda x, t: x, _pixels(2, (1, 2, 2), 0), t_samples=np.int64(3))["kl_bpd"].shape == (2,)


# ------------------------------------------------------------------------------------------ outputs
def test_output_keys_shapes_and_reproducibility():
    d = make_diffusion("linear", 30)
    x0 = _pixels(3, (3, 2, 2), 1)
    model = _oracle(d, x0)
    a = d.estimate_bpd(model, x0, t_samples=5, generator=torch.Generator().manual_seed(3))
    b = d.estimate_bpd(model, x0, t_samples=5, generator=torch.Generator().manual_seed(3))
    keys = {"total_bpd", "total_bpd_stderr", "prior_bpd", "decoder_bpd", "kl_bpd", "kl_bpd_stderr"}
    assert set(a) == keys
    for k in keys:
        assert a[k].shape == (3,) and a[k].dtype == torch.float64
        assert torch.equal(a[k], b[k])
    assert torch.allclose(a["total_bpd"], a["prior_bpd"] + a["decoder_bpd"] + a["kl_bpd"], rtol=1e-15, atol=0)
    assert torch.allclose(a["prior_bpd"], d.prior_bpd(x0).double(), rtol=1e-15, atol=0)  # L_T exact
    one = d.estimate_bpd(model, x0, t_samples=1, generator=torch.Generator().manual_seed(3))
    assert torch.isnan(one["kl_bpd_stderr"]).all() and torch.isfinite(one["kl_bpd"]).all()


def test_network_evaluations_are_K_plus_one_and_never_the_decoder_twice():
    d = make_diffusion("linear", 40)
    x0 = _pixels(8, (1, 2, 2), 2)
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return torch.zeros_like(x)

    for K in (1, 2, 7, 39):
        calls.clear()
        d.estimate_bpd(model, x0, t_samples=K, generator=torch.Generator().manual_seed(K))
        assert len(calls) == K + 1
        assert bool((calls[0] == 0).all())  # the decoder L_0 first
        drawn = torch.cat(calls[1:])
        assert int(drawn.min()) >= 1 and int(drawn.max()) <= 39  # the KL terms: code t in 1..T-1
        s = bound_strata(40, K)
        slot = 1
        for k, m in enumerate(s.samples):  # each draw lies in its own stratum
            for _ in range(m):
                assert bool(((calls[slot] >= s.edges[k]) & (calls[slot] < s.edges[k + 1])).all())
                slot += 1


# ------------------------------------------------------------------------------------------ unbiasedness
def _oracle_run(T, K, R=4000, seed=0, schedule="linear"):
    d = make_diffusion(schedule, T, model_var_type="fixedlarge")
    x0 = _pixels(1, (1, 2, 2), 5).repeat(R, 1, 1, 1)
    out = d.estimate_bpd(_oracle(d, x0), x0, t_samples=K, generator=torch.Generator().manual_seed(seed),
                         clip_denoised=False)
    kl = out["kl_bpd"].numpy()
    return d, kl, out["kl_bpd_stderr"].numpy()


@pytest.mark.parametrize(("T", "K"), [(20, 1), (20, 2), (20, 3), (20, 19), (100, 4), (100, 9), (1000, 8),
                                      (1000, 33)])
def test_estimate_is_unbiased_for_the_exact_kl_sum(T, K):
    """Oracle mean: every KL term is a known constant, so the exact sum is known; K = 1 .. T-1."""
    d, kl, se_img = _oracle_run(T, K)
    exact, c = _variance_mismatch_sum(d.betas)
    mean, se = kl.mean(), kl.std(ddof=1) / math.sqrt(len(kl))
    assert _z(mean, se, exact) < Z_MAX, (mean, se, exact)
    if K > 1:  # the per-image standard error is the spread over repeats
        var = kl.var(ddof=1)
        se_var = math.sqrt((((kl - mean) ** 4).mean() - var**2) / len(kl))
        msq = (se_img**2).mean()
        assert abs(msq - var) < Z_MAX * math.sqrt(se_var**2 + (se_img**2).var() / len(kl)), (msq, var)


def _mutant(kind):
    real = bound_strata

    def strata(T, K):
        s = real(T, K)
        if kind == "off-by-one":  # strata over code t = 0..T-2: the decoder sampled, L_{T-1} never
            return BoundStrata(s.edges - 1, s.samples, np.roll(s.prob, -1), s.mass)
        if kind == "uniform-mass":  # the stratum weights P_k forgotten (every stratum weighted 1/S)
            return BoundStrata(s.edges, s.samples, s.prob, np.full_like(s.mass, 1.0 / len(s.mass)))
        if kind == "count-factor":  # weights missing the factor (T-1)/K of a plain uniform estimator
            return BoundStrata(s.edges, s.samples, s.prob, s.mass * K / (T - 1))
        raise AssertionError(kind)

    return strata


@pytest.mark.parametrize("kind", ["off-by-one", "uniform-mass", "count-factor"])
def test_the_criterion_rejects_biased_estimators(monkeypatch, kind):
    """The same check as above fails for an estimator with a shifted stratum or a wrong weight."""
    monkeypatch.setattr(diffusion_mod, "bound_strata", _mutant(kind))
    d = make_diffusion("linear", 100)
    x0 = _pixels(1, (1, 2, 2), 5).repeat(4000, 1, 1, 1)
    # a network with a t-dependent error, so that the decoder term and the last KL term are not ~0
    oracle = _oracle(d, x0)
    out = d.estimate_bpd(lambda x, t: oracle(x, t) + 0.3, x0, t_samples=8,
                         generator=torch.Generator().manual_seed(0), clip_denoised=False)
    one = _oracle(d, x0[:1])
    ref = d.calc_bpd_loop(lambda x, t: one(x, t) + 0.3, x0[:1], clip_denoised=False,
                          generator=torch.Generator().manual_seed(0))["terms_bpd"][0, 1:].sum().item()
    kl = out["kl_bpd"].numpy()
    assert _z(kl.mean(), kl.std(ddof=1) / math.sqrt(len(kl)), ref) > 3 * Z_MAX


def test_unmutated_estimator_passes_the_same_criterion():
    d = make_diffusion("linear", 100)
    x0 = _pixels(1, (1, 2, 2), 5).repeat(4000, 1, 1, 1)
    oracle = _oracle(d, x0)
    out = d.estimate_bpd(lambda x, t: oracle(x, t) + 0.3, x0, t_samples=8,
                         generator=torch.Generator().manual_seed(0), clip_denoised=False)
    # with a constant eps error every term is deterministic: the full loop on one copy is exact
    one = _oracle(d, x0[:1])
    ref = d.calc_bpd_loop(lambda x, t: one(x, t) + 0.3, x0[:1], clip_denoised=False,
                          generator=torch.Generator().manual_seed(0))["terms_bpd"][0, 1:].sum().item()
    kl = out["kl_bpd"].numpy()
    assert _z(kl.mean(), kl.std(ddof=1) / math.sqrt(len(kl)), ref) < Z_MAX


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
def test_agrees_with_the_full_loop_within_its_standard_error(var_type):
    """A network whose terms depend on x_t: the mean over repeats matches calc_bpd_loop's mean over repeats."""
    T, R = 40, 3000
    d = make_diffusion("linear", T, model_var_type=var_type)
    abar = torch.from_numpy(np.cumprod(1.0 - d.betas))
    imgs = _pixels(2, (3, 2, 2), 7)

    def model(x, t):  # the Gaussian-data optimum sqrt(1 - abar) x_t, plus a nonlinearity
        a = abar[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x + 0.2 * torch.tanh(3 * x) * a

    for i in range(2):
        x0 = imgs[i:i + 1].repeat(R, 1, 1, 1)
        est = d.estimate_bpd(model, x0, t_samples=6, generator=torch.Generator().manual_seed(10 + i))
        full = d.calc_bpd_loop(model, x0[: R // 3], generator=torch.Generator().manual_seed(20 + i))
        for key, ref in (("total_bpd", full["total_bpd"]), ("kl_bpd", full["terms_bpd"][:, 1:].sum(1)),
                         ("decoder_bpd", full["terms_bpd"][:, 0])):
            a, b = est[key].numpy(), ref.double().numpy()
            se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
            assert abs(a.mean() - b.mean()) < Z_MAX * se, (key, a.mean(), b.mean(), se)
        kl = est["kl_bpd"].numpy()
        ratio = (est["kl_bpd_stderr"].numpy() ** 2).mean() / kl.var(ddof=1)
        assert 0.8 < ratio < 1.25, ratio  # calibrated standard error (R = 3000: ratio's sd is ~0.03-0.05)


def test_works_on_a_respaced_process():
    from ddpm_ref.sampling import respace

    base = make_diffusion("linear", 100)
    d = respace(base, 10)
    x0 = _pixels(1, (1, 2, 2), 3).repeat(2000, 1, 1, 1)
    exact, _ = _variance_mismatch_sum(d.betas)
    out = d.estimate_bpd(_oracle_on(d, base, x0), x0, t_samples=4, generator=torch.Generator().manual_seed(0),
                         clip_denoised=False)
    kl = out["kl_bpd"].numpy()
    assert _z(kl.mean(), kl.std(ddof=1) / math.sqrt(len(kl)), exact) < Z_MAX


def _oracle_on(d, base, x0):
    """An oracle for a respaced process: the network sees base timesteps (call_model maps them)."""
    abar = torch.from_numpy(np.cumprod(1.0 - base.betas))

    def model(x_t, t_base):
        a = abar[t_base].reshape(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - a.sqrt() * x0) / (1.0 - a).sqrt()

    return model
