"""Generation at scale for evaluation: many samples, reproducible whatever the batch size or the number of processes.

Image ``i`` of a run seeded with ``seed`` is drawn with its own CPU generator seeded from ``(seed, i)``
(:func:`ddpm.pipeline.image_seed`), which draws its x_T and then one noise tensor per reverse step with t > 0,
exactly as Diffusers' pipeline draws them. So image ``i`` is the same in a batch of 1 or of 256, and on one process
or sharded over many.

Sharding (``torchrun``): with ``torch.distributed`` initialised, rank ``r`` of ``W`` generates the contiguous index
range ``[r N / W, (r + 1) N / W)``, batch by batch into the run's work folder (``OUT.partial``); after a barrier
rank 0 gathers the shards into the one ``.npz`` (images in index order), checks it and removes the folder.

Crash safety: the work folder (:mod:`ddpm.evaluation.partial`) keeps every finished batch, so a run killed midway
and started again with the same settings (any batch size or number of processes) generates only what is missing.
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


def _check_steps(pipeline, num_inference_steps: int | None) -> int:
    """``num_inference_steps``, or the pipeline's default when None; ``ValueError`` for a value out of range (0 is
    an error, never "the default")."""
    num_train = int(pipeline.scheduler.config.num_train_timesteps)
    if num_inference_steps is None:
        return default_num_inference_steps(pipeline)
    if isinstance(num_inference_steps, bool) or not 1 <= int(num_inference_steps) <= num_train:
        raise ValueError(f"num_inference_steps must be in [1, {num_train}] for this model, got {num_inference_steps}")
    return int(num_inference_steps)


def sampler_eta(pipeline) -> float | None:
    """The ``eta`` the pipeline's current sampler runs with (None: the sampler has none or uses its default)."""
    chosen = getattr(pipeline, "_sampler_eta", None)
    if chosen is not None and chosen[0] is pipeline.scheduler:
        return float(chosen[1])
    eta = dict(pipeline.scheduler.config).get("eta")
    return None if eta is None else float(eta)


def generation_settings(pipeline, num_samples: int, seed: int, num_inference_steps: int | None = None) -> dict:
    """What a generation run's images depend on (the manifest of its work folder, :mod:`ddpm.evaluation.partial`):
    the model's weights and scheduler config (hashes), the sampler, steps, eta, seed, image count, UNet dtype,
    resolution and the device type (CPU and CUDA images differ in the last bits)."""
    from ddpm.evaluation.partial import model_fingerprint
    from ddpm.schedulers.samplers import sampler_name

    c, h, w = _image_chw(pipeline)
    return {
        **model_fingerprint(pipeline.unet, pipeline.scheduler),
        "sampler": sampler_name(pipeline.scheduler) or type(pipeline.scheduler).__name__,
        "num_inference_steps": _check_steps(pipeline, num_inference_steps),
        "eta": sampler_eta(pipeline),
        "seed": int(seed),
        "num_samples": int(num_samples),
        "dtype": str(next(pipeline.unet.parameters()).dtype).removeprefix("torch."),
        "resolution": [c, h, w],
        "device": _device_type(pipeline),
    }


def _device_type(pipeline) -> str:
    try:
        return next(pipeline.unet.parameters()).device.type
    except StopIteration:  # pragma: no cover - a UNet without parameters
        return "cpu"


def work_folder_for(out: str | os.PathLike) -> Path:
    """The default work folder of a run writing ``out``: ``OUT.partial`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _generate_batches(
    pipeline,
    indices: range,
    seed: int,
    batch_size: int,
    steps: int,
    on_batch: Callable[[int, np.ndarray], None],
    progress: bool,
    total: int,
    done_before: int = 0,
) -> None:
    """Generate images ``indices`` batch by batch; ``on_batch(first_index, uint8 NHWC)`` after each."""
    from ddpm.images import to_uint8

    t0 = time.perf_counter()
    done = 0
    for first in range(indices.start, indices.stop, batch_size):
        n = min(batch_size, indices.stop - first)
        gens = image_generators(seed, range(first, first + n))
        images = pipeline(batch_size=n, generator=gens, num_inference_steps=steps, output_type="pt", progress=False)
        on_batch(first, to_uint8(images.images))
        done += n
        if progress:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"generate: {done_before + done}/{total} images ({rate:.2f} img/s)", file=sys.stderr)


def generate_images(
    pipeline,
    num_samples: int,
    seed: int = 0,
    batch_size: int = 64,
    num_inference_steps: int | None = None,
    start: int = 0,
    progress: bool = False,
    on_batch: Callable[[int, np.ndarray], None] | None = None,
    sampler: str | None = None,
    eta: float | None = None,
    work_dir: str | os.PathLike | None = None,
    keep_work_dir: bool = False,
) -> np.ndarray:
    """Images ``start .. start + num_samples - 1`` of the run seeded with ``seed``, as uint8 NHWC.

    ``batch_size`` only sets how many are generated at once; the images do not depend on it.
    ``on_batch(first_index, images)`` is called after each batch generated here (e.g. to save progress).
    ``sampler`` (and its ``eta``): swap that sampler into the pipeline first (:meth:`ddpm.DDPMPipeline.set_sampler`).
    ``work_dir``: keep each finished batch in that folder (:class:`ddpm.evaluation.partial.WorkFolder`) so that a
    killed run, called again the same way, continues where it stopped; a folder holding a run with other settings is
    refused (:class:`~ddpm.evaluation.partial.SettingsMismatchError`). It is removed at the end unless
    ``keep_work_dir``.
    """
    if num_samples < 0 or batch_size < 1 or seed < 0 or start < 0:
        raise ValueError(
            f"need num_samples >= 0, batch_size >= 1, seed >= 0, start >= 0; got {num_samples}, {batch_size}, "
            f"{seed}, {start}"
        )
    if sampler is not None or eta is not None:
        pipeline.set_sampler(sampler or pipeline.default_sampler(), eta=eta)
    steps = _check_steps(pipeline, num_inference_steps)
    indices = range(start, start + num_samples)
    if work_dir is not None:
        from ddpm.evaluation.partial import WorkFolder

        settings = generation_settings(pipeline, start + num_samples, seed, steps)
        work = WorkFolder(work_dir, settings).open()
        _fill(work, pipeline, indices, seed, batch_size, steps, progress, on_batch)
        images = work.read(indices.start, indices.stop, ["images"])["images"] if num_samples else None
        if not keep_work_dir:
            work.remove()
        if images is not None:
            return images
    else:
        out = []

        def keep(first, batch):
            out.append(batch)
            if on_batch is not None:
                on_batch(first, batch)

        _generate_batches(pipeline, indices, seed, batch_size, steps, keep, progress, num_samples)
        if out:
            return np.concatenate(out)
    c, h, w = _image_chw(pipeline)
    return np.zeros((0, h, w, c), np.uint8)


def _fill(work, pipeline, indices: range, seed, batch_size, steps, progress, on_batch=None) -> None:
    """Generate the images of ``indices`` that ``work`` does not hold yet, one shard per batch."""
    missing = work.missing(indices.start, indices.stop)
    done = len(indices) - sum(len(r) for r in missing)
    if progress and done:
        print(f"generate: continuing the run in {work.path}: {done}/{len(indices)} images done", file=sys.stderr)

    def save(first, batch):
        work.save(first, {"images": batch})
        if on_batch is not None:
            on_batch(first, batch)

    for gap in missing:
        _generate_batches(pipeline, gap, seed, batch_size, steps, save, progress, len(indices), done)
        done += len(gap)


def _image_chw(pipeline) -> tuple[int, int, int]:
    cfg = pipeline.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return cfg.in_channels, h, w


def shard_range(num_samples: int, rank: int, world_size: int) -> range:
    """The contiguous indices of ``rank``'s share of ``num_samples`` (sizes differ by at most one)."""
    return range(rank * num_samples // world_size, (rank + 1) * num_samples // world_size)


def _agree(message: str | None, distributed: bool, src: int = 0) -> None:
    """Raise ``message`` (from rank ``src``) on every rank, so that no rank waits at a barrier for one that failed."""
    if distributed:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=src)
        message = box[0]
    if message is not None:
        raise RuntimeError(message)


def generate_to_npz(
    pipeline,
    num_samples: int,
    out: str | os.PathLike,
    seed: int = 0,
    batch_size: int = 64,
    num_inference_steps: int | None = None,
    progress: bool = False,
    work_dir: str | os.PathLike | None = None,
) -> Path | None:
    """Generate ``num_samples`` images into ``out`` (uint8 NHWC under ``images``, with ``seed``, ``indices`` and
    ``num_inference_steps``), sharded over the processes of an initialised ``torch.distributed`` group.

    Crash-safe and resumable: every finished batch is kept in ``work_dir`` (default ``OUT.partial``, beside
    ``out``; :class:`ddpm.evaluation.partial.WorkFolder`), and a rerun with the same settings continues where a
    killed run stopped (with any number of processes); a folder holding a run with other settings is refused
    naming the setting. The ``.npz`` is assembled from the shards (streamed: the images need not fit in memory),
    checked to hold exactly ``num_samples`` images, and only then is the work folder removed. Returns ``out`` on
    rank 0 (or without distribution), ``None`` on the other ranks."""
    import torch.distributed as dist

    from ddpm.evaluation.partial import SettingsMismatchError, WorkFolder, npz_array_shape, write_npz_streaming

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    out = Path(out)
    steps = _check_steps(pipeline, num_inference_steps)
    work = WorkFolder(work_dir or work_folder_for(out), generation_settings(pipeline, num_samples, seed, steps))
    error = None
    if rank == 0:
        try:
            work.open()
        except (SettingsMismatchError, OSError) as err:
            error = str(err)
    if distributed:
        _agree(error, True)
    elif error is not None:
        raise SettingsMismatchError(error)
    indices = shard_range(num_samples, rank, world)
    _fill(work, pipeline, indices, seed, batch_size, steps, progress and rank == 0)
    if distributed:
        dist.barrier()
    result, error = None, None
    if rank == 0:
        try:
            c, h, w = _image_chw(pipeline)
            meta = {
                "indices": np.arange(num_samples, dtype=np.int64),
                "seed": np.int64(seed),
                "num_inference_steps": np.int64(steps),
            }
            chunks = work.iter_chunks(0, num_samples, "images")
            write_npz_streaming(out, "images", (num_samples, h, w, c), np.uint8, chunks, meta)
            if npz_array_shape(out, "images")[0] != num_samples:
                raise RuntimeError(f"{out} does not hold exactly {num_samples} images")
            work.remove()
            result = out
        except (OSError, RuntimeError, ValueError) as err:
            error = f"{out}: could not assemble the images ({err}); the finished batches stay in {work.path}"
    _agree(error, distributed)
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
