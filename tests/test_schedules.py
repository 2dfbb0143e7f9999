"""Beta schedules: each named schedule against its definition, computed independently."""

import math

import numpy as np
import pytest

from ddpm_ref.schedules import SCHEDULES, cosine_alpha_bar, get_beta_schedule


def test_linear_is_the_papers_schedule():
    b = get_beta_schedule("linear")
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == 1e-4 and b[-1] == 0.02
    # evenly spaced: constant first difference
    step = (0.02 - 1e-4) / 999
    assert np.max(np.abs(np.diff(b) - step)) < 1e-17
    # entry by entry against the definition beta_t = beta_1 + (t - 1) * step (paper t = 1..T)
    for paper_t in (1, 2, 500, 1000):
        assert math.isclose(b[paper_t - 1], 1e-4 + (paper_t - 1) * step, rel_tol=1e-14)


def test_quad_const_jsd_warmup():
    T = 100
    q = get_beta_schedule("quad", num_diffusion_timesteps=T)
    assert np.allclose(np.sqrt(q), np.linspace(1e-2, math.sqrt(0.02), T), rtol=0, atol=1e-16)
    c = get_beta_schedule("const", num_diffusion_timesteps=T, beta_end=0.05)
    assert np.all(c == 0.05)
    j = get_beta_schedule("jsd", num_diffusion_timesteps=T)
    assert np.allclose(j, [1.0 / (T - i) for i in range(T)], rtol=1e-15)
    assert j[-1] == 1.0
    for name, frac in (("warmup10", 0.1), ("warmup50", 0.5)):
        w = get_beta_schedule(name, num_diffusion_timesteps=T)
        n = int(T * frac)
        assert np.allclose(w[:n], np.linspace(1e-4, 0.02, n), rtol=1e-15)
        assert np.all(w[n:] == 0.02)


def test_cosine_matches_its_alphabar():
    T = 1000
    b = get_beta_schedule("cosine", num_diffusion_timesteps=T)
    abar = np.cumprod(1 - b)
    target = cosine_alpha_bar(np.arange(1, T + 1) / T)
    unclipped = b < 0.999
    # where no beta was clipped, the cumulative product reproduces alphabar(t/T) exactly
    k = np.argmin(unclipped) if not unclipped.all() else T
    assert np.allclose(abar[:k], target[:k], rtol=1e-12, atol=0)
    assert np.all(b <= 0.999) and np.all(b > 0)
    assert cosine_alpha_bar(0.0) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_schedule_is_float64_in_range(name):
    b = get_beta_schedule(name, num_diffusion_timesteps=50)
    assert b.dtype == np.float64 and b.shape == (50,)
    assert np.all((b > 0) & (b <= 1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "linearr"}, "unknown beta schedule 'linearr'"),
        ({"name": "linear", "num_diffusion_timesteps": 0}, "must be >= 1"),
        ({"name": "linear", "num_diffusion_timesteps": 10.0}, "must be a positive int"),
        ({"name": "linear", "beta_start": -1e-4}, "beta_start must be a finite number in"),
        ({"name": "linear", "beta_end": 1.5}, "beta_end must be a finite number in"),
        ({"name": "linear", "beta_end": float("nan")}, "beta_end must be a finite number"),
        ({"name": "linear", "beta_start": 0.1, "beta_end": 0.01}, "must not exceed"),
        ({"name": "cosine", "max_beta": 1.0}, "max_beta must be in"),
    ],
)
def test_bad_schedule_arguments(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        get_beta_schedule(name, **kwargs)
