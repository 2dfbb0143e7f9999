"""An independent implementation as oracle: diffusers' DDPMScheduler and DDIMScheduler.

diffusers computes its schedule in float32 and indexes timesteps 0..T-1 like ddpm_ref, so the
two must agree within float32 tolerance on betas, alphabar, posterior variances and on whole
reverse steps given identical model outputs and noise.
"""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from ddpm_ref.diffusion import make_diffusion  # noqa: E402
from ddpm_ref.sampling import ddim_step, respace, space_timesteps, spacing_refusal  # noqa: E402

F32 = dict(rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ours, theirs", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedules_agree(ours, theirs):
    d = make_diffusion(ours, 1000)
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, beta_start=1e-4, beta_end=0.02)
    assert np.allclose(d.betas, s.betas.double().numpy(), **F32)
    assert np.allclose(d.alphas_cumprod, s.alphas_cumprod.double().numpy(), **F32)


def test_posterior_variances_agree():
    d = make_diffusion("linear", 1000)
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small")
    # diffusers re-derives beta_t = 1 - alphabar_t / alphabar_{t-1} in float32: the ratio is within
    # 1e-4 of 1, so float32 rounding (6e-8) leaves a relative error of up to ~6e-4 in beta_t.
    theirs_small = np.array([s._get_variance(t).item() for t in range(1, 1000)])
    assert np.allclose(d.posterior_variance[1:], theirs_small, rtol=1e-3, atol=0)
    assert np.median(np.abs(theirs_small / d.posterior_variance[1:] - 1)) < 1e-5
    theirs_large = np.array([s._get_variance(t, variance_type="fixed_large").item() for t in range(1, 1000)])
    # diffusers' fixed_large is beta_t; ddpm_ref replaces only code t = 0, which never adds noise
    assert np.allclose(d.fixedlarge_variance[1:], theirs_large, rtol=1e-3, atol=0)


@pytest.mark.parametrize("var_type, theirs", [("fixedsmall", "fixed_small"), ("fixedlarge", "fixed_large")])
@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_one_reverse_step_agrees(var_type, theirs, t):
    d = make_diffusion("linear", 1000, model_var_type=var_type)
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=theirs, clip_sample=True)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(2, 3, 8, 8, generator=g)
    eps = torch.randn(2, 3, 8, 8, generator=g)
    ref = s.step(eps, t, x, generator=torch.Generator().manual_seed(123)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(123))
    ours = d.p_sample(lambda xx, tt: eps, x, torch.full((2,), t), noise=noise)["sample"]
    assert torch.allclose(ours, ref, rtol=1e-4, atol=2e-5), (ours - ref).abs().max()


def test_ddim_respaced_steps_agree():
    base = make_diffusion("linear", 1000)
    sp = respace(base, "ddim50")
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, set_alpha_to_one=True)
    s.set_timesteps(50)
    assert sorted(s.timesteps.tolist()) == sp.timestep_map.tolist()
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 3, generator=g) * 0.3

    def model(x, t):  # a fixed, t-dependent "network", evaluated at base timesteps
        return torch.einsum("ij,njhw->nihw", W, x) * (1 + t.float()[:, None, None, None] / 1000)

    x_ours = x_ref = torch.randn(2, 3, 8, 8, generator=g)
    for k, t_base in zip(range(49, -1, -1), s.timesteps.tolist(), strict=True):
        assert sp.timestep_map[k] == t_base
        tt = torch.full((2,), k)
        x_ours = ddim_step(sp, model, x_ours, tt, eta=0.0)["sample"]
        eps = model(x_ref, torch.full((2,), t_base))
        x_ref = s.step(eps, t_base, x_ref, eta=0.0, use_clipped_model_output=True).prev_sample
        assert torch.allclose(x_ours, x_ref, rtol=1e-4, atol=5e-5), (k, (x_ours - x_ref).abs().max())


# ------------------------------------------------------------------ spacings, for every K
def _diffusers_steps(T, spacing):
    s = DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)

    def steps(K):
        s.set_timesteps(K)
        return sorted(s.timesteps.tolist())

    return steps


@pytest.mark.parametrize("T", [1000, 50, 4000])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spacings_agree_with_diffusers_for_every_K(T, spacing):
    """ddpm_ref's conventions against DDIMScheduler.set_timesteps(K) for every K in 1..T.

    diffusers rounds floating-point values, ddpm_ref exact fractions: where (T - 1) i / (K - 1) or
    T j / K is exactly a half-integer, float error may push diffusers to either neighbour, while
    ddpm_ref rounds to the even one (np.round's rule). For "trailing", np.arange(T, 0, -T / K) has
    K + 1 elements at some K (rounding of its length), and diffusers then keeps a timestep -1. Every
    other step must agree, and ddpm_ref refuses exactly the K at which diffusers' own "leading"
    schedule ends more than one stride T // K below T - 1."""
    theirs = _diffusers_steps(T, spacing)
    ties, extra = [], []
    for K in range(1, T + 1):
        d = theirs(K)
        if spacing == "trailing" and len(d) == K + 1:
            assert d[0] == -1 and d[1] >= 0, (K, d[:3])  # diffusers' extra step, outside [0, T)
            extra.append(K)
            d = d[1:]
        ours = space_timesteps(T, K, spacing, allow_short=True)
        assert len(d) == len(ours) == K, (K, len(d))
        for a, b, i in zip(d, ours, range(K), strict=True):
            if a != b:  # only at an exact tie, where ddpm_ref takes the even neighbour
                num, den = ((T - 1) * i, K - 1) if spacing == "linspace" else (T * (i + 1), K)
                off = 0 if spacing == "linspace" else 1
                assert 2 * (num % den) == den and abs(a - b) == 1 and (b + off) % 2 == 0, (K, i, a, b)
                ties.append(K)
        if spacing == "leading" and K > 1:
            short = (T - 1) - d[-1] > T // K
            assert (spacing_refusal(T, K, "leading") is not None) == short, K
    assert spacing != "leading" or ties == []
    if T == 1000:  # what the scan found (diffusers 0.3x-0.4x): e.g. trailing K = 61 gives 62 steps
        assert (spacing != "trailing") or (61 in extra and len(extra) > 50), extra[:5]


@pytest.mark.parametrize("spacing, K", [("leading", 50), ("trailing", 50), ("trailing", 8), ("leading", 125)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_steps_with_eta_agree(spacing, K, eta):
    """Whole DDIM chains (DDIM eq. 12 with sigma_t(eta) of DDIM eq. 16) against DDIMScheduler.step with
    the same noise. K divides T here: diffusers takes the previous step as t - T // K, which is the
    next kept step only for such K."""
    T = 1000
    base = make_diffusion("linear", T)
    sp = respace(base, K, spacing)
    s = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=True, set_alpha_to_one=True,
                      timestep_spacing=spacing)
    s.set_timesteps(K)
    assert sorted(s.timesteps.tolist()) == sp.timestep_map.tolist()
    g = torch.Generator().manual_seed(K)
    W = torch.randn(3, 3, generator=g) * 0.3

    def model(x, t):
        return torch.einsum("ij,njhw->nihw", W, x) * (1 + t.float()[:, None, None, None] / 1000)

    x = torch.randn(2, 3, 8, 8, generator=g)
    for k, t_base in zip(range(K - 1, -1, -1), s.timesteps.tolist(), strict=True):
        z = torch.randn(x.shape, generator=g)  # each step from the same x: float32 errors do not accumulate
        ours = ddim_step(sp, model, x, torch.full((2,), k), eta=eta, noise=z)["sample"]
        eps = model(x, torch.full((2,), t_base))
        ref = s.step(eps, t_base, x, eta=eta, use_clipped_model_output=True,
                     variance_noise=z if eta > 0 else None).prev_sample
        assert torch.allclose(ours, ref, rtol=1e-4, atol=2e-5), (k, (ours - ref).abs().max())
        x = ours


def test_ddim_eta_beyond_the_bound_is_refused_where_diffusers_returns_nan():
    from ddpm_ref.sampling import ddim_max_eta

    sp = respace(make_diffusion("linear", 1000), 10, "trailing")
    eta = 1.01 * ddim_max_eta(sp)
    with pytest.raises(ValueError, match="too large for DDIM"):
        ddim_step(sp, lambda x, t: torch.zeros_like(x), torch.zeros(1, 3, 2, 2), torch.full((1,), 5), eta=eta)
    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing")
    s.set_timesteps(10)
    t_worst = int(np.argmin(sp.one_minus_alphas_cumprod[1:] / sp.betas[1:])) + 1
    out = s.step(torch.zeros(1, 3, 2, 2), int(sp.timestep_map[t_worst]), torch.zeros(1, 3, 2, 2), eta=eta,
                 variance_noise=torch.zeros(1, 3, 2, 2)).prev_sample
    assert torch.isnan(out).all()  # diffusers: sqrt of a negative number
