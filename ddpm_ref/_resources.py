"""Size checks before a long job starts: memory of a training batch against what is available.

A batch too large for memory otherwise ends in the kernel's OOM killer (no message at all) or a
CUDA out-of-memory error minutes into a run. :func:`training_memory_estimate` runs the network
once on the ``meta`` device (shapes only, no memory, no arithmetic) and adds up the bytes of
every tensor autograd saves for the backward pass -- the activations that dominate a training
step's memory -- plus parameters, gradients, Adam's two moments and the EMA. Measured on this
package's CPU training step, the activation part is within 15% of the real peak (tiny U-Net,
batch 64 and 256). :func:`available_memory` is free GPU memory on CUDA, and on a CPU the smaller
of ``MemAvailable`` and the room left under the cgroup limit (containers, SLURM jobs).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

__all__ = ["training_memory_estimate", "available_memory", "format_bytes"]


def format_bytes(n: float) -> str:
    """``"23.4 GB"`` (powers of 1024, one decimal)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _activation_bytes(unet_kwargs: dict, batch: int, bf16: bool) -> int:
    from .unet import UNet

    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    res = int(unet_kwargs["resolution"])
    with torch.device("meta"):
        model = UNet(**unet_kwargs).train()
        x = torch.zeros(batch, int(unet_kwargs.get("in_channels", 3)), res, res)
        t = torch.zeros(batch, dtype=torch.long)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s), cast:
            model(x, t)
    except RuntimeError:  # an op without a meta kernel under autocast: estimate in float32
        total = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s):
            model(x, t)
    return total


def training_memory_estimate(unet_kwargs: dict, batch: int, *, bf16: bool = False) -> int:
    """Bytes one process needs for a training step on ``batch`` images: saved activations
    (measured on the meta device at batch 1 and scaled) + 5 float32 copies of the parameters
    (weights, gradients, Adam's m and v, EMA)."""
    per_image = _activation_bytes(unet_kwargs, 1, bf16)
    from .unet import UNet

    with torch.device("meta"):
        n_params = sum(p.numel() for p in UNet(**unet_kwargs).parameters())
    return int(per_image * batch + 5 * 4 * n_params)


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup (v2 or v1) memory limit, or None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(int(limit) - usage, 0)
    return None


def available_memory(device: torch.device) -> int | None:
    """Free memory for ``device`` in bytes, or None if unknown (MPS, non-Linux CPUs)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):  # pragma: no cover
            return None
    if device.type != "cpu":
        return None
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        return None
    room = _cgroup_room()
    if avail is None:
        return room
    return avail if room is None else min(avail, room)
