"""Regenerate ddpm_ref/assets/cifar10_sample_inception.npz: Inception pool3 features of the shipped sample.

The book's CIFAR-10 chapter shows FID's small-sample bias and the JPEG-reference pitfall with real
numbers; computing Inception features of ~2,300 images takes minutes on a CPU, so they are computed
once by this script and shipped. Everything here is reproducible from the repository alone:

    python tools/make_sample_features.py            # writes the file (several minutes on CPU)
    python tools/make_sample_features.py --check 8  # recomputes 8 images per array and compares

Arrays (float16 to keep the file small; features are computed in float32 -- float16 keeps
~3 significant digits, far below FID's sampling noise at these sizes):
  train        [1024, 2048]  features of load_sample("train") images
  test         [256, 2048]   features of load_sample("test") images
  train_jpeg75 [1024, 2048]  features of the same training images after a Pillow JPEG round
                             trip at quality 75 (default 4:2:0 subsampling): the lossy-reference pitfall
  extractor, inception_sha1, source  strings recording what produced them
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpm_ref import fid
from ddpm_ref.data import load_sample

OUT = Path(__file__).resolve().parents[1] / "ddpm_ref" / "assets" / "cifar10_sample_inception.npz"


def jpeg_round_trip(images: np.ndarray, quality: int = 75) -> np.ndarray:
    out = np.empty_like(images)
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def arrays(n: int | None = None) -> dict[str, np.ndarray]:
    train = load_sample("train")[0][:n]
    test = load_sample("test")[0][:n]
    return {"train": train, "test": test, "train_jpeg75": jpeg_round_trip(train)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", type=int, metavar="N", help="recompute N images per array and compare")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        stored = np.load(OUT)
        for name, imgs in arrays(args.check).items():
            feats = fid.inception_features(imgs, batch_size=args.check, progress=False)
            err = np.abs(feats - stored[name][: args.check].astype(np.float64)).max()
            print(f"{name}: max |recomputed - stored| = {err:.2e}")
            assert err < 5e-3 * max(1.0, np.abs(feats).max()), name
        return
    feats = {name: fid.inception_features(imgs, batch_size=32).astype(np.float16) for name, imgs in arrays().items()}
    np.savez_compressed(
        OUT,
        **feats,
        extractor=np.array(fid.DEFAULT_EXTRACTOR),
        inception_sha1=np.array(fid.INCEPTION_SHA1),
        source=np.array("ddpm_ref/assets/cifar10_sample.npz via tools/make_sample_features.py"),
    )
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
