"""Set-up shared by the book's notebooks: determinism and a consistent figure style.

Every chapter starts with ``from ddpm_ref.notebook import setup; setup()`` so that its outputs are
identical on every run (strict ``pytest --nbval`` compares them): fixed seeds for ``random``,
NumPy and torch, a fixed torch thread count, deterministic torch algorithms, and matplotlib's
non-interactive inline defaults.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def setup(seed: int = 0, threads: int = 1, *, dpi: int = 100) -> torch.Generator:
    """Seed everything, fix the torch thread count and set figure defaults.

    Returns a ``torch.Generator`` seeded with ``seed`` for the notebook's own draws.
    One thread by default: results of float reductions then do not depend on the machine's
    core count, and two notebooks can run side by side.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        import matplotlib as mpl

        mpl.rcParams.update(
            {
                "figure.dpi": dpi,
                "savefig.dpi": dpi,
                "figure.figsize": (7.0, 3.5),
                "axes.grid": True,
                "grid.alpha": 0.3,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "font.size": 10,
            }
        )
    except ImportError:  # matplotlib is optional for the package itself
        pass
    return torch.Generator().manual_seed(seed)
