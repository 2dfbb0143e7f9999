"""Training batches: the deterministic, resumable, DDP-aware :class:`BatchStream`, and
:class:`ImageDataset` for evaluation passes."""

from __future__ import annotations

import numpy as np
import torch

from .pixels import _as_uint8_nhwc

__all__ = ["ImageDataset", "BatchStream"]

class ImageDataset(torch.utils.data.Dataset):
    """Map-style dataset over uint8 NHWC images for evaluation passes (no augmentation).

    ``ds[i]`` is ``(x, y)``: x float32 ``[3, H, W]`` in [-1, 1] (:func:`from_uint8`), y the
    int64 label (0 if no labels were given). Use with ``torch.utils.data.DataLoader`` (and a
    ``DistributedSampler`` for multi-GPU evaluation). Training uses :class:`BatchStream`.
    """

    def __init__(self, images, labels=None):
        self.images = torch.from_numpy(np.ascontiguousarray(_as_uint8_nhwc(images)))
        n = self.images.shape[0]
        if labels is None:
            labels = np.zeros(n, dtype=np.int64)
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {n} integers, got {labels.dtype} {labels.shape}")
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        x = self.images[i].permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0
        return x, self.labels[i]


def _derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit generator seed derived from (seed, epoch, stream) with numpy's SeedSequence,
    so that nearby user seeds/epochs give unrelated generator states."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


class BatchStream:
    """Deterministic, resumable, DDP-aware stream of augmented training batches.

    **Order.** The stream is the endless concatenation of per-epoch permutations
    ``pi_0, pi_1, ...`` of the N image indices; ``pi_e = torch.randperm(N)`` drawn from a
    ``torch.Generator`` seeded from ``(seed, e)``. The sample at global stream position
    ``g = 0, 1, 2, ...`` is image ``pi_{g // N}[g % N]``. Batches run across epoch boundaries
    (no sample is dropped, every batch is full), much like the original
    ``repeat().shuffle().batch(drop_remainder=True)`` input pipeline.

    **Flips.** Random left-right flip (the paper's only augmentation) is decided *per stream
    position*: a Bernoulli(1/2) vector ``f_e`` of length N from a second generator seeded from
    ``(seed, e)``; the sample at position g is flipped iff ``f_{g // N}[g % N]``. So the flip of
    a sample does not depend on which rank draws it.

    **Global batch and ranks.** Global batch k is positions ``[k B, (k + 1) B)`` with
    ``B = batch_size`` (the global batch, 128 in the paper). With ``world_size`` W (B % W == 0)
    rank r receives the contiguous slice ``[k B + r B/W, k B + (r + 1) B/W)``; concatenating the
    ranks' micro-batches in rank order gives exactly the single-process batch k, bit for bit,
    for any W. Every rank computes the same permutation locally: no communication is needed.

    **Resume.** :meth:`state_dict` holds ``epoch`` and ``position`` (index within the epoch
    of the next global batch), plus the seed, N and B for checking. It is identical on every
    rank and independent of ``world_size``, so a run can resume on a different number of
    GPUs. :meth:`load_state_dict` into a fresh stream continues with the same batches.

    Usage in a training loop::

        stream = BatchStream(images_uint8, batch_size=128, seed=0, rank=rank, world_size=ws)
        x0 = stream.next()                  # float32 [128 // ws, 3, 32, 32] in [-1, 1]
        ckpt["data"] = stream.state_dict()  # ... later: stream.load_state_dict(ckpt["data"])

    Args:
        images: uint8 ``[N, H, W, 3]`` (numpy or CPU tensor), e.g. from :func:`load_cifar10`.
        batch_size: the *global* batch size B.
        seed: non-negative int; fixes the whole stream.
        rank, world_size: this process's place in DDP (``torch.distributed`` rank/world size).
        flip: apply random left-right flips.
        device: where :meth:`next` puts the batch (``None``: CPU). Pinned memory and a
            non-blocking copy are used for CUDA.
    """

    _STATE_VERSION = 1

    def __init__(
        self,
        images,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
        device: str | torch.device | None = None,
    ):
        images = _as_uint8_nhwc(images)
        if images.shape[0] < 1:
            raise ValueError("images must hold at least one image")
        for name, v in (("batch_size", batch_size), ("seed", seed), ("world_size", world_size)):
            if not isinstance(v, int | np.integer) or isinstance(v, bool):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if batch_size < 1 or world_size < 1 or seed < 0:
            raise ValueError(
                f"need batch_size >= 1, world_size >= 1, seed >= 0; got {batch_size}, "
                f"{world_size}, {seed}"
            )
        if batch_size % world_size:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by world_size {world_size}"
            )
        if not isinstance(rank, int | np.integer) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
        self.images = np.ascontiguousarray(images)  # uint8 NHWC, kept in numpy
        self.num_images = int(images.shape[0])
        self.batch_size = int(batch_size)
        self.local_batch_size = int(batch_size) // int(world_size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.flip = bool(flip)
        self.device = torch.device(device) if device is not None else None
        self.epoch = 0
        self.position = 0
        self._cache_epoch = -1
        self._perm = self._flips = None

    # -- the deterministic order -------------------------------------------------------------

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pi_e, f_e)``: the permutation (int64 [N]) and flip flags (bool [N]) of an epoch."""
        if epoch == self._cache_epoch:
            return self._perm, self._flips
        g = torch.Generator(device="cpu")
        g.manual_seed(_derived_seed(self.seed, epoch, 0))
        perm = torch.randperm(self.num_images, generator=g)
        g.manual_seed(_derived_seed(self.seed, epoch, 1))
        flips = torch.rand(self.num_images, generator=g) < 0.5
        if not self.flip:
            flips = torch.zeros_like(flips)
        self._cache_epoch, self._perm, self._flips = epoch, perm, flips
        return perm, flips

    def _positions(self, start_epoch: int, start_pos: int, count: int):
        """Image indices and flip flags of ``count`` consecutive stream positions."""
        idx, flp = [], []
        epoch, pos = start_epoch, start_pos
        while count > 0:
            perm, flips = self.epoch_order(epoch)
            take = min(count, self.num_images - pos)
            idx.append(perm[pos : pos + take])
            flp.append(flips[pos : pos + take])
            count -= take
            pos += take
            if pos == self.num_images:
                epoch, pos = epoch + 1, 0
        return torch.cat(idx), torch.cat(flp)

    def _advance(self, epoch: int, pos: int, count: int) -> tuple[int, int]:
        g = epoch * self.num_images + pos + count
        return g // self.num_images, g % self.num_images

    # -- the public interface ----------------------------------------------------------------

    @property
    def step(self) -> int:
        """Number of global batches served so far (``(epoch N + position) / B``)."""
        return (self.epoch * self.num_images + self.position) // self.batch_size

    def next_with_indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`next`, also returning this rank's image indices (int64 [B_local]) and
        flip flags (bool [B_local])."""
        start_epoch, start_pos = self._advance(
            self.epoch, self.position, self.rank * self.local_batch_size
        )
        idx, flp = self._positions(start_epoch, start_pos, self.local_batch_size)
        # Gather, flip and transpose the uint8 pixels in numpy (single-threaded and cheap);
        # the float conversion happens on the target device, so a GPU receives 1 byte/pixel.
        idx_np, flp_np = idx.numpy(), flp.numpy()
        x = self.images[idx_np]  # uint8 [b, H, W, 3], a copy
        if flp_np.any():
            x[flp_np] = x[flp_np, :, ::-1]  # reverse the W axis of NHWC
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        if self.device is not None and self.device.type != "cpu":
            if self.device.type == "cuda":
                x = x.pin_memory()
            x = x.to(self.device, non_blocking=True)
            x = x.to(torch.float32) / 127.5 - 1.0
        else:  # numpy float math: same IEEE float32 results as torch, no thread start-up cost
            x = torch.from_numpy(x.numpy().astype(np.float32) / np.float32(127.5) - np.float32(1.0))
        self.epoch, self.position = self._advance(self.epoch, self.position, self.batch_size)
        return x, idx, flp

    def next(self) -> torch.Tensor:
        """This rank's part of the next global batch: float32 ``[B / world_size, 3, H, W]`` in
        [-1, 1] (``v / 127.5 - 1``), on ``device``. Advances the stream by one global batch."""
        return self.next_with_indices()[0]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        return self.next()

    def state_dict(self) -> dict:
        """Plain-python state: ``{"version", "seed", "num_images", "batch_size", "flip",
        "epoch", "position", "step"}``; the same on every rank, independent of world size."""
        return {
            "version": self._STATE_VERSION,
            "seed": self.seed,
            "num_images": self.num_images,
            "batch_size": self.batch_size,
            "flip": self.flip,
            "epoch": self.epoch,
            "position": self.position,
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output. The seed, N, batch size and flip setting must
        match this stream (else ``ValueError``); rank and world size may differ."""
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        need = ("version", "seed", "num_images", "batch_size", "flip", "epoch", "position")
        missing = [k for k in need if k not in state]
        if missing:
            raise ValueError(f"BatchStream state lacks keys {missing}")
        if state["version"] != self._STATE_VERSION:
            raise ValueError(f"unsupported BatchStream state version {state['version']}")
        for key in ("seed", "num_images", "batch_size", "flip"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"BatchStream state has {key}={state[key]!r} but this stream has "
                    f"{key}={getattr(self, key)!r}; the data order would not continue"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.num_images:
            raise ValueError(f"invalid epoch/position {epoch}/{position} for N={self.num_images}")
        if (epoch * self.num_images + position) % self.batch_size:
            raise ValueError("epoch/position is not at a global batch boundary")
        self.epoch, self.position = epoch, position
