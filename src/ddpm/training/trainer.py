"""The training loop: Algorithm 1 of Ho et al. 2020 with the paper's optimisation recipe, exact resume and DDP.

One step (``step`` counts completed optimiser updates, 0-based):

1. the global batch's data-set indices come from :class:`~ddpm.training.data_order.DataOrder` (a function of
   ``step``); this process loads its slice;
2. timesteps ``t ~ U{0..T-1}``, noise ``eps ~ N(0, I)`` and flips are drawn for the *global* batch from the run's own
   generator, and each process takes its slice, so N processes see exactly the noise one process would;
3. loss (:mod:`ddpm.training.losses`), backward (scaled in fp16), gradient clipping by global norm, Adam with the
   learning rate of :func:`learning_rate` (linear warm-up, then constant or decaying), then the EMA update.

Every ``checkpoint_every`` steps (and at the end) rank 0 writes a checkpoint holding everything needed to continue
bit for bit (see :mod:`ddpm.training.checkpoint`) and re-exports ``pipeline/`` with the EMA weights. A NaN or infinite
loss, or weights made non-finite by an update (checked after every update, read with the metrics), stops the run with
:class:`NonFiniteLossError` before anything is saved, and no checkpoint is written with non-finite weights, so the
last checkpoint is always good.

Safety of the run folder (:mod:`ddpm.training.run_folder`): one run at a time holds its lock; temporary files of
killed writes are removed at the start; SIGINT / SIGTERM save a checkpoint of the current step at the next step
boundary and stop with :class:`TrainingInterrupted`; the end-of-run outputs (final checkpoint, ``pipeline/`` with
``ddpm.json``, the last grid, the loss curve) are finished by a resume of a run killed after its last step, and a
rerun of a finished run changes nothing (``outputs.json`` records which step each output shows).

The loop reads as set-up (:meth:`Trainer._set_up`: a fresh or resumed :class:`~ddpm.training.checkpoint.RunState`,
the run folder, the model as trained), step (:meth:`Trainer._step`) and maintenance (:meth:`Trainer._maintain`:
metrics, checkpoints, exports, samples). The run state is the one object a checkpoint saves and restores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpm import distributed as ddist
from ddpm import io as ddpm_io
from ddpm.data import DataError, open_dataset, to_model_range
from ddpm.training import checkpoint as ckpt
from ddpm.training import run_folder
from ddpm.training.config import ConfigError, TrainConfig, batch_repeat_warning
from ddpm.training.data_order import DataOrder, StepBatchSampler
from ddpm.training.ema import EMA
from ddpm.training.losses import compute_loss

logger = logging.getLogger(__name__)

_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(RuntimeError):
    """A training run cannot start or continue; the message says why and what is safe."""


class NonFiniteLossError(TrainingError):
    """The loss, or the weights after an update, became NaN or infinite."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM stopped the run at a step boundary, after saving a checkpoint of that step.

    ``exit_code`` is ``128 + signum`` (130 for SIGINT, 143 for SIGTERM); ``resume_command`` continues the run."""

    def __init__(self, message: str, signum: int, step: int, checkpoint: Path | None, resume_command: str):
        super().__init__(message)
        self.signum, self.step, self.checkpoint, self.resume_command = signum, step, checkpoint, resume_command
        self.exit_code = 128 + int(signum)


@dataclass
class TrainResult:
    step: int
    output_dir: Path
    pipeline_dir: Path | None
    last_checkpoint: Path | None
    last_metrics: dict = field(default_factory=dict)
    resumed_from: Path | None = None


# options a resume may change (with a warning that the run is no longer an exact continuation)
_RESUME_WARN_KEYS = (
    "batch_size",
    "grad_accum",
    "seed",
    "lr",
    "warmup_steps",
    "lr_schedule",
    "snr_gamma",
    "grad_clip",
    "ema_decay",
    "ema_warmup",
    "ema_inv_gamma",
    "ema_power",
    "precision",
    "hflip",
    "adam_beta1",
    "adam_beta2",
    "adam_eps",
    "vlb_weight",
    "ema_warmup",
    "ema_inv_gamma",
    "ema_power",
)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """LR of the update that turns ``step`` completed updates into ``step + 1``.

    Linear warm-up ``lr * min(1, (step + 1) / warmup_steps)``; after it, ``lr_schedule`` "constant" keeps ``lr`` (the
    paper), "cosine" multiplies by ``(1 + cos(pi * p)) / 2`` and "linear" by ``1 - p``, where
    ``p = (step - warmup_steps) / (max_steps - warmup_steps)`` runs from 0 at the end of the warm-up towards 1 at
    ``max_steps`` (the shape of Diffusers' ``get_scheduler("cosine" | "linear")``).
    """
    warm = 1.0 if cfg.warmup_steps <= 0 else min(1.0, (step + 1) / cfg.warmup_steps)
    if cfg.lr_schedule == "constant" or step < cfg.warmup_steps:
        return cfg.lr * warm
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - progress)
    raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}: must be constant, cosine or linear")


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (seed the global state libraries draw from)
    random.seed(seed)


def _grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    if max_norm > 0:
        return nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    return _total_norm([p.grad for p in params if p.grad is not None])


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together (no host sync); NaN or inf when any entry is."""
    if hasattr(nn.utils, "get_total_norm"):
        return nn.utils.get_total_norm(tensors, foreach=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in tensors]))  # pragma: no cover


def _all_finite(tensors) -> bool:
    """Whether every entry of ``tensors`` is finite (one host sync; for the checks before a checkpoint)."""
    tensors = [t.detach() for t in tensors if t.is_floating_point()]
    return not tensors or bool(torch.isfinite(_total_norm(tensors)).item())


def optimisation_step(
    model: nn.Module,
    scheduler,
    optimizer: torch.optim.Optimizer,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    *,
    lr: float,
    grad_clip: float = 1.0,
    vlb_weight: float = 0.001,
    snr_gamma: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: EMA | None = None,
    ema_model: nn.Module | None = None,
    params: list[torch.Tensor] | None = None,
    micro_batches: int = 1,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One update: loss on ``(x0, noise, t)``, backward (scaled when a scaler is given), clip the global gradient
    norm, Adam at learning rate ``lr``, then the EMA of ``ema_model`` (default ``model``). No host sync.

    ``micro_batches`` K > 1 accumulates the gradient over K equal consecutive slices of the batch (the backward of
    each slice's mean loss divided by K): the same update as the whole batch, up to float rounding, with the
    activation memory of one slice (:func:`ddpm.training.accumulation.accumulate_gradients`).

    Returns the per-sample loss terms, the batch loss and the gradient norm before clipping (tensors).
    """
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    for group in optimizer.param_groups:
        group["lr"] = lr
    use_scaler = scaler is not None and scaler.is_enabled()
    if micro_batches > 1:
        from ddpm.training.accumulation import accumulate_gradients

        def loss_of(xs, ns, ts):
            return compute_loss(model, scheduler, xs, ns, ts, vlb_weight, autocast_dtype, snr_gamma=snr_gamma)

        terms, loss = accumulate_gradients(
            loss_of, model, x0, noise, t, micro_batches, scale=scaler.scale if use_scaler else None
        )
    else:
        terms = compute_loss(model, scheduler, x0, noise, t, vlb_weight, autocast_dtype, snr_gamma=snr_gamma)
        loss = terms["loss"].mean()
    if use_scaler:
        if micro_batches == 1:
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = _grad_norm(params, grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        if micro_batches == 1:
            loss.backward()
        grad_norm = _grad_norm(params, grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(ema_model if ema_model is not None else model)
    return terms, loss, grad_norm


class _Metrics:
    """Per-step scalars accumulated on the device; read (one sync) every ``log_every`` steps."""

    def __init__(self, device: torch.device, num_timesteps: int):
        self.device = device
        self.T = num_timesteps
        self.reset()

    def reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.grad_norms: list[torch.Tensor] = []
        self.q_sum = torch.zeros(3, 4, dtype=torch.float64, device=self.device)  # loss, mse, vb per quartile
        self.q_count = torch.zeros(4, dtype=torch.float64, device=self.device)
        self.start = time.perf_counter()
        self.images = 0

    def add(self, terms: dict[str, torch.Tensor], t: torch.Tensor, loss: torch.Tensor, grad_norm, images: int) -> None:
        quartile = (t * 4 // self.T).clamp_(0, 3)
        for row, key in enumerate(("loss", "mse", "vb")):
            if key in terms:
                self.q_sum[row].index_add_(0, quartile, terms[key].detach().double())
        self.q_count.index_add_(0, quartile, torch.ones_like(quartile, dtype=torch.float64))
        self.losses.append(loss.detach().float())
        self.grad_norms.append(grad_norm.detach().float())
        self.images += images

    def read(self, info: ddist.DistInfo, has_vb: bool, weighted: bool = False) -> tuple[list[float], dict[str, float]]:
        """Per-step global losses (for the NaN check) and the averaged metrics since the last read.

        The per-quartile ``mse`` is logged next to ``loss`` whenever the two differ (a learned variance adds L_vlb,
        Min-SNR weighting scales it), so runs with different objectives stay comparable."""
        losses = torch.stack(self.losses)
        packed = torch.cat([losses, self.q_sum.flatten(), self.q_count])
        ddist.all_reduce_sum(packed, info)
        n = len(self.losses)
        step_losses = (packed[:n] / info.world_size).tolist()
        q_sum = packed[n : n + 12].view(3, 4)
        q_count = packed[n + 12 :]
        grad_norm = torch.stack(self.grad_norms).mean().item()
        elapsed = time.perf_counter() - self.start
        metrics = {
            "loss": sum(step_losses) / n,
            "grad_norm": grad_norm,
            "images_per_s": self.images * info.world_size / max(elapsed, 1e-9),
        }
        names = ("loss", "mse", "vb") if has_vb else ("loss", "mse") if weighted else ("loss",)
        if len(names) > 1 and q_count.sum() > 0:
            metrics["mse"] = (q_sum[1].sum() / q_count.sum()).item()
        for row, key in enumerate(names):
            for q in range(4):
                if q_count[q] > 0:
                    metrics[f"{key}_q{q}"] = (q_sum[row, q] / q_count[q]).item()
        return step_losses, metrics


@dataclass
class _Loop:
    """What one process uses while the loop runs, beside the checkpointed :class:`~ddpm.training.checkpoint.RunState`
    (nothing here is saved): the data, the scheduler, the model as trained (DDP / compiled wrapper), this rank's rows of
    the global batch, the metrics and, on rank 0, the outputs (TensorBoard, sampler, progress bar)."""

    info: ddist.DistInfo
    dataset: Any
    scheduler: Any
    train_model: nn.Module
    params: list[torch.Tensor]
    autocast_dtype: torch.dtype | None
    rows: slice
    metrics: _Metrics
    writer: Any = None
    sampler: _SampleState | None = None
    bar: Any = None
    resumed_from: Path | None = None
    last_checkpoint: Path | None = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    weight_norms: list[torch.Tensor] = field(default_factory=list)  # after each update since the last metrics read
    saved_step: int | None = None  # the step of the newest checkpoint this run wrote or resumed from
    environment: dict[str, Any] = field(default_factory=dict)  # run_folder.environment(): stored in checkpoints

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """Runs one training run described by a :class:`TrainConfig` (see the module docstring).

    ``model``, ``dataset`` and ``scheduler`` default to what the config describes (a ``UNet2DModel`` from
    ``config.unet_config()``, ``open_dataset(config.data, ...)``, a ``DDPMScheduler``); pass objects to override them.
    ``resume=True`` continues from the newest intact checkpoint in ``config.output_dir`` (or starts afresh when there
    is none); without it an output folder that already holds checkpoints is refused.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: nn.Module | None = None,
        dataset=None,
        scheduler=None,
        resume: bool = False,
        progress: bool | None = None,
        evaluator=None,
    ):
        self.cfg = config.validate()
        from ddpm.training.reporting import resolve_targets

        resolve_targets(self.cfg.report_to)  # a missing tracker package is an error before any work
        self._resumed_step = 0  # the trackers report only the steps after it
        # evaluator(pipeline, step) -> dict of numbers: the proxy FID every fid_every steps (ddpm.cli.train builds it
        # from ddpm.evaluation.proxy_fid; training does not import evaluation)
        self.evaluator = evaluator
        if self.cfg.fid_every and evaluator is None:
            raise TrainingError(
                "fid_every needs an evaluator: Trainer(config, evaluator=ddpm.evaluation.proxy_fid.ProxyFID(...)); "
                "ddpm train --fid-every builds it from --fid-ref-stats"
            )
        self._model_arg = model
        self._dataset_arg = dataset
        self._scheduler_arg = scheduler
        self.resume = resume
        self.progress = progress
        self.out = Path(config.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self._lock: run_folder.RunLock | None = None
        self._stop: _StopSignals | None = None

    # ---------------------------------------------------------------------------------------------------------
    # Set-up
    # ---------------------------------------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        if self._model_arg is not None:
            return self._model_arg
        from ddpm.models import UNet2DModel

        return UNet2DModel.from_config(self.cfg.unet_config())

    def _build_scheduler(self):
        if self._scheduler_arg is not None:
            return self._scheduler_arg
        from ddpm.schedulers import DDPMScheduler

        return DDPMScheduler.from_config(self.cfg.scheduler_config())

    def _open_data(self):
        dataset = self._dataset_arg
        if dataset is None:
            if not self.cfg.data:
                raise DataError("no training data: pass --data (an image folder, idx, .npz, fashion-mnist, cifar10)")
            dataset = open_dataset(
                self.cfg.data, self.cfg.resolution, self.cfg.channels, split="train", image_column=self.cfg.image_column
            )
        if len(dataset) == 0:
            raise DataError("the training data set is empty")
        shape = tuple(dataset[0].shape)
        want = (self.cfg.channels, self.cfg.resolution, self.cfg.resolution)
        if shape != want:
            raise DataError(f"training images are {shape} (C, H, W) but the run expects {want}")
        return dataset

    def _open_data_everywhere(self, info: ddist.DistInfo):
        """Rank 0 opens the data first (it may unpack an archive into the cache), then the others; an error on rank 0
        is raised on every rank instead of leaving them waiting."""
        if not info.distributed:
            return self._open_data()
        dataset, error = None, None
        if info.is_main:
            try:
                dataset = self._open_data()
            except DataError as err:
                error = str(err)
        error = ddist.broadcast_object(error, info)
        if error:
            raise DataError(error)
        return dataset if dataset is not None else self._open_data()

    def _loader(self, dataset, order: DataOrder, start: int, info: ddist.DistInfo):
        """Yields this rank's uint8 batches for steps ``start..max_steps-1``."""
        images = getattr(dataset, "images", None)
        if isinstance(images, torch.Tensor) and self.cfg.num_workers == 0:
            for step in range(start, self.cfg.max_steps):
                yield images[order.local_batch(step, info.rank, info.world_size)]
            return
        sampler = StepBatchSampler(order, start, self.cfg.max_steps, info.rank, info.world_size)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=info.device.type == "cuda",
            collate_fn=torch.stack,
            # A private generator: creating the loader must not consume the global RNG (exact resume).
            generator=torch.Generator(),
            multiprocessing_context="fork" if self.cfg.num_workers > 0 and _can_fork() else None,
        )
        yield from loader

    # ---------------------------------------------------------------------------------------------------------
    # Run
    # ---------------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        run_folder.check_device(self.cfg.device)
        info = ddist.init_distributed(self.cfg.device)
        threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        finished = False
        try:
            with _StopSignals() as self._stop:
                result = self._run(info)
            finished = True
            return result
        finally:
            self._stop = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            torch.set_num_threads(threads)
            ddist.shutdown(info, wait_for_peers=finished)

    def _run(self, info: ddist.DistInfo) -> TrainResult:
        state, loop = self._set_up(info)
        batches = self._loader(loop.dataset, state.order, state.step, info)
        try:
            while state.step < self.cfg.max_steps:
                self._stop_if_asked(state, loop)
                self._step(state, loop, next(batches))
                self._maintain(state, loop)
            self._finish(state, loop)
        finally:
            loop.close()
            batches.close()
        ddist.barrier(info)
        return TrainResult(
            step=state.step,
            output_dir=self.out,
            pipeline_dir=self.out / "pipeline" if info.is_main else None,
            last_checkpoint=loop.last_checkpoint,
            last_metrics=loop.last_metrics,
            resumed_from=loop.resumed_from,
        )

    # ---------------------------------------------------------------------------------------------------------
    # Set-up: the run's state (fresh or resumed), the run folder, and what the loop uses
    # ---------------------------------------------------------------------------------------------------------
    def _set_up(self, info: ddist.DistInfo) -> tuple[ckpt.RunState, _Loop]:
        cfg = self.cfg
        if cfg.batch_size % info.world_size:
            raise TrainingError(
                f"--batch-size {cfg.batch_size} (global) must be divisible by the number of processes "
                f"({info.world_size})"
            )
        self._lock_run_folder(info)
        dataset = self._open_data_everywhere(info)
        if info.is_main and (repeat := batch_repeat_warning(cfg, len(dataset))):
            logger.warning(repeat)
        environment = run_folder.environment(dataset, info.device)
        state = self._new_state(info, DataOrder(len(dataset), cfg.batch_size * cfg.grad_accum, cfg.seed))
        resumed_from = self._resume(state, info, environment)
        ddist.barrier(info)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_if_changed(self.out / "config.json", cfg.to_json())
            self._trim_metrics(state.step)

        train_model = state.model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [info.device.index] if info.device.type == "cuda" else None
            train_model = DistributedDataParallel(train_model, device_ids=device_ids)
        if cfg.compile:
            # Compiles on the first step; the plain model stays what is checkpointed, averaged and exported.
            train_model = torch.compile(train_model, dynamic=False)  # fixed shapes: one graph, no symbolic sizes
        scheduler = self._build_scheduler()
        per_rank = cfg.batch_size * cfg.grad_accum // info.world_size  # this rank's images of one update
        loop = _Loop(
            info=info,
            dataset=dataset,
            scheduler=scheduler,
            train_model=train_model,
            params=[p for p in state.model.parameters() if p.requires_grad],
            autocast_dtype=_AUTOCAST[cfg.precision],
            rows=slice(info.rank * per_rank, (info.rank + 1) * per_rank),
            metrics=_Metrics(info.device, scheduler.config.num_train_timesteps),
            resumed_from=resumed_from,
            last_checkpoint=resumed_from,
            saved_step=state.step if resumed_from is not None else None,
            environment=environment,
        )
        if info.is_main:
            # a finished run that is only completing its outputs opens no new event file (a rerun changes nothing)
            loop.writer = self._tensorboard() if state.step < cfg.max_steps or self._grid_missing(state.step) else None
            loop.sampler = _SampleState(self, state.model, scheduler, info.device)
            loop.bar = self._progress_bar(state.step)
            logger.info(
                "training from step %d to %d: %d images, global batch %d on %d process(es), %s, %s",
                state.step, cfg.max_steps, len(dataset), cfg.batch_size, info.world_size, info.device, cfg.precision,
            )  # fmt: skip
        return state, loop

    def _new_state(self, info: ddist.DistInfo, order: DataOrder) -> ckpt.RunState:
        """The state of step 0: the same initial weights on every rank (DDP would broadcast them anyway), then a
        different global RNG stream per rank (dropout), and the run's own noise generator."""
        cfg = self.cfg
        device = info.device
        _seed_everything(cfg.seed)
        model = self._build_model().to(device)
        if cfg.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
            model.enable_gradient_checkpointing()
        model.train()
        optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            **({"fused": True} if device.type == "cuda" else {"foreach": True}),
        )
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        ema = EMA(model, cfg.ema_decay, cfg.ema_warmup, cfg.ema_inv_gamma, cfg.ema_power) if info.is_main else None
        _seed_everything(cfg.seed + 1 + info.rank)
        generators = {"noise": torch.Generator(device=device).manual_seed(cfg.seed)}
        return ckpt.RunState(model, optimizer, scaler, ema, order, generators)

    def _lock_run_folder(self, info: ddist.DistInfo) -> None:
        """Rank 0 checks the folder, takes its lock (:class:`~ddpm.training.run_folder.RunLock`) and removes the
        temporary files of killed writes; an error there is raised on every rank."""
        error: Exception | None = None
        if info.is_main:
            try:
                run_folder.check_output_dir(self.out)
                self._lock = run_folder.RunLock(self.out).acquire()
                run_folder.clean_temporaries(self.out)
            except (ConfigError, run_folder.RunFolderLockedError) as err:
                error = err
            except OSError as err:
                error = TrainingError(f"cannot use the run folder {self.out}: {err.strerror or err}")
        kind_text = ddist.broadcast_object(None if error is None else (type(error).__name__, str(error)), info)
        if error is not None:
            raise error
        if kind_text is not None:
            kinds = {"ConfigError": ConfigError, "RunFolderLockedError": run_folder.RunFolderLockedError}
            raise kinds.get(kind_text[0], TrainingError)(kind_text[1])

    def _resume(self, state: ckpt.RunState, info: ddist.DistInfo, environment: dict | None = None) -> Path | None:
        """With ``resume``, load the newest intact checkpoint into ``state`` on every rank (before DDP wraps the
        model); returns its path, or None for a fresh run. Without it, an output folder with checkpoints is refused."""
        existing = ckpt.list_checkpoints(self.ckpt_dir)
        if existing and not self.resume:
            raise TrainingError(
                f"{self.out} already holds checkpoints (newest: {existing[0][1].name}); pass --resume to continue "
                "that run, or choose another --output-dir"
            )
        if not self.resume:
            return None
        found = ckpt.load_latest_checkpoint(self.ckpt_dir)
        if found is None:
            if info.is_main:
                logger.warning("--resume: no checkpoint in %s; starting a new run", self.ckpt_dir)
            return None
        payload, path = found
        if payload.get("format") != ckpt.CHECKPOINT_FORMAT:
            raise TrainingError("the checkpoint is not a ddpm training checkpoint")
        if int(payload.get("version", 1)) > ckpt.CHECKPOINT_VERSION:
            raise TrainingError(
                f"{path} is a version {payload['version']} checkpoint; this ddpm reads up to version "
                f"{ckpt.CHECKPOINT_VERSION}: resume it with the ddpm that wrote it"
            )
        self._check_resumable(json.loads(payload["config"]), warn=info.is_main)
        changes = run_folder.compare_environment(payload.get("environment"), environment) if environment else []
        if changes and info.is_main:
            warnings.warn(
                f"resuming {path.name} with a different " + "; ".join(changes) + ": the run continues, but is no "
                "longer a bit-exact continuation", stacklevel=3,
            )  # fmt: skip
        state.load_state_dict(payload, info.rank, info.world_size, warn=info.is_main)
        if info.is_main:
            logger.info("resumed from step %d", state.step)
        self._resumed_step = state.step
        return path

    def _check_resumable(self, saved_cfg: dict[str, Any], warn: bool) -> None:
        """Refuse a checkpoint of another model or process; warn about options that make the run a different one."""
        current = json.loads(self.cfg.to_json())  # compare in JSON form (tuples and lists alike)
        for key in ("model", "scheduler", "resolution", "channels", "dropout"):
            if key in saved_cfg and saved_cfg[key] != current[key]:
                raise TrainingError(
                    f"cannot resume: the checkpoint was trained with {key}={saved_cfg[key]!r}, this run asks for "
                    f"{getattr(self.cfg, key)!r}"
                )
        changed = [
            k for k in _RESUME_WARN_KEYS
            if k in saved_cfg and saved_cfg[k] != current[k]
        ]  # fmt: skip
        saved_max = saved_cfg.get("max_steps", current["max_steps"])
        if current["lr_schedule"] != "constant" and saved_max != current["max_steps"]:
            changed.append("max_steps")  # a decaying schedule is a function of max_steps
        if changed and warn:
            warnings.warn(
                "resuming with changed options " + ", ".join(f"{k}: {saved_cfg[k]!r} -> {getattr(self.cfg, k)!r}"
                for k in changed) + "; the run is no longer an exact continuation", stacklevel=4,
            )  # fmt: skip

    # ---------------------------------------------------------------------------------------------------------
    # One step
    # ---------------------------------------------------------------------------------------------------------
    def _step(self, state: ckpt.RunState, loop: _Loop, images: torch.Tensor) -> None:
        """One update on this rank's slice of the global batch of step ``state.step``; the global batch's timesteps,
        noise and flips are drawn whole from the run's generator, so N processes see what one process would. With
        ``grad_accum`` K the update's batch is K * batch_size, drawn the same way and then run in K micro-batches."""
        cfg, device = self.cfg, loop.info.device
        B, C, R = cfg.batch_size * cfg.grad_accum, cfg.channels, cfg.resolution
        T = loop.scheduler.config.num_train_timesteps
        noise_gen = state.generators["noise"]
        x0 = to_model_range(images.to(device, non_blocking=True))
        t_all = torch.randint(0, T, (B,), generator=noise_gen, device=device)
        noise_all = torch.randn((B, C, R, R), generator=noise_gen, device=device)
        t, noise = t_all[loop.rows], noise_all[loop.rows]
        if cfg.hflip:
            flip = (torch.rand((B,), generator=noise_gen, device=device) < 0.5)[loop.rows]
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        terms, loss, grad_norm = optimisation_step(
            loop.train_model, loop.scheduler, state.optimizer, x0, noise, t,
            lr=learning_rate(cfg, state.step), grad_clip=cfg.grad_clip, vlb_weight=cfg.vlb_weight,
            snr_gamma=cfg.snr_gamma, autocast_dtype=loop.autocast_dtype, scaler=state.scaler, ema=state.ema,
            ema_model=state.model, params=loop.params, micro_batches=cfg.grad_accum,
        )  # fmt: skip
        state.step += 1
        loop.weight_norms.append(_total_norm(loop.params).detach())  # read with the metrics: NaN weights never saved
        loop.metrics.add(terms, t, loss, grad_norm, len(t))
        if loop.bar is not None:
            loop.bar.update(1)

    # ---------------------------------------------------------------------------------------------------------
    # Maintenance after a step: metrics, checkpoint and pipeline export, sample grids
    # ---------------------------------------------------------------------------------------------------------
    def _maintain(self, state: ckpt.RunState, loop: _Loop) -> None:
        cfg, step, is_main = self.cfg, state.step, loop.info.is_main
        save_now = step % cfg.checkpoint_every == 0 or step == cfg.max_steps
        if step % cfg.log_every == 0 or save_now:
            loop.last_metrics = self._flush_metrics(state, loop)
        if cfg.fid_every and step % cfg.fid_every == 0:
            self._proxy_fid(state, loop)
        if save_now:
            loop.last_checkpoint = self._save(state, loop)
            if is_main:
                self._export(state, loop)
                self._draw_loss_curve(step)
        if is_main and cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.max_steps):
            self._draw_grid(state, loop)

    # ---------------------------------------------------------------------------------------------------------
    # The end of the run (idempotent) and stopping on a signal
    # ---------------------------------------------------------------------------------------------------------
    def _finish(self, state: ckpt.RunState, loop: _Loop) -> None:
        """Make sure every end-of-run output shows the final step: the checkpoint, ``pipeline/`` (with
        ``ddpm.json``), the last sample grid and the loss curve. After a normal last step this does nothing; after a
        resume of a run killed between its final checkpoint and its last output it finishes those outputs from the
        checkpoint's weights; on a finished run it changes nothing."""
        step = state.step
        if loop.saved_step != step:  # e.g. max_steps lowered on resume below a step that was never saved
            if loop.metrics.losses:
                loop.last_metrics = self._flush_metrics(state, loop)
            loop.last_checkpoint = self._save(state, loop)
        if not loop.info.is_main:
            return
        done = self._outputs()
        if done.get("pipeline") != step or not (self.out / "pipeline" / "model_index.json").is_file():
            logger.info("finishing the run's outputs: exporting pipeline/ from the checkpoint of step %d", step)
            self._export(state, loop)
        if self._grid_missing(step):
            self._draw_grid(state, loop)
        if done.get("loss_curve") != step or not (self.out / "loss.png").is_file():
            self._draw_loss_curve(step)

    def _stop_if_asked(self, state: ckpt.RunState, loop: _Loop) -> None:
        """At a step boundary: when SIGINT / SIGTERM arrived, save a checkpoint of this step (unless one exists) and
        raise :class:`TrainingInterrupted`. Several processes agree on the step: they compare their flags at each
        ``log_every`` boundary (one small all-reduce, where the metrics are read anyway)."""
        signum = self._stop.received if self._stop is not None else None
        info = loop.info
        if info.distributed:
            if state.step % self.cfg.log_every:
                return
            flag = torch.tensor([signum or 0], dtype=torch.int64, device=info.device)
            signum = int(ddist.all_reduce_max(flag, info).item()) or None
        if signum is None:
            return
        path = loop.last_checkpoint
        if loop.saved_step != state.step and state.step > 0:
            path = self._save(state, loop)
            where = f"saved {path}" if info.is_main else "saved by rank 0"
        elif path is not None:
            where = f"{path} already holds this step"
        else:
            where = "nothing was trained yet, so nothing was saved"
        name = signal.Signals(signum).name
        command = resume_command(self.out, info.world_size)
        raise TrainingInterrupted(
            f"stopped by {name} at step {state.step} ({where}); continue with: {command}",
            signum, state.step, path, command,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------------------------
    # Outputs: pipeline export, sample grids, loss curve; outputs.json records which step each one shows
    # ---------------------------------------------------------------------------------------------------------
    def _outputs(self) -> dict[str, Any]:
        try:
            data = json.loads((self.out / OUTPUTS_NAME).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _record_output(self, name: str, step: int) -> None:
        done = self._outputs()
        if done.get(name) != step:
            done[name] = step
            ddpm_io.atomic_write_text(self.out / OUTPUTS_NAME, json.dumps(done, indent=2, sort_keys=True) + "\n")

    def _export(self, state: ckpt.RunState, loop: _Loop) -> None:
        loop.sampler.export(state.ema, self.out / "pipeline")
        self._record_output("pipeline", state.step)

    def _grid_path(self, step: int) -> Path:
        return self.out / "samples" / f"step-{step:09d}.png"

    def _grid_missing(self, step: int) -> bool:
        if not self.cfg.sample_every:
            return False
        return self._outputs().get("samples") != step or not self._grid_path(step).is_file()

    def _draw_grid(self, state: ckpt.RunState, loop: _Loop) -> None:
        """A sample grid of the EMA weights, with its own status lines; its time is kept out of images/s and the
        progress bar's rate and ETA."""
        cfg, step, path = self.cfg, state.step, self._grid_path(state.step)
        steps = min(cfg.sample_steps, loop.scheduler.config.num_train_timesteps)
        with _outside_timing(loop):
            logger.info("step %d: drawing %d sample images (%d denoising steps) ...", step, cfg.num_samples, steps)
            start = time.perf_counter()
            grid = loop.sampler.sample_grid(state.ema, path)
            logger.info("step %d: wrote %s (%.1f s)", step, path, time.perf_counter() - start)
            if loop.writer is not None:
                loop.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        self._record_output("samples", step)

    def _flush_metrics(self, state: ckpt.RunState, loop: _Loop) -> dict[str, Any]:
        step, info, metrics = state.step, loop.info, loop.metrics
        step_losses, values = metrics.read(info, self.cfg.learned_variance, weighted=self.cfg.snr_gamma > 0)
        metrics.reset()
        weight_norms = torch.stack(loop.weight_norms).tolist() if loop.weight_norms else []
        loop.weight_norms.clear()
        for what, series in (("the loss", step_losses), ("the weights (after the update)", weight_norms)):
            for i, value in enumerate(series):
                if not math.isfinite(value):
                    bad = step - len(series) + i + 1
                    kept = self._last_good_checkpoint()
                    raise NonFiniteLossError(
                        f"{what} became {'non-finite' if 'weights' in what else value} at step {bad}; stopping "
                        f"without saving ({kept}). Try a lower --lr, --grad-clip, or --precision fp32/bf16, and "
                        "check the data.",
                        bad,
                    )  # fmt: skip
        record = {"step": step, "lr": state.optimizer.param_groups[0]["lr"], **values}
        if info.is_main:
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if loop.bar is not None:
                loop.bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.0f}", refresh=False)
            if loop.writer is not None:
                for key, value in record.items():
                    if key != "step":
                        loop.writer.add_scalar(f"train/{key}", value, step)
        return record

    def _last_good_checkpoint(self) -> str:
        saved = ckpt.list_checkpoints(self.ckpt_dir)
        return f"the last good checkpoint is {saved[0][1]}" if saved else "no checkpoint was written yet"

    def _save(self, state: ckpt.RunState, loop: _Loop) -> Path | None:
        info = loop.info
        # Never a checkpoint with non-finite weights: every saved one is good (each rank checks its own copy).
        tensors = list(state.model.parameters()) + list(state.ema.params.values() if state.ema is not None else [])
        if not _all_finite(tensors):
            raise NonFiniteLossError(
                f"the weights are not finite at step {state.step}; stopping without saving "
                f"({self._last_good_checkpoint()}). Try a lower --lr, --grad-clip, or --precision fp32/bf16.",
                state.step,
            )
        # Every rank's RNG states go into rank 0's file (each rank continues its own dropout stream on resume).
        rng = ddist.all_gather_objects(ckpt.capture_rng_state(state.generators), info)
        path = None
        error = None
        if info.is_main:
            try:
                payload = state.state_dict(self.cfg, rng)
                payload["environment"] = loop.environment
                path = ckpt.save_checkpoint(payload, self.ckpt_dir, state.step, keep=self.cfg.keep_checkpoints)
            except ckpt.CheckpointError as err:
                error = str(err)
        error = ddist.broadcast_object(error, info)
        if error:
            raise TrainingError(error)
        loop.saved_step = state.step
        return path

    def _trim_metrics(self, step: int) -> None:
        """Drop metric lines logged after ``step`` by a run that died before its next checkpoint."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line
        _write_if_changed(path, "".join(line + "\n" for line in keep))

    def _draw_loss_curve(self, step: int) -> None:
        from ddpm.training.plot import draw_loss_curve, read_metrics

        try:
            draw_loss_curve(read_metrics(self.out / "metrics.jsonl"), self.out / "loss.png")
        except (OSError, ValueError) as err:  # a picture is not worth stopping a run for
            logger.warning("could not draw %s: %s", self.out / "loss.png", err)
            return
        self._record_output("loss_curve", step)

    def _tensorboard(self):
        """The trackers of ``report_to`` (:mod:`ddpm.training.reporting`; a TensorBoard-like writer, or None)."""
        from ddpm.training.reporting import open_reporter

        return open_reporter(self.cfg, self.out, self._resumed_step)

    def _progress_bar(self, step: int):
        """A tqdm bar on a terminal, plain lines off one (:func:`ddpm.training.reporting.progress_display`)."""
        from ddpm.training.reporting import progress_display

        return progress_display(
            self.progress,
            step,
            self.cfg.max_steps,
            self.cfg.progress_interval,
            lr=lambda s: learning_rate(self.cfg, s - 1),
        )

    def _proxy_fid(self, state: ckpt.RunState, loop: _Loop) -> None:
        """Rank 0 runs the evaluator on the EMA pipeline, logs its numbers (a metrics line, the trackers' ``eval/``);
        its time is left out of images/s (the metrics window starts later by as much)."""
        start = time.perf_counter()
        if loop.info.is_main:
            values = self.evaluator(loop.sampler._pipeline(state.ema), state.step)
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.step, **values}) + "\n")
            if loop.writer is not None:
                for key, value in values.items():
                    if isinstance(value, (int, float)):
                        loop.writer.add_scalar(f"eval/{key}", value, state.step)
        ddist.barrier(loop.info)
        loop.metrics.start += time.perf_counter() - start


#: The run folder's record of which step ``pipeline/``, the last sample grid and ``loss.png`` show.
OUTPUTS_NAME = "outputs.json"


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless the file already holds it (a rerun of a finished run changes nothing)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    ddpm_io.atomic_write_text(path, text)


def resume_command(output_dir: Path, world_size: int = 1) -> str:
    """The command that continues the run in ``output_dir`` (its config.json holds every option)."""
    launcher = ["torchrun", "--nproc_per_node", str(world_size), "-m", "ddpm"] if world_size > 1 else ["ddpm"]
    return shlex.join([*launcher, "train", "--output-dir", str(output_dir), "--resume"])


@contextlib.contextmanager
def _outside_timing(loop: _Loop):
    """Keep the time of the body out of the logged images/s and the progress bar's rate and ETA."""
    start = time.perf_counter()
    try:
        yield
    finally:
        spent = time.perf_counter() - start
        loop.metrics.start += spent
        bar = loop.bar
        if bar is not None and not getattr(bar, "disable", True):
            bar.start_t += spent
            bar.last_print_t += spent


class _StopSignals:
    """While active (main thread only), SIGINT and SIGTERM set :attr:`received` instead of stopping the process; the
    loop saves and stops at the next step boundary. A second signal of the same kind acts as it did before (SIGINT:
    KeyboardInterrupt; SIGTERM: the process ends), for when saving hangs."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            if os.environ.get("RANK", "0") == "0":  # under torchrun every process gets the signal: one line
                print(
                    f"ddpm train: {signal.Signals(signum).name} received: saving a checkpoint at the end of this step "
                    "(send it again to stop at once, without saving)",
                    file=sys.stderr,
                    flush=True,
                )
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


class _SampleState:
    """Rank 0's copy of the model, used to export the pipeline folder (EMA weights) and to draw sample grids (the
    weights of ``grid_weights``: ``step-N.png`` with the EMA, ``step-N-raw.png`` with the raw weights)."""

    def __init__(self, trainer: Trainer, model: nn.Module, scheduler, device: torch.device):
        import copy

        self.trainer = trainer
        self.raw = model  # the module the optimiser updates
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.device = device
        self._warned_young_ema = False

    def _pipeline(self, ema: EMA | None, raw: bool = False):
        from ddpm.pipeline import DDPMPipeline
        from ddpm.schedulers import DDPMScheduler
        from ddpm.training.export import set_recommendation, young_ema_note

        if raw:
            self.model.load_state_dict(self.raw.state_dict())
        else:
            ema.copy_to(self.model)
            note = young_ema_note(ema.initial_weight_share(), ema.num_updates)
            if note and not self._warned_young_ema:
                logger.warning("note: %s", note)
                self._warned_young_ema = True
        pipe = DDPMPipeline(self.model, DDPMScheduler.from_config(self.scheduler.config))
        set_recommendation(pipe, self.trainer.cfg)
        return pipe

    def export(self, ema: EMA, folder: Path) -> None:
        """``folder`` as a pipeline of the EMA weights, with ``ddpm.json`` recommending a fast sampler
        (:func:`ddpm.training.export.recommended_sampling`)."""
        pipe = self._pipeline(ema)
        try:
            pipe.save_pretrained(folder)
        except OSError as err:
            raise TrainingError(
                f"could not export the pipeline to {folder}: {err.strerror or err} (the checkpoints are intact)"
            ) from err

    @torch.no_grad()
    def sample_grid(self, ema: EMA, path: Path):
        """Draw the grids of ``grid_weights`` (``path``: the EMA's; ``-raw`` before the suffix: the raw weights');
        returns the first one drawn."""
        from ddpm import images as ddpm_images

        cfg = self.trainer.cfg
        which = {"ema": [False], "raw": [True], "both": [False, True]}[cfg.grid_weights]
        grids = []
        for raw in which:
            pipe = self._pipeline(ema, raw=raw)
            generator = torch.Generator(device="cpu").manual_seed(cfg.sample_seed)
            steps = min(cfg.sample_steps, self.scheduler.config.num_train_timesteps)
            out = pipe(
                batch_size=cfg.num_samples, generator=generator, num_inference_steps=steps, output_type="np",
                progress=False,
            )  # fmt: skip
            ddpm_images.save_grid(out.images, path.with_name(f"{path.stem}-raw{path.suffix}") if raw else path)
            grids.append(ddpm_images.make_grid(out.images))
        return grids[0]


def train(config: TrainConfig, resume: bool = False, **kwargs) -> TrainResult:
    """Run a training run (see :class:`Trainer`)."""
    return Trainer(config, resume=resume, **kwargs).run()
