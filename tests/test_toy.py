"""ddpm_ref.toy: exact mixture marginals and scores, the toy MLP and its training, distances."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm_ref import toy
from ddpm_ref.diffusion import make_diffusion
from ddpm_ref.sampling import ddim_sample, respace

F64 = torch.float64


def random_mixture(d=2, K=3, seed=0):
    """A mixture with unequal weights and anisotropic, correlated covariances."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=F64) + 0.2
    m = torch.randn(K, d, generator=g, dtype=F64)
    A = 0.4 * torch.randn(K, d, d, generator=g, dtype=F64)
    S = A @ A.transpose(1, 2) + 0.05 * torch.eye(d, dtype=F64)
    return toy.GaussianMixture(w / w.sum(), m, S)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def diffusion():
    return make_diffusion("linear", 1000)


# ------------------------------------------------------------------------- densities and scores
def test_log_prob_matches_scipy():
    mix = random_mixture(d=3, K=4, seed=1)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref = np.log(
        sum(
            float(w) * stats.multivariate_normal(m.numpy(), S.numpy()).pdf(x.numpy())
            for w, m, S in zip(mix.weights, mix.means, mix.covs, strict=True)
        )
    )
    np.testing.assert_allclose(mix.log_prob(x).numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("code_t", [0, 9, 250, 999])
def test_exact_score_is_the_autograd_gradient_of_exact_log_density(diffusion, d, code_t):
    mix = random_mixture(d=d, K=3, seed=d)
    x = (1.5 * torch.randn(40, d, generator=torch.Generator().manual_seed(3), dtype=F64)).requires_grad_(True)
    t = torch.full((40,), code_t)
    logq = toy.log_q_t(mix, diffusion, x, t)
    (grad,) = torch.autograd.grad(logq.sum(), x)
    score = toy.score_q_t(mix, diffusion, x.detach(), t)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)


def test_log_q_t_is_the_noised_mixture_and_varies_per_example(diffusion):
    mix = random_mixture(seed=4)
    x = torch.randn(30, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    t = torch.arange(30) * 33  # a different timestep per example
    got = toy.log_q_t(mix, diffusion, x, t)
    want = torch.stack(
        [mix.noised(diffusion.alphas_cumprod[int(ti)]).log_prob(x[i : i + 1])[0] for i, ti in enumerate(t)]
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_component_posterior_is_bayes_rule(diffusion):
    mix = random_mixture(seed=15)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(16), dtype=F64)
    t = torch.full((20,), 120)
    noisy = mix.noised(diffusion.alphas_cumprod[120])
    dens = torch.stack([
        toy.GaussianMixture([1.0], noisy.means[k : k + 1], noisy.covs[k : k + 1]).log_prob(x).exp() * noisy.weights[k]
        for k in range(3)
    ], dim=1)
    post = toy.component_posterior_t(mix, diffusion, x, t)
    torch.testing.assert_close(post, dens / dens.sum(1, keepdim=True), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post, noisy.responsibilities(x), rtol=1e-12, atol=1e-12)


def test_noised_density_integrates_to_one(diffusion):
    mix = toy.gaussian_ring()
    h = 0.05  # midpoint rule: for Gaussians of sd >= 0.1 its error is ~exp(-2 pi^2 sd^2 / h^2), negligible
    grid = torch.arange(-7, 7, h, dtype=F64) + h / 2  # q_T is ~N(0, I): 7 sd covers it
    X, Y = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)
    for code_t in (0, 100, 999):
        t = torch.full((pts.shape[0],), code_t)
        mass = float(torch.exp(toy.log_q_t(mix, diffusion, pts, t)).sum()) * h * h
        assert abs(mass - 1.0) < 1e-6


def test_q_t_is_the_law_of_q_sample(diffusion):
    """Monte Carlo: x_t from ddpm_ref's q_sample has the mean and covariance of the closed-form
    noised mixture."""
    mix = random_mixture(seed=6)
    n, code_t = 200_000, 300
    x0 = mix.sample(n, generator=torch.Generator().manual_seed(7), dtype=F64)
    xt = diffusion.q_sample(x0, torch.full((n,), code_t), generator=torch.Generator().manual_seed(8))
    noisy = mix.noised(diffusion.alphas_cumprod[code_t])
    mean = (noisy.weights[:, None] * noisy.means).sum(0)
    second = (noisy.weights[:, None, None] * (noisy.covs + noisy.means[:, :, None] * noisy.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None, :]
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert torch.all((xt.mean(0) - mean).abs() < 5 * se)
    torch.testing.assert_close(torch.cov(xt.T), cov, rtol=0, atol=0.02)


def test_sample_moments_and_components():
    mix = random_mixture(seed=9)
    n = 100_000
    x, k = mix.sample(n, generator=torch.Generator().manual_seed(10), dtype=F64, return_components=True)
    freq = np.bincount(k.numpy(), minlength=3) / n
    se = np.sqrt(mix.weights.numpy() * (1 - mix.weights.numpy()) / n)
    assert np.all(np.abs(freq - mix.weights.numpy()) < 5 * se)
    for j in range(3):
        torch.testing.assert_close(x[k == j].mean(0), mix.means[j], rtol=0, atol=0.02)
        torch.testing.assert_close(torch.cov(x[k == j].T), mix.covs[j], rtol=0, atol=0.02)
    a = mix.sample(5, generator=torch.Generator().manual_seed(1))
    b = mix.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.dtype == torch.float32 and torch.equal(a, b)


# ------------------------------------------------------------------------- the optimal eps
@pytest.mark.parametrize("code_t", [40, 200, 700])
def test_optimal_eps_equals_brute_force_conditional_expectation(diffusion, code_t):
    """E[eps | x_t] by self-normalised importance weighting over many x_0 draws, which uses only
    q(x_t | x_0) (eq. 4), not the closed-form marginal."""
    mix = random_mixture(seed=11)
    ab, omab = diffusion.alphas_cumprod[code_t], diffusion.one_minus_alphas_cumprod[code_t]
    x0 = mix.sample(400_000, generator=torch.Generator().manual_seed(12), dtype=F64)
    xt = mix.noised(ab).sample(6, generator=torch.Generator().manual_seed(13), dtype=F64)
    eps_all = (xt[:, None, :] - math.sqrt(ab) * x0[None]) / math.sqrt(omab)  # [6, M, 2]
    logw = -0.5 * (eps_all**2).sum(-1)  # log q(x_t | x_0) up to a constant
    w = torch.softmax(logw, dim=1)
    brute = (w[..., None] * eps_all).sum(1)
    ess = 1.0 / (w**2).sum(1)
    assert float(ess.min()) > 500  # enough effective samples for the tolerance below
    sd = torch.sqrt((w[..., None] * (eps_all - brute[:, None]) ** 2).sum(1))
    exact = toy.optimal_eps(mix, diffusion, xt, torch.full((6,), code_t))
    assert torch.all((exact - brute).abs() < 6 * sd / torch.sqrt(ess)[:, None] + 1e-9)
    # and Tweedie: E[eps | x_t] = -sqrt(1 - abar) * score
    score = toy.score_q_t(mix, diffusion, xt, torch.full((6,), code_t))
    torch.testing.assert_close(exact, -math.sqrt(omab) * score, rtol=1e-12, atol=1e-12)


def test_optimal_eps_residual_is_orthogonal_to_functions_of_x_t(diffusion):
    """eps - E[eps | x_t] has zero covariance with any f(x_t) (Monte Carlo), and E[eps | x_t] has a
    lower L_simple than perturbations of it."""
    mix = toy.gaussian_ring()
    n = 200_000
    g = torch.Generator().manual_seed(14)
    x0 = mix.sample(n, generator=g, dtype=F64)
    t = torch.randint(1000, (n,), generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=F64)
    xt = diffusion.q_sample(x0, t, eps)
    opt = toy.optimal_eps(mix, diffusion, xt, t)
    resid = eps - opt
    feats = [torch.ones(n, dtype=F64), xt[:, 0], xt[:, 1], xt[:, 0] ** 2, torch.tanh(xt[:, 1]), t.to(F64) / 1000]
    for f in feats:
        prod = resid * f[:, None]
        z = prod.mean(0) / (prod.std(0) / math.sqrt(n))
        assert torch.all(z.abs() < 5), z
    mse = (resid**2).mean()
    for delta in (0.05, -0.05):
        assert ((eps - opt - delta * torch.tanh(xt)) ** 2).mean() > mse
    xs = toy.optimal_xstart(mix, diffusion, xt, t)
    torch.testing.assert_close(xs, diffusion.predict_xstart_from_eps(xt, t, opt), rtol=1e-9, atol=1e-9)


def test_exact_eps_model_samples_the_data(diffusion):
    mix = toy.gaussian_ring()
    model = toy.ExactEps(mix, diffusion)
    out = ddim_sample(respace(diffusion, "ddim100"), model, (2000, 2), generator=torch.Generator().manual_seed(0),
                      clip_denoised=False, dtype=F64)["sample"]
    data = mix.sample(2000, generator=torch.Generator().manual_seed(1))
    data2 = mix.sample(2000, generator=torch.Generator().manual_seed(2))
    floor = toy.sliced_wasserstein(data, data2)
    assert toy.sliced_wasserstein(out, data) < 2.5 * floor
    assert abs(toy.mean_log_likelihood(out, mix) - toy.mean_log_likelihood(data, mix)) < 0.15
    # a model called through a respaced diffusion receives base timesteps in range
    assert model(out, torch.full((2000,), 999)).dtype == F64


# ------------------------------------------------------------------------- network and training
def test_toy_mlp_shapes_and_learned_variance():
    torch.manual_seed(0)
    m = toy.ToyMLP(hidden=32, num_blocks=2)
    x, t = torch.randn(7, 2), torch.randint(1000, (7,))
    assert m(x, t).shape == (7, 2)
    m4 = toy.ToyMLP(hidden=32, learned_variance=True)
    assert m4(x, t).shape == (7, 4) and m4.out_dim == 4
    m3 = toy.ToyMLP(dim=3, hidden=16)
    assert m3(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)).shape == (4, 3)
    # the timestep matters
    assert not torch.allclose(m(x, torch.zeros(7, dtype=torch.long)), m(x, torch.full((7,), 900)))


def test_train_toy_loss_drops_and_is_deterministic(diffusion):
    mix = toy.gaussian_ring()
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = toy.ToyMLP(hidden=64, num_blocks=2)
        runs.append(toy.train_toy(diffusion, model, mix, steps=300, batch=128, lr=3e-3, seed=1))
    losses = runs[0]
    assert losses.shape == (300,) and losses.dtype == np.float64
    np.testing.assert_array_equal(runs[0], runs[1])
    assert losses[-50:].mean() < 0.8 * losses[:20].mean()
    assert losses[-50:].mean() < 0.3  # at init ~1 (eps has unit variance); the optimum is ~0.18
    assert not model.training
    # other data sources: a fixed data set, a callable
    data = mix.sample(500, generator=torch.Generator().manual_seed(3))
    l2 = toy.train_toy(diffusion, toy.ToyMLP(hidden=16, num_blocks=1), data, steps=5, batch=8, lr=1e-3)
    l3 = toy.train_toy(diffusion, toy.ToyMLP(hidden=16, num_blocks=1), lambda n, g: torch.randn(n, 2, generator=g),
                       steps=5, batch=8, lr=1e-3, lr_decay=False, grad_clip=None)
    assert l2.shape == l3.shape == (5,)


# ------------------------------------------------------------------------- distances
def clouds(seed=0, n=600, m=400):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=F64), torch.randn(m, 2, generator=g, dtype=F64) * 1.3 + 0.2


def test_distances_zero_for_identical_sets_and_equal_empirical_laws():
    a, _ = clouds()
    assert toy.sliced_wasserstein(a, a) == 0.0
    assert toy.energy_distance(a, a) == 0.0
    # the same empirical distribution with every point twice: still 0
    assert toy.sliced_wasserstein(a, torch.cat([a, a])) < 1e-12
    assert abs(toy.energy_distance(a, torch.cat([a, a]))) < 1e-12
    # a permutation of the points changes nothing
    perm = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(1))
    assert toy.sliced_wasserstein(a, a[perm]) < 1e-12


def test_distances_are_symmetric_and_positive():
    a, b = clouds(1)
    sw_ab, sw_ba = toy.sliced_wasserstein(a, b), toy.sliced_wasserstein(b, a)
    ed_ab, ed_ba = toy.energy_distance(a, b), toy.energy_distance(b, a)
    assert sw_ab > 0 and ed_ab > 0
    assert math.isclose(sw_ab, sw_ba, rel_tol=1e-12) and math.isclose(ed_ab, ed_ba, rel_tol=1e-12)


def test_distances_detect_a_shift():
    a, _ = clouds(2)
    s = torch.tensor([0.3, -0.4], dtype=F64)  # |s| = 0.5
    P = 64
    ang = math.pi * torch.arange(P, dtype=F64) / P
    expected = float((0.5 * torch.abs(torch.cos(ang - math.atan2(-0.4, 0.3)))).mean())  # mean |u.s|
    assert math.isclose(toy.sliced_wasserstein(a, a + s, num_projections=P), expected, rel_tol=1e-9)
    assert abs(expected - 2 * 0.5 / math.pi) < 0.01
    eds = [toy.energy_distance(a, a + f * s) for f in (0.1, 0.5, 1.0)]
    assert 0 < eds[0] < eds[1] < eds[2]


def test_one_dimensional_distances_match_scipy():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(300, 1, generator=g, dtype=F64)
    b = torch.rand(170, 1, generator=g, dtype=F64) * 3 - 1
    want_w1 = stats.wasserstein_distance(a[:, 0].numpy(), b[:, 0].numpy())
    assert math.isclose(toy.sliced_wasserstein(a, b, num_projections=1), want_w1, rel_tol=1e-10)
    want_e = stats.energy_distance(a[:, 0].numpy(), b[:, 0].numpy()) ** 2  # scipy returns sqrt(E)
    assert math.isclose(toy.energy_distance(a, b), want_e, rel_tol=1e-10)


def test_distance_noise_floor_shrinks_like_one_over_sqrt_n():
    mix = toy.gaussian_ring()
    vals = {}
    for n in (250, 4000):
        vals[n] = np.mean([
            toy.sliced_wasserstein(mix.sample(n, generator=torch.Generator().manual_seed(2 * s)),
                                   mix.sample(n, generator=torch.Generator().manual_seed(2 * s + 1)))
            for s in range(4)
        ])
    assert 2.5 < vals[250] / vals[4000] < 6.5  # sqrt(16) = 4


def test_sliced_wasserstein_to_mixture():
    mix = toy.gaussian_ring()
    # against a huge sample of the mixture the two versions agree
    big = mix.sample(200_000, generator=torch.Generator().manual_seed(6))
    small = mix.sample(1000, generator=torch.Generator().manual_seed(7))
    exact = toy.sliced_wasserstein_to_mixture(small, mix)
    assert abs(exact - toy.sliced_wasserstein(small, big, num_projections=32)) < 2e-3
    # 1-D: W1 between a sample and N(0, 1) against scipy's W1 to a fine quantile grid of N(0, 1)
    one = toy.GaussianMixture([1.0], torch.zeros(1, 1), torch.ones(1, 1, 1))
    x = torch.randn(500, 1, generator=torch.Generator().manual_seed(8), dtype=F64)
    q = stats.norm.ppf((np.arange(200_000) + 0.5) / 200_000)
    w1 = toy.sliced_wasserstein_to_mixture(x, one, num_projections=1)
    assert abs(w1 - stats.wasserstein_distance(x[:, 0], q)) < 1e-4
    # a shifted cloud is further away; the noise floor shrinks with N
    assert toy.sliced_wasserstein_to_mixture(small + 0.3, mix) > exact + 0.1
    floor = [np.mean([toy.sliced_wasserstein_to_mixture(mix.sample(n, generator=torch.Generator().manual_seed(s)), mix)
                      for s in range(3)]) for n in (200, 3200)]
    assert 2.5 < floor[0] / floor[1] < 6.5
    with pytest.raises(ValueError, match="shape"):
        toy.sliced_wasserstein_to_mixture(torch.zeros(3, 3), mix)
    with pytest.raises(ValueError, match="grid_size"):
        toy.sliced_wasserstein_to_mixture(small, mix, grid_size=10)


def test_mixture_quality_measures():
    mix = toy.gaussian_ring()
    data = mix.sample(20_000, generator=torch.Generator().manual_seed(4))
    ll = toy.mean_log_likelihood(data, mix)
    # a blurred copy scores lower
    blurred = data + 0.2 * torch.randn(data.shape, generator=torch.Generator().manual_seed(5))
    assert toy.mean_log_likelihood(blurred, mix) < ll - 0.5
    w = toy.mode_weights(data, mix)
    assert w.shape == (8,) and math.isclose(w.sum(), 1.0) and np.all(np.abs(w - 1 / 8) < 0.01)
    one_mode = mix.means[:1].expand(100, 2).to(torch.float32)
    assert toy.mode_weights(one_mode, mix)[0] == 1.0


def test_named_distributions():
    ring = toy.gaussian_ring(num_modes=6, radius=2.0, std=0.3)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((6,), 2.0, dtype=F64))
    roll = toy.swiss_roll_mixture(num_modes=10)
    assert roll.num_components == 10 and roll.dim == 2
    assert float(roll.means.norm(dim=1).max()) <= 1.0 + 1e-12


# ------------------------------------------------------------------------- input validation
def test_mixture_validation():
    eye = torch.eye(2, dtype=F64)
    with pytest.raises(ValueError, match="sum to 1"):
        toy.GaussianMixture([0.5, 0.6], torch.zeros(2, 2), eye.expand(2, 2, 2))
    with pytest.raises(ValueError, match="positive"):
        toy.GaussianMixture([1.5, -0.5], torch.zeros(2, 2), eye.expand(2, 2, 2))
    with pytest.raises(ValueError, match="positive definite"):
        toy.GaussianMixture([1.0], torch.zeros(1, 2), torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match="symmetric"):
        toy.GaussianMixture([1.0], torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="covs must have shape"):
        toy.GaussianMixture([1.0], torch.zeros(1, 2), torch.eye(3)[None])
    with pytest.raises(ValueError, match="weights must have shape"):
        toy.GaussianMixture([0.5, 0.5], torch.zeros(1, 2), eye[None])
    with pytest.raises(ValueError, match="non-finite"):
        toy.GaussianMixture([1.0], torch.tensor([[float("nan"), 0.0]]), eye[None])
    with pytest.raises(ValueError, match="num_modes"):
        toy.gaussian_ring(num_modes=0)
    with pytest.raises(ValueError, match="std"):
        toy.gaussian_ring(std=0.0)
    with pytest.raises(ValueError, match="abar"):
        toy.gaussian_ring().noised(0.0)
    with pytest.raises(ValueError, match="positive int"):
        toy.gaussian_ring().sample(0)


def test_exact_quantities_validation(diffusion):
    mix = toy.gaussian_ring()
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        toy.score_q_t(mix, diffusion, x, torch.tensor([0, 1, 1000]))
    with pytest.raises(ValueError, match="integer dtype"):
        toy.log_q_t(mix, diffusion, x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        toy.optimal_eps(mix, diffusion, torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        toy.log_q_t(mix, diffusion, torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="GaussianMixture"):
        toy.ExactEps("ring", diffusion)
    with pytest.raises(ValueError, match="GaussianDiffusion"):
        toy.log_q_t(mix, "linear", x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="2 dimensions"):
        mix.log_prob(torch.zeros(2))


def test_network_and_training_validation(diffusion):
    m = toy.ToyMLP(hidden=8, num_blocks=1)
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        m(torch.zeros(3, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        m(torch.zeros(3, 2), torch.tensor([0, 0, -1]))
    with pytest.raises(ValueError, match="non-finite"):
        m(torch.full((1, 2), float("inf")), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="emb_dim"):
        toy.ToyMLP(emb_dim=2)
    mix = toy.gaussian_ring()
    with pytest.raises(ValueError, match="steps"):
        toy.train_toy(diffusion, m, mix, steps=0, batch=4, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        toy.train_toy(diffusion, m, mix, steps=1, batch=4, lr=-1.0)
    with pytest.raises(ValueError, match="sampler"):
        toy.train_toy(diffusion, m, "ring", steps=1, batch=4, lr=1e-3)
    with pytest.raises(ValueError, match="GaussianDiffusion"):
        toy.train_toy(None, m, mix, steps=1, batch=4, lr=1e-3)


def test_distance_validation():
    a = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="same dimension"):
        toy.sliced_wasserstein(a, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="non-finite"):
        toy.energy_distance(a, torch.full((2, 2), float("nan")))
    with pytest.raises(ValueError, match="2 dimensions"):
        toy.energy_distance(torch.zeros(4), a)
    with pytest.raises(ValueError, match="num_projections"):
        toy.sliced_wasserstein(a, a, num_projections=0)
    with pytest.raises(ValueError, match="at least one point"):
        toy.sliced_wasserstein(torch.zeros(0, 2), a)
    with pytest.raises(ValueError, match="GaussianMixture"):
        toy.mean_log_likelihood(a, None)
