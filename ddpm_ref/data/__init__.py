"""Data for DDPM: CIFAR-10 (official archive, shipped sample), image folders, training batches.

Pixel convention (paper Section 4, original ``normalize_data``): a uint8 pixel ``v`` in
{0..255} becomes ``x = v / 127.5 - 1`` in [-1, 1] (:func:`from_uint8`); a model output
``x`` goes back with ``round((x + 1) * 127.5)`` clipped to [0, 255] (:func:`to_uint8`). The
paper's decoder (Eq. 13) treats exactly these 256 values ``v / 127.5 - 1`` as the data grid.

Layouts: arrays of *stored* images are uint8 NHWC ``[N, H, W, 3]`` (numpy), as in the CIFAR-10
files and in PNGs; tensors fed to the network are float32 NCHW ``[N, 3, H, W]`` in [-1, 1].

One module per concern (every public name is importable from ``ddpm_ref.data``):

* :mod:`~ddpm_ref.data.sample`: :func:`load_sample`, the small pixel-exact CIFAR-10 sample
  shipped in ``ddpm_ref/assets`` (training images 0..1023 and test images 0..255; provenance in
  ``assets/README.md``).
* :mod:`~ddpm_ref.data.cifar10`: :func:`download_cifar10`, :func:`load_cifar10`, the official
  CIFAR-10 python archive (URL, size and MD5), checked before use; a missing, truncated or
  corrupted archive or batch file raises :class:`DataFileError` naming the file and what was
  expected.
* :mod:`~ddpm_ref.data.folder`: :func:`load_image_folder`, ``root/<class>/<image>.png|jpg`` ->
  uint8 NHWC + labels.
* :mod:`~ddpm_ref.data.specs`: :func:`load_images`, the ``--data`` specs of the command line
  (``sample``, ``cifar10:<root>``, ``folder:<dir>``, ``npz:<file>[:key]``).
* :mod:`~ddpm_ref.data.stream`: :class:`BatchStream`, the deterministic, resumable, DDP-aware
  stream of augmented training batches (random left-right flip as in the original recipe), and
  :class:`ImageDataset`, a plain ``torch.utils.data.Dataset`` for evaluation passes.
* :mod:`~ddpm_ref.data.pixels`: :func:`from_uint8`, :func:`to_uint8`, :func:`make_grid`,
  :func:`save_image_grid` (PNG grids with Pillow, no torchvision).
"""

from __future__ import annotations

from ..errors import DataFileError
from . import cifar10, folder, pixels, sample, specs, stream
from .cifar10 import (
    CIFAR10_ARCHIVE_NAME,
    CIFAR10_ARCHIVE_SIZE,
    CIFAR10_BATCH_MD5,
    CIFAR10_CLASSES,
    CIFAR10_DIRNAME,
    CIFAR10_IMAGES_PER_BATCH,
    CIFAR10_MD5,
    CIFAR10_URL,
    download_cifar10,
    extract_cifar10,
    load_cifar10,
    md5_file,
    read_cifar10_batch,
    verify_archive,
)
from .folder import load_image_folder
from .pixels import from_uint8, make_grid, save_image_grid, to_uint8
from .sample import SAMPLE_PATH, SAMPLE_SOURCE, load_sample
from .specs import DATA_SPECS, load_images, load_npz_images
from .stream import BatchStream, ImageDataset

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "CIFAR10_ARCHIVE_SIZE",
    "CIFAR10_ARCHIVE_NAME",
    "CIFAR10_DIRNAME",
    "CIFAR10_BATCH_MD5",
    "CIFAR10_IMAGES_PER_BATCH",
    "SAMPLE_PATH",
    "SAMPLE_SOURCE",
    "DATA_SPECS",
    "DataFileError",
    "load_sample",
    "md5_file",
    "verify_archive",
    "download_cifar10",
    "extract_cifar10",
    "read_cifar10_batch",
    "load_cifar10",
    "load_image_folder",
    "load_images",
    "load_npz_images",
    "from_uint8",
    "to_uint8",
    "make_grid",
    "save_image_grid",
    "ImageDataset",
    "BatchStream",
    "cifar10",
    "folder",
    "pixels",
    "sample",
    "specs",
    "stream",
]
