"""The order in which training images are seen: seeded per-epoch permutations, addressed by position.

Step ``s`` with global batch ``B`` uses the images at stream positions ``s*B .. s*B + B - 1`` of an endless stream
formed by concatenating one permutation per epoch (epoch ``e``'s permutation comes from ``seed`` and ``e`` alone).
The position (``epoch`` and ``index`` into that epoch's permutation) is therefore a function of the step, which is
all a checkpoint needs to resume the order exactly, with any number of data-loading workers. With ``world_size``
processes, rank ``r`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of every global batch, so that the processes
together see exactly the batch a single process would.

An image file that fails to decode does not change the order: the data set itself returns a fixed substitute for it
(:class:`ddpm.data.ImageFolderDataset`), so the batch of a step stays a function of the step and the files.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

_EPOCH_SEED_STRIDE = 1_000_003


class DataOrder:
    """Positions of the global batches of a run over a data set of ``size`` images."""

    def __init__(self, size: int, batch_size: int, seed: int = 0):
        if size < 1:
            raise ValueError("the data set is empty")
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._cache: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        perm = self._cache.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + epoch + 1)
            perm = torch.randperm(self.size, generator=g)
            self._cache = {epoch: perm}  # keep only the current epoch
        return perm

    def position(self, step: int) -> dict[str, int]:
        """Where step ``step`` starts: ``epoch`` and ``index`` into that epoch's permutation."""
        pos = step * self.batch_size
        return {"epoch": pos // self.size, "index": pos % self.size}

    def global_batch(self, step: int) -> torch.Tensor:
        """Data-set indices of the global batch of step ``step`` (int64, length ``batch_size``)."""
        start = step * self.batch_size
        out = []
        while len(out) < self.batch_size:
            epoch, index = divmod(start, self.size)
            take = min(self.batch_size - len(out), self.size - index)
            out.extend(self.permutation(epoch)[index : index + take].tolist())
            start += take
        return torch.tensor(out, dtype=torch.int64)

    def local_batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        per_rank = self.batch_size // world_size
        return self.global_batch(step)[rank * per_rank : (rank + 1) * per_rank]

    def state_dict(self, step: int) -> dict[str, int]:
        return {
            "seed": self.seed,
            "size": self.size,
            "batch_size": self.batch_size,
            "step": step,
            **self.position(step),
        }


class StepBatchSampler(Sampler[list[int]]):
    """A batch sampler for ``DataLoader``: this rank's indices for steps ``start_step .. end_step - 1``."""

    def __init__(self, order: DataOrder, start_step: int, end_step: int, rank: int = 0, world_size: int = 1):
        self.order = order
        self.start_step = start_step
        self.end_step = end_step
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.end_step):
            yield self.order.local_batch(step, self.rank, self.world_size).tolist()

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)
