"""Input checks shared by the package. Each raises ``ValueError`` saying what was expected."""

from __future__ import annotations

import contextlib

import torch

_VALUE_CHECKS = True


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Turn the checks that read tensor *values* (finiteness, timestep range) on or off.

    Shape, dtype and device checks always run. Value checks force a host-device sync on a GPU,
    so a training loop may disable them on its hot path (it guards the loss itself instead).
    """
    global _VALUE_CHECKS
    old, _VALUE_CHECKS = _VALUE_CHECKS, bool(enabled)
    try:
        yield
    finally:
        _VALUE_CHECKS = old


def check_tensor(
    name: str,
    x,
    *,
    ndim_min: int = 1,
    ndim: int | None = None,
    floating: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a torch tensor with the expected rank, floating dtype and finite values."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.ndim < ndim_min:
        raise ValueError(
            f"{name} must have at least {ndim_min} dimension(s) [N, ...], got shape {tuple(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and floating and _VALUE_CHECKS and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf)")
    return x


def check_like(name: str, y: torch.Tensor, ref_name: str, ref: torch.Tensor) -> torch.Tensor:
    """Check that ``y`` has exactly the shape, dtype and device of ``ref`` (no broadcasting)."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name} {tuple(ref.shape)}, "
            f"got {tuple(y.shape)}"
        )
    if y.device != ref.device:
        raise ValueError(f"{name} is on {y.device} but {ref_name} is on {ref.device}")
    if y.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {y.dtype} but {ref_name} has dtype {ref.dtype}")
    return y


def check_timesteps(t, x: torch.Tensor, num_timesteps: int, name: str = "t") -> torch.Tensor:
    """Check a batch of 0-based timesteps: integer tensor of shape [N] on x's device, values in [0, T)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(
            f"{name} must be an integer torch.Tensor of shape [N], got {type(t).__name__}"
        )
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must have an integer dtype (e.g. torch.long), got {t.dtype}")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must have shape [N] = [{x.shape[0]}] (one timestep per example), "
            f"got {tuple(t.shape)}"
        )
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if _VALUE_CHECKS and t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(
            f"{name} must lie in [0, {num_timesteps}) (0-based code timesteps; the paper's "
            f"t = code t + 1), got values in [{int(t.min())}, {int(t.max())}]"
        )
    return t
