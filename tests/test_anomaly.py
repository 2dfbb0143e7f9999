"""ddpm_ref.anomaly: ROC/AUC (ties, DeLong's standard error), image distortions, remedies."""

import math

import numpy as np
import pytest
from scipy import stats

from ddpm_ref import anomaly
from ddpm_ref.data import load_sample


@pytest.fixture(scope="module")
def images():
    return load_sample("test")[0][:12]


# ------------------------------------------------------------------------------- ROC and AUC
def test_auc_counts_ties_as_one_half():
    assert anomaly.auc([1.0, 2.0], [2.0, 3.0]) == 0.875  # pairs: 1, 1, 1/2 (the tie 2 = 2), 1
    assert anomaly.auc([1.0, 1.0], [1.0, 1.0]) == 0.5
    assert anomaly.auc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert anomaly.auc([2.0, 3.0], [0.0, 1.0]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_is_the_mann_whitney_statistic(seed):
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, 6, size=37).astype(float)  # many ties
    pos = rng.integers(1, 8, size=23).astype(float)
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic  # midranks: ties count 1/2
    assert abs(anomaly.auc(neg, pos) - u / (37 * 23)) < 1e-14


@pytest.mark.parametrize("seed", [3, 4])
def test_roc_curve_area_is_the_auc_and_the_curve_is_monotone(seed):
    rng = np.random.default_rng(seed)
    neg = rng.integers(0, 10, size=50).astype(float)
    pos = rng.integers(2, 12, size=40).astype(float)
    fpr, tpr, thr = anomaly.roc_curve(neg, pos)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1 and thr[0] == np.inf
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thr) < 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert abs(area - anomaly.auc(neg, pos)) < 1e-14
    # each point is the rule "flag when score >= threshold", counted directly
    for f, t, h in zip(fpr[1:], tpr[1:], thr[1:], strict=True):
        assert f == np.mean(neg >= h) and t == np.mean(pos >= h)


def test_auc_stderr_is_calibrated():
    """DeLong's standard error against the spread of the AUC over 400 independent data sets
    (normal scores, shift 1): the mean SE matches the SD of the AUCs within 15%."""
    rng = np.random.default_rng(5)
    aucs, ses = [], []
    for _ in range(400):
        neg, pos = rng.standard_normal(30), rng.standard_normal(25) + 1.0
        aucs.append(anomaly.auc(neg, pos))
        ses.append(anomaly.auc_stderr(neg, pos))
    sd = np.std(aucs, ddof=1)
    assert abs(np.mean(ses) / sd - 1) < 0.15, (np.mean(ses), sd)
    # and the AUC is unbiased for P(pos > neg) = Phi(1 / sqrt 2)
    assert abs(np.mean(aucs) - stats.norm.cdf(1 / math.sqrt(2))) < 4 * sd / math.sqrt(400)


def test_auc_stderr_closed_form_for_a_small_case():
    neg, pos = np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0])
    # psi rows (neg) x cols (pos): [[1, 1], [1/2, 1], [0, 1]]
    v_pos = np.array([0.5, 1.0])  # column means
    v_neg = np.array([1.0, 0.75, 0.5])  # row means
    want = math.sqrt(np.var(v_pos, ddof=1) / 2 + np.var(v_neg, ddof=1) / 3)
    assert abs(anomaly.auc_stderr(neg, pos) - want) < 1e-15


def test_auc_null_stderr_is_the_spread_under_no_difference():
    assert abs(anomaly.auc_null_stderr(32, 32) - math.sqrt(65 / (12 * 32 * 32))) < 1e-15
    rng = np.random.default_rng(6)
    aucs = [anomaly.auc(rng.standard_normal(20), rng.standard_normal(12)) for _ in range(2000)]
    se = anomaly.auc_null_stderr(20, 12)
    assert abs(np.mean(aucs) - 0.5) < 4 * se / math.sqrt(2000)
    assert abs(np.std(aucs, ddof=1) / se - 1) < 4 * math.sqrt(1 / (2 * 1999))


# ------------------------------------------------------------------------------- distortions
def test_shuffle_pixels_keeps_each_images_pixels(images):
    out = anomaly.shuffle_pixels(images, 0)
    assert out.dtype == np.uint8 and out.shape == images.shape
    for a, b in zip(images, out, strict=True):
        key = lambda im: np.sort(im.reshape(-1, 3).view([("r", "u1"), ("g", "u1"), ("b", "u1")]), axis=0)  # noqa: E731
        assert np.array_equal(key(a), key(b))  # the same RGB triples
        assert not np.array_equal(a, b)
    assert np.array_equal(out, anomaly.shuffle_pixels(images, 0))  # seeded


def test_invert_and_constant(images):
    inv = anomaly.invert(images)
    assert np.array_equal(anomaly.invert(inv), images)
    assert np.all(inv.astype(int) + images == 255)
    c = anomaly.constant_images(images)
    assert np.all(c == c[:, :1, :1, :])  # constant per image and channel
    mean = images.reshape(len(images), -1, 3).mean(axis=1)
    assert np.all(np.abs(c[:, 0, 0, :] - mean) <= 0.5)


def test_add_noise_statistics(images):
    out = anomaly.add_noise(images, 8.0, 1)
    assert out.dtype == np.uint8
    diff = out.astype(float) - images
    inside = (images > 40) & (images < 215)  # far from the clipping
    d = diff[inside]
    n = d.size
    # rounding N(0, 64) to integers: variance 64 + 1/12 (Sheppard), mean 0
    assert abs(d.mean()) < 4 * 8 / math.sqrt(n)
    assert abs(d.var() / (64 + 1 / 12) - 1) < 4 * math.sqrt(2 / n)


def test_blur_is_the_binomial_filter(images):
    impulse = np.zeros((1, 9, 9, 3), dtype=np.uint8)
    impulse[0, 4, 4, :] = 255
    out = anomaly.blur(impulse)
    k = np.array([1, 4, 6, 4, 1])
    # two integer passes, each rounded half up: along the height, then along the width
    col = (255 * k + 8) // 16
    want = (np.outer(col, k) + 8) // 16
    assert np.array_equal(out[0, 2:7, 2:7, 0], want)
    assert out[0, :2].sum() == 0 and out[0, :, :2].sum() == 0
    flat = np.full((2, 8, 8, 3), 77, dtype=np.uint8)
    assert np.array_equal(anomaly.blur(flat, 3), flat)  # constants are fixed points
    b = anomaly.blur(images, 2)
    hf = lambda x: np.abs(np.diff(x.astype(float), axis=2)).mean()  # noqa: E731
    assert hf(b) < 0.6 * hf(images)  # smoother
    assert abs(b.astype(float).mean() - images.astype(float).mean()) < 1.0


def test_jpeg_is_lossy_and_close(images):
    j75, j95 = anomaly.jpeg(images, 75), anomaly.jpeg(images, 95)
    assert j75.dtype == np.uint8 and j75.shape == images.shape
    rmse = lambda a: math.sqrt(np.mean((a.astype(float) - images) ** 2))  # noqa: E731
    assert 1.0 < rmse(j95) < rmse(j75) < 15.0


def test_png_bits_per_dim_orders_by_complexity(images):
    const = anomaly.png_bits_per_dim(anomaly.constant_images(images))
    real = anomaly.png_bits_per_dim(images)
    noisy = anomaly.png_bits_per_dim(anomaly.add_noise(images, 30.0, 2))
    assert np.all(const < 0.5) and np.all(const < real) and np.mean(real) < np.mean(noisy) <= 8.5


def test_remedies():
    ref = np.array([3.0, 4.0, 5.0])
    assert np.array_equal(anomaly.typicality_score([2.0, 4.0, 7.0], ref), [2.0, 0.0, 3.0])
    assert np.array_equal(anomaly.complexity_ratio_score([3.0, 2.0], [1.0, 2.5]), [2.0, -0.5])
    b = np.array([1.0, 2.0, 6.0])  # leave one out: means of the others 4, 3.5, 1.5
    assert np.allclose(anomaly.typicality_score_loo(b), [3.0, 1.5, 4.5], rtol=0, atol=1e-15)


def test_bad_inputs_raise_clear_value_errors(images):
    cases = [
        (lambda: anomaly.auc([], [1.0]), "non-empty"),
        (lambda: anomaly.auc([[1.0]], [1.0]), "1-D"),
        (lambda: anomaly.auc([np.nan], [1.0]), "non-finite"),
        (lambda: anomaly.auc(["a"], [1.0]), "real numbers"),
        (lambda: anomaly.auc_stderr([1.0], [1.0, 2.0]), ">= 2"),
        (lambda: anomaly.shuffle_pixels(images.astype(float), 0), "uint8"),
        (lambda: anomaly.shuffle_pixels(images, "x"), "rng"),
        (lambda: anomaly.add_noise(images, -1.0, 0), "std"),
        (lambda: anomaly.blur(images, 0), "passes"),
        (lambda: anomaly.jpeg(images, 100), "quality"),
        (lambda: anomaly.invert(images[..., 0]), "shape"),
        (lambda: anomaly.complexity_ratio_score([1.0], [1.0, 2.0]), "same shape"),
        (lambda: anomaly.typicality_score_loo([1.0]), ">= 2"),
        (lambda: anomaly.auc_null_stderr(0, 3), "n_neg"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
