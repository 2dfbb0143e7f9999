"""Draw the landing page's figure: the forward chain on a CIFAR-10 image above the small model's
reverse chain. Generated at build time (nothing binary is committed).

Top row: one image of the CIFAR-10 test sample shipped in ``ddpm_ref/assets`` noised by the
forward process, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (eq. 4), one fixed ``eps``,
at paper timesteps t = 0, 100, 250, 500, 750, 1000. Bottom row: the reverse chain (Algorithm 2)
of the book's small CPU-trained model ``checkpoints/tiny_cifar10`` (EMA weights), from pure
noise ``x_T`` to ``x_0``, over 100 evenly respaced ancestral steps, shown at the kept steps
nearest to the same timesteps. Seeds are fixed, so the picture is the same on every build.

The book's extension ``book/_ext/book_reader.py`` calls :func:`ensure` at the start of every
build: the PNG is redrawn only when this script, the checkpoint or the sample changed (a hash
is kept beside the PNG). By hand::

    python tools/landing_figure.py _build/generated/landing_chains.png
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "tiny_cifar10"
SHOW_T = (0, 100, 250, 500, 750, 1000)  # paper timesteps (t = 0 is the data itself)
STEPS = 100  # respaced ancestral steps of the reverse chain
IMAGE_INDEX = 7  # test-sample image shown in the forward chain
SEED = 0

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def alt_text() -> str:
    """The figure's alt text: what it shows (the caption is in book/intro.md)."""
    from ddpm_ref.data import load_sample

    _, labels = load_sample("test")
    name = CLASSES[int(labels[IMAGE_INDEX])]
    return (
        f"Two rows of six small images. Top row: a CIFAR-10 photograph of a {name} at t = 0, then "
        "the same image with more and more Gaussian noise at t = 100, 250, 500 and 750, until at "
        "t = 1000 it is pure noise. Bottom row, read from right to left: the small model starts "
        "from pure noise at t = 1000 and removes noise step by step until a new, blurry "
        "32 by 32 pixel image appears at t = 0."
    )


def _inputs_hash() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    for path in sorted(CHECKPOINT.glob("*")):
        if path.suffix in (".json", ".safetensors"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    from ddpm_ref import data

    assets = Path(data.__file__).parent / "assets"
    for path in sorted(assets.glob("*test*")):
        h.update(path.name.encode())
        h.update(str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


def draw(out: Path) -> Path:
    """Compute both chains and write the figure to ``out`` (PNG, opaque white background)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from ddpm_ref.data import from_uint8, load_sample, to_uint8
    from ddpm_ref.diffusion import code_timestep
    from ddpm_ref.evaluate import load_model
    from ddpm_ref.sampling import ancestral_sample, respace

    torch.manual_seed(SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images, _ = load_sample("test")
        x0 = from_uint8(images[IMAGE_INDEX : IMAGE_INDEX + 1]).double()  # [1, 3, 32, 32]
        model, diffusion, _, _ = load_model(CHECKPOINT)
        model.eval()
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(SEED), dtype=torch.float64)
        forward = []
        for t in SHOW_T:
            if t == 0:
                forward.append(x0)
            else:
                tt = torch.full((1,), code_timestep(t), dtype=torch.long)
                forward.append(diffusion.q_sample(x0, tt, eps))
        spaced = respace(diffusion, STEPS)
        with torch.no_grad():
            run = ancestral_sample(spaced, model, (1, 3, 32, 32), record_every=1,
                                   generator=torch.Generator().manual_seed(SEED + 1))
        base_t = spaced.timestep_map[run["steps"].numpy()] + 1  # paper timestep of each recorded x_t
        reverse = []
        for t in SHOW_T:
            if t == 0:
                reverse.append(run["sample"])
            else:
                k = int(np.argmin(np.abs(base_t - t)))
                reverse.append(run["x_t"][k])
    finally:
        torch.set_num_threads(threads)

    fig, axes = plt.subplots(2, len(SHOW_T), figsize=(7.2, 3.0), facecolor="white")
    rows = (("forward\n(noise added)", forward), ("reverse\n(small model)", reverse))
    for r, (label, chain) in enumerate(rows):
        for c, (t, x) in enumerate(zip(SHOW_T, chain, strict=True)):
            ax = axes[r, c]
            ax.imshow(to_uint8(x.float())[0], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t = {t}", fontsize=10, color="black")
            if c == 0:
                ax.set_ylabel(label, fontsize=9, color="black")
    fig.text(0.5, 0.5, "→ forward chain q(x_t | x_{t-1}) →     ← reverse chain p_θ(x_{t-1} | x_t) ←",
             ha="center", va="center", fontsize=8.5, color="#333333")
    fig.subplots_adjust(left=0.075, right=0.995, top=0.90, bottom=0.02, wspace=0.06, hspace=0.28)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, facecolor="white", transparent=False)
    plt.close(fig)
    tmp.replace(out)
    return out


def ensure(out: Path) -> bool:
    """Draw ``out`` unless it exists and was drawn from the same inputs; True if drawn."""
    out = Path(out)
    stamp = out.with_suffix(".inputs")
    key = _inputs_hash()
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return False
    draw(out)
    stamp.write_text(key + "\n")
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python tools/landing_figure.py OUT.png", file=sys.stderr)
        return 2
    print(draw(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
