"""ddpm_ref: a reference implementation of Denoising Diffusion Probabilistic Models.

Ho, Jain & Abbeel (2020), arXiv:2006.11239. One module per concern, following the data flow
schedule -> coefficients -> forward/posterior -> reverse model -> losses and bound -> training
-> checkpoints -> sampling and evaluation:

- :mod:`ddpm_ref.schedules`   beta schedules (float64)
- :mod:`ddpm_ref.diffusion`   :class:`GaussianDiffusion`: coefficients, q, posterior, p, losses, bound
- :mod:`ddpm_ref.likelihood`  Gaussian KL, the discretised Gaussian decoder, bits/dim
- :mod:`ddpm_ref.sampling`    ancestral sampling, DDIM and respacing, interpolation
- :mod:`ddpm_ref.unet`        the paper's network and its named configurations
- :mod:`ddpm_ref.convert`     weight import (diffusers / pytorch_diffusion layouts)
- :mod:`ddpm_ref.data`        CIFAR-10 (official tarball), image folders, the shipped sample
- :mod:`ddpm_ref.fid`         FID with TF-Inception pool3 features
- :mod:`ddpm_ref.config`, :mod:`ddpm_ref.train`, :mod:`ddpm_ref.evaluate`: the paper's recipe,
  Algorithm 1 with EMA/checkpoints/DDP, bits/dim and FID evaluation; ``python -m ddpm_ref``.

Timesteps: the code's t is 0-based, the paper's is t + 1 (see :mod:`ddpm_ref.diffusion`).
"""

from ._validate import value_checks
from .diffusion import GaussianDiffusion, code_timestep, make_diffusion, paper_timestep
from .likelihood import discretized_gaussian_log_likelihood, normal_kl
from .sampling import (
    SpacedDiffusion,
    ancestral_sample,
    ddim_sample,
    interpolate,
    respace,
    space_timesteps,
)
from .schedules import get_beta_schedule

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion",
    "SpacedDiffusion",
    "ancestral_sample",
    "code_timestep",
    "ddim_sample",
    "discretized_gaussian_log_likelihood",
    "get_beta_schedule",
    "interpolate",
    "make_diffusion",
    "normal_kl",
    "paper_timestep",
    "respace",
    "space_timesteps",
    "value_checks",
]
