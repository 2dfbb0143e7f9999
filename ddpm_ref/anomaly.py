"""Anomaly scoring with a likelihood (bound): ROC curves and AUC with a standard error, distortions
of 8-bit images, and the two standard remedies for likelihood-based out-of-distribution detection.

A diffusion model's bound in bits/dim (eq. 5) is an upper bound on -log2 p_theta(x_0) / D and can
serve as an anomaly score: flag x_0 when its bits/dim are high. Nalisnick et al. (2019) showed the
failure mode of every likelihood model: simple, smooth inputs get *higher* likelihood (fewer
bits/dim) than the data the model was trained on. What is measured here:

- :func:`roc_curve`, :func:`auc`, :func:`auc_stderr`: the receiver operating characteristic of a
  score that should be *larger* for anomalies ("positives") than for in-distribution examples
  ("negatives"); AUC = P(score_pos > score_neg) + 1/2 P(score_pos = score_neg) (the Mann-Whitney
  statistic, ties counted one half), and DeLong et al. (1988)'s standard error.
- Distortions of uint8 [N, H, W, 3] images (results stay valid 8-bit images, so the discrete
  decoder of eq. 13 applies): :func:`shuffle_pixels`, :func:`invert`, :func:`add_noise`,
  :func:`blur` (integer binomial filter, exact on every CPU), :func:`constant_images`, and
  :func:`jpeg` (lossy re-encoding with Pillow, for the data-quality question).
- Remedies: :func:`png_bits_per_dim` (a generic lossless compressor's code length, the "input
  complexity" of Serra et al. 2020, whose difference with the model's bits/dim is a likelihood
  ratio against a universal background model: :func:`complexity_ratio_score`), and
  :func:`typicality_score` (Nalisnick et al. 2019, "Detecting out-of-distribution inputs ... using
  typicality": distance of the bits/dim from their in-distribution mean, in both directions).
"""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = [
    "auc",
    "auc_stderr",
    "auc_null_stderr",
    "roc_curve",
    "shuffle_pixels",
    "invert",
    "add_noise",
    "blur",
    "constant_images",
    "jpeg",
    "png_bits_per_dim",
    "typicality_score",
    "typicality_score_loo",
    "complexity_ratio_score",
]


# ------------------------------------------------------------------------------- ROC and AUC
def _scores(name: str, s) -> np.ndarray:
    try:
        import torch

        if isinstance(s, torch.Tensor):
            s = s.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    a = np.asarray(s)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim != 1 or a.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite scores (NaN or inf)")
    return a


def _psi(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """psi[i, j] = 1 if pos[j] > neg[i], 1/2 if equal, 0 otherwise: [n_neg, n_pos]."""
    diff = pos[None, :] - neg[:, None]
    return (diff > 0).astype(np.float64) + 0.5 * (diff == 0)


def auc(scores_neg, scores_pos) -> float:
    """Area under the ROC curve for "larger score = positive (anomaly)".

    ``scores_neg`` [n] (in-distribution) and ``scores_pos`` [m] (anomalies):
    AUC = (1 / n m) sum_ij psi(neg_i, pos_j) with psi = 1 for pos > neg, 1/2 for a tie, 0 else:
    the probability that a random anomaly outscores a random normal example, ties split evenly
    (the Mann-Whitney U statistic / n m). 1 = perfect, 1/2 = chance, 0 = perfectly reversed.
    It equals the trapezoidal area under :func:`roc_curve`.
    """
    neg, pos = _scores("scores_neg", scores_neg), _scores("scores_pos", scores_pos)
    return float(_psi(neg, pos).mean())


def auc_stderr(scores_neg, scores_pos) -> float:
    """DeLong et al. (1988)'s standard error of :func:`auc`, from its structural components.

    With V_pos[j] = mean_i psi(neg_i, pos_j) and V_neg[i] = mean_j psi(neg_i, pos_j),
    Var(AUC) ~ Var(V_pos) / m + Var(V_neg) / n (sample variances, ddof = 1). Needs at least two
    scores in each group. The sampling model is independent draws within and between the groups.
    """
    neg, pos = _scores("scores_neg", scores_neg), _scores("scores_pos", scores_pos)
    if neg.size < 2 or pos.size < 2:
        raise ValueError(f"the standard error needs >= 2 scores per group, got {neg.size} and {pos.size}")
    psi = _psi(neg, pos)
    v_pos, v_neg = psi.mean(axis=0), psi.mean(axis=1)
    return float(math.sqrt(v_pos.var(ddof=1) / pos.size + v_neg.var(ddof=1) / neg.size))


def auc_null_stderr(n_neg: int, n_pos: int) -> float:
    """Standard error of :func:`auc` when both groups come from one continuous distribution:
    sqrt((n + m + 1) / (12 n m)) (the Mann-Whitney null variance, no ties). An AUC further than
    4 of these from 1/2 is a detection (or a reversed one) that chance does not explain."""
    for name, v in (("n_neg", n_neg), ("n_pos", n_pos)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n, m = int(n_neg), int(n_pos)
    return math.sqrt((n + m + 1) / (12.0 * n * m))


def roc_curve(scores_neg, scores_pos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve of the rule "flag when score >= threshold": ``(fpr, tpr, thresholds)``.

    One point per distinct score (descending thresholds) plus the start (0, 0) at threshold
    +inf: fpr = fraction of negatives flagged, tpr = fraction of positives flagged. Tied scores
    move both rates at once (a diagonal segment), so the trapezoidal area equals :func:`auc`
    with ties counted one half. All arrays float64 [K + 1].
    """
    neg, pos = _scores("scores_neg", scores_neg), _scores("scores_pos", scores_pos)
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    fpr = (neg.size - np.searchsorted(neg_sorted, thr, side="left")) / neg.size
    tpr = (pos.size - np.searchsorted(pos_sorted, thr, side="left")) / pos.size
    return (np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr]), np.concatenate([[np.inf], thr]))


# ------------------------------------------------------------------------------- distortions
def _images(images) -> np.ndarray:
    from .data.pixels import _as_uint8_nhwc

    return _as_uint8_nhwc(images)


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def shuffle_pixels(images, rng) -> np.ndarray:
    """Permute the pixel positions of each image at random (its own permutation per image),
    keeping every pixel's RGB triple: the colour histogram survives, all spatial structure is
    destroyed. uint8 [N, H, W, 3] -> same; ``rng`` a numpy Generator or a seed."""
    x = _images(images)
    g = _rng(rng)
    N, H, W, C = x.shape
    flat = x.reshape(N, H * W, C)
    out = np.empty_like(flat)
    for i in range(N):
        out[i] = flat[i, g.permutation(H * W)]
    return out.reshape(N, H, W, C)


def invert(images) -> np.ndarray:
    """Photographic negatives, 255 - v (x -> -x on the model's [-1, 1] scale)."""
    return (255 - _images(images)).astype(np.uint8)


def add_noise(images, std: float, rng) -> np.ndarray:
    """Add independent N(0, std^2) noise (``std`` in 0..255 units) to every value, round to the
    nearest integer and clip to 0..255: still an 8-bit image."""
    x = _images(images)
    if isinstance(std, bool) or not isinstance(std, (int, float, np.floating)) or not (math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a positive number (in 0..255 units), got {std!r}")
    z = _rng(rng).standard_normal(x.shape)
    return np.clip(x.astype(np.int64) + np.rint(float(std) * z).astype(np.int64), 0, 255).astype(np.uint8)


_BINOMIAL = np.array([1, 4, 6, 4, 1], dtype=np.int64)  # sums to 16


def blur(images, passes: int = 1) -> np.ndarray:
    """Blur with the separable binomial filter [1, 4, 6, 4, 1] / 16 (a Gaussian of standard
    deviation 1 pixel), ``passes`` times (standard deviation sqrt(passes) pixels), with mirrored
    borders. Integer arithmetic with round-half-up after each pass: the same bytes on every CPU."""
    x = _images(images)
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1:
        raise ValueError(f"passes must be a positive int, got {passes!r}")
    v = x.astype(np.int64)
    for _ in range(int(passes)):
        for axis in (1, 2):
            pad = [(0, 0)] * 4
            pad[axis] = (2, 2)
            p = np.pad(v, pad, mode="reflect")
            n = v.shape[axis]
            acc = sum(int(w) * np.take(p, np.arange(k, k + n), axis=axis) for k, w in enumerate(_BINOMIAL))
            v = (acc + 8) // 16  # round half up
    return v.astype(np.uint8)


def constant_images(images) -> np.ndarray:
    """Each image replaced by its mean colour (per channel, rounded half up): constant images
    with the colour statistics of the originals."""
    x = _images(images)
    H, W = x.shape[1:3]
    total = x.astype(np.int64).sum(axis=(1, 2), keepdims=True)
    mean = (2 * total + H * W) // (2 * H * W)
    return np.broadcast_to(mean, x.shape).astype(np.uint8)


def jpeg(images, quality: int = 75) -> np.ndarray:
    """Re-encode every image as a baseline JPEG at ``quality`` with Pillow (its defaults: 4:2:0
    chroma subsampling, libjpeg's integer DCT, which gives the same bytes on every CPU) and decode
    it again: lossy training data for the data-quality question. uint8 [N, H, W, 3] -> same."""
    from PIL import Image

    x = _images(images)
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 95:
        raise ValueError(f"quality must be an int in 1..95 (Pillow's useful range), got {quality!r}")
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(x[i], mode="RGB").save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out


def png_bits_per_dim(images) -> np.ndarray:
    """Code length of each image as a PNG (Pillow, zlib level 9, no filter search), in bits per
    dimension (8 * bytes / (H W 3)), float64 [N]: a generic lossless compressor's "input
    complexity" (Serra et al. 2020). Includes the PNG container's fixed overhead (a few dozen
    bytes), which is the same for every image of the same size."""
    from PIL import Image

    x = _images(images)
    D = x.shape[1] * x.shape[2] * x.shape[3]
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        buf = io.BytesIO()
        Image.fromarray(x[i], mode="RGB").save(buf, format="PNG", compress_level=9, optimize=False)
        out[i] = 8.0 * buf.tell() / D
    return out


# ------------------------------------------------------------------------------- remedies
def typicality_score(bpd, reference_bpd) -> np.ndarray:
    """|bpd - mean(reference_bpd)|: large for inputs whose bits/dim are atypical in *either*
    direction (Nalisnick et al. 2019's typicality test, one example at a time). ``reference_bpd``
    are bits/dim of held-out in-distribution data, not the examples being scored."""
    b = _scores("bpd", bpd)
    ref = _scores("reference_bpd", reference_bpd)
    return np.abs(b - ref.mean())


def typicality_score_loo(bpd) -> np.ndarray:
    """:func:`typicality_score` of held-out in-distribution examples scored against each other:
    |bpd_i - mean_{j != i} bpd_j| (leave one out), so that no example is compared with a mean it
    contributed to. Needs at least two values."""
    b = _scores("bpd", bpd)
    if b.size < 2:
        raise ValueError(f"leave-one-out needs >= 2 values, got {b.size}")
    others = (b.sum() - b) / (b.size - 1)
    return np.abs(b - others)


def complexity_ratio_score(bpd, complexity_bpd) -> np.ndarray:
    """bpd - complexity_bpd: the model's code length minus a generic compressor's (Serra et al.
    2020's S(x)), i.e. minus the log of the likelihood ratio p_theta(x) / p_compressor(x) in bits
    per dimension. Large when the model explains x no better than a compressor does."""
    b = _scores("bpd", bpd)
    c = _scores("complexity_bpd", complexity_bpd)
    if b.shape != c.shape:
        raise ValueError(f"bpd and complexity_bpd must have the same shape, got {b.shape} and {c.shape}")
    return b - c
