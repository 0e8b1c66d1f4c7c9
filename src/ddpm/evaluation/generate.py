"""Generation at scale for evaluation: many samples, reproducible whatever the batch size or the number of processes.

Image ``i`` of a run seeded with ``seed`` is drawn with its own CPU generator seeded from ``(seed, i)``
(:func:`ddpm.pipeline.image_seed`), which draws its x_T and then one noise tensor per reverse step with t > 0,
exactly as Diffusers' pipeline draws them. So image ``i`` is the same in a batch of 1 or of 256, and on one process
or sharded over many.

Sharding (``torchrun``): with ``torch.distributed`` initialised, rank ``r`` of ``W`` generates the contiguous index
range ``[r N / W, (r + 1) N / W)`` and writes its shard beside the output; after a barrier rank 0 gathers the shards
into the one ``.npz`` (images in index order) and removes them.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def load_pipeline(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    sampler: str | None = None,
    eta: float | None = None,
):
    """A :class:`~ddpm.DDPMPipeline` from a folder (or Hub id), on ``device``, in eval mode, progress bar off,
    sampling with ``sampler`` (and its ``eta``; :meth:`ddpm.DDPMPipeline.set_sampler`) when one is named."""
    from ddpm.pipeline import DDPMPipeline

    pipeline = DDPMPipeline.from_pretrained(path, dtype=dtype)
    pipeline = pipeline.to(device)
    if sampler is not None or eta is not None:
        pipeline.set_sampler(sampler or pipeline.default_sampler(), eta=eta)
    pipeline.unet.eval()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def default_num_inference_steps(pipeline) -> int:
    """The steps the pipeline's current sampler runs by default (:meth:`ddpm.DDPMPipeline.default_steps`: the
    model's ``ddpm.json``, else the sampler's default), or the full chain for a foreign pipeline object."""
    from ddpm.schedulers.samplers import sampler_name

    if hasattr(pipeline, "default_steps"):
        return pipeline.default_steps(sampler_name(pipeline.scheduler) or "ddpm")
    return int(pipeline.scheduler.config.num_train_timesteps)


def image_generators(seed: int, indices, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One CPU generator per image index, seeded from ``(seed, index)`` (see :func:`ddpm.pipeline.image_seed`)."""
    from ddpm.pipeline import image_generators as _image_generators

    return _image_generators(seed, indices, device=device)


def generate_images(
    pipeline,
    num_samples: int,
    seed: int = 0,
    batch_size: int = 64,
    num_inference_steps: int | None = None,
    start: int = 0,
    progress: bool = False,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Images ``start .. start + num_samples - 1`` of the run seeded with ``seed``, as uint8 NHWC.

    ``batch_size`` only sets how many are generated at once; the images do not depend on it.
    ``on_batch(first_index, images)`` is called after each batch (e.g. to save progress).
    """
    from ddpm.images import to_uint8

    if num_samples < 0 or batch_size < 1 or seed < 0 or start < 0:
        raise ValueError(
            f"need num_samples >= 0, batch_size >= 1, seed >= 0, start >= 0; got {num_samples}, {batch_size}, "
            f"{seed}, {start}"
        )
    steps = num_inference_steps or default_num_inference_steps(pipeline)
    out = []
    t0 = time.perf_counter()
    for first in range(start, start + num_samples, batch_size):
        n = min(batch_size, start + num_samples - first)
        gens = image_generators(seed, range(first, first + n))
        images = pipeline(batch_size=n, generator=gens, num_inference_steps=steps, output_type="pt", progress=False)
        batch = to_uint8(images.images)
        out.append(batch)
        if on_batch is not None:
            on_batch(first, batch)
        if progress:
            done = first + n - start
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"generate: {done}/{num_samples} images ({rate:.2f} img/s)", file=sys.stderr)
    if not out:
        c, h, w = _image_chw(pipeline)
        return np.zeros((0, h, w, c), np.uint8)
    return np.concatenate(out)


def _image_chw(pipeline) -> tuple[int, int, int]:
    cfg = pipeline.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return cfg.in_channels, h, w


def shard_range(num_samples: int, rank: int, world_size: int) -> range:
    """The contiguous indices of ``rank``'s share of ``num_samples`` (sizes differ by at most one)."""
    return range(rank * num_samples // world_size, (rank + 1) * num_samples // world_size)


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{rank:05d}-of-{world_size:05d}.npz")


def generate_to_npz(
    pipeline,
    num_samples: int,
    out: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 64,
    num_inference_steps: int | None = None,
    progress: bool = False,
) -> Path | None:
    """Generate ``num_samples`` images into ``out`` (uint8 NHWC under ``images``, with ``seed`` and ``indices``),
    sharded over the processes of an initialised ``torch.distributed`` group. Returns ``out`` on rank 0 (or without
    distribution), ``None`` on the other ranks."""
    import torch.distributed as dist

    from ddpm.io import atomic_save

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    indices = shard_range(num_samples, rank, world)
    images = generate_images(
        pipeline,
        len(indices),
        seed=seed,
        batch_size=batch_size,
        num_inference_steps=num_inference_steps,
        start=indices.start,
        progress=progress and rank == 0,
    )
    out = Path(out)
    steps = num_inference_steps or default_num_inference_steps(pipeline)
    meta = {"seed": np.int64(seed), "num_inference_steps": np.int64(steps)}
    if world == 1:
        atomic_save(out, lambda f: np.savez(f, images=images, indices=np.arange(num_samples), **meta))
        return out
    shard = shard_path(out, rank, world)
    atomic_save(shard, lambda f: np.savez(f, images=images, indices=np.asarray(indices, np.int64)))
    dist.barrier()
    result = None
    if rank == 0:
        parts, idx = [], []
        for r in range(world):
            with np.load(shard_path(out, r, world)) as data:
                parts.append(data["images"])
                idx.append(data["indices"])
        all_images, all_idx = np.concatenate(parts), np.concatenate(idx)
        if not np.array_equal(all_idx, np.arange(num_samples)):
            raise RuntimeError(f"shards of {out} do not cover 0..{num_samples - 1} exactly")
        atomic_save(out, lambda f: np.savez(f, images=all_images, indices=all_idx, **meta))
        for r in range(world):
            shard_path(out, r, world).unlink()
        result = out
    dist.barrier()
    return result


def reverse_process(
    unet,
    scheduler,
    x_t: torch.Tensor,
    t_start: int,
    generator=None,
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the full-chain reverse process from ``x_t`` at timestep ``t_start`` (ours: :mod:`ddpm.schedulers.common`)
    down to x_0: the pipeline's loop (:func:`ddpm.pipeline.reverse_loop`) on the timesteps ``t_start, ..., 0``.
    Step noise is drawn from ``generator`` (one, or one per image) in Diffusers' order (one draw per step with
    t > 0). ``callback(t, x_{t-1}, predicted x_0)`` after each step. Returns x_0 in model space ([-1, 1])."""
    from ddpm.pipeline import reverse_loop

    T = scheduler.config.num_train_timesteps
    if not 0 <= t_start < T:
        raise ValueError(f"t_start must lie in [0, {T - 1}], got {t_start}")
    scheduler.set_timesteps(timesteps=list(range(t_start, -1, -1)))
    step_callback = None if callback is None else (lambda i, t, sample, x0: callback(t, sample, x0))
    with torch.inference_mode():
        return reverse_loop(unet, scheduler, x_t, generator=generator, callback=step_callback)
