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
