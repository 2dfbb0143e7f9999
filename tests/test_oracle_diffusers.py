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
from ddpm_ref.sampling import ddim_step, respace  # noqa: E402

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
