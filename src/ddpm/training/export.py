"""Pipelines from training checkpoints: what ``ddpm export`` writes and what ``ddpm sample --model CHECKPOINT`` runs.

A training checkpoint (:mod:`ddpm.training.checkpoint`) holds two sets of weights: the raw weights the optimiser
updates (``model``) and their exponential moving average (``ema``, :mod:`ddpm.training.ema`). A pipeline folder holds
one. :func:`pipeline_from_checkpoint` builds a :class:`~ddpm.pipeline.DDPMPipeline` from either set, with the UNet
and the scheduler the run's config describes; :func:`save_pipeline_folder` writes it in Diffusers' layout
(``model_index.json``, ``unet/``, ``scheduler/``, plus ``ddpm.json``) so that a kill at any moment leaves either
no folder or a whole one.

The recommendation written to ``ddpm.json`` (:func:`recommended_sampling`) is what the run's grids use: ``ddpm`` with
``sample_steps`` strided steps (``--sampler`` and ``--num-inference-steps`` override it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddpm.training import checkpoint as ckpt

if TYPE_CHECKING:  # pragma: no cover
    from ddpm.pipeline import DDPMPipeline
    from ddpm.training.config import TrainConfig

#: The weight sets of a training checkpoint.
WEIGHTS = ("ema", "raw")

#: Above this share of the random initial weights an EMA is called young (its samples look like noise).
YOUNG_EMA_SHARE = 0.05


class CheckpointSourceError(ValueError):
    """A path that is not a usable training checkpoint or run folder; the message names the path and why."""


class ExportTargetError(ValueError):
    """An output folder that an export may not write (a file, or a non-empty folder without ``overwrite``)."""


@dataclass
class LoadedCheckpoint:
    """A training checkpoint read back: its payload, the file it came from and its step."""

    payload: dict[str, Any]
    path: Path
    step: int

    def config(self) -> TrainConfig:
        """The run's :class:`~ddpm.training.config.TrainConfig` (as saved in the checkpoint)."""
        from ddpm.training.config import ConfigError, TrainConfig

        try:
            return TrainConfig.from_dict(json.loads(self.payload["config"]), source=f"{self.path} (its config)")
        except (ConfigError, ValueError, TypeError) as err:
            raise CheckpointSourceError(f"{self.path}: its run config cannot be read: {err}") from None

    def ema_initial_share(self) -> float | None:
        """The share of the random initial weights in the checkpoint's EMA (None when it holds no EMA)."""
        from ddpm.training.ema import initial_weight_share

        ema = self.payload.get("ema")
        if not ema:
            return None
        return initial_weight_share(ema.get("decay", 0.0), bool(ema.get("warmup")), int(ema.get("num_updates", 0)))


def looks_like_checkpoint_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a training checkpoint rather than a pipeline folder or Hub id: an existing file, a run
    folder (``checkpoints/`` inside) or a folder of ``checkpoint-<step>.pt`` files, without ``model_index.json``."""
    from ddpm.pipeline import MODEL_INDEX_NAME

    p = Path(path)
    if p.is_file():
        return True
    if not p.is_dir() or (p / MODEL_INDEX_NAME).is_file():
        return False
    return (p / "checkpoints").is_dir() or bool(ckpt.list_checkpoints(p))


def load_training_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """A checkpoint file, or the newest intact checkpoint of a run folder (``RUN/checkpoints/``) or of a folder of
    checkpoint files (a damaged newer file is skipped with a warning, as ``--resume`` does).
    :class:`CheckpointSourceError` naming the path and why otherwise."""
    from ddpm.pipeline import MODEL_INDEX_NAME

    p = Path(path)
    if not p.exists():
        raise CheckpointSourceError(f"{p}: no such file or folder")
    if p.is_file():
        try:
            payload = ckpt.load_checkpoint(p)
        except ckpt.CorruptCheckpointError as err:
            raise CheckpointSourceError(str(err)) from None
        found = p
    else:
        if (p / MODEL_INDEX_NAME).is_file():
            raise CheckpointSourceError(
                f"{p} is a pipeline folder ({MODEL_INDEX_NAME}), not a training checkpoint or run folder"
            )
        folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        try:
            result = ckpt.load_latest_checkpoint(folder)
        except ckpt.CheckpointError as err:
            raise CheckpointSourceError(str(err)) from None
        if result is None:
            raise CheckpointSourceError(
                f"{p}: no checkpoint-<step>.pt files in {folder} (a run folder holds checkpoints/checkpoint-<step>.pt)"
            )
        payload, found = result
    if not isinstance(payload, dict) or payload.get("format") != ckpt.CHECKPOINT_FORMAT:
        raise CheckpointSourceError(f"{found}: not a ddpm training checkpoint (format {ckpt.CHECKPOINT_FORMAT!r})")
    version = payload.get("version")
    if not isinstance(version, int) or version > ckpt.CHECKPOINT_VERSION:
        raise CheckpointSourceError(
            f"{found}: checkpoint version {version!r}; this ddpm reads versions up to {ckpt.CHECKPOINT_VERSION}"
        )
    for key in ("config", "model", "step"):
        if key not in payload:
            raise CheckpointSourceError(f"{found}: a ddpm training checkpoint without {key!r} (damaged)")
    return LoadedCheckpoint(payload=payload, path=found, step=int(payload["step"]))


#: Steps a trained model's ``ddpm.json`` suggests for the few-step samplers (``--sampler ddim`` / ``dpm-solver++``).
FEW_STEP_SUGGESTIONS = {"ddim": 50, "dpm-solver++": 25}


def recommended_sampling(cfg: TrainConfig) -> tuple[str, dict[str, int]]:
    """The sampler an export recommends (``ddpm.json``) and the steps for each sampler it names, at most
    ``num_train_timesteps``: what the run's grids use (``ddpm``, ``sample_steps`` strided steps), so ``ddpm sample``
    on an export shows what the grids showed, plus :data:`FEW_STEP_SUGGESTIONS` for ``--sampler``.

    Why not a few-step sampler by default: early in training DDIM's deterministic path turns the model's rough noise
    predictions into grey noise, where DDPM's draws already show colour blobs (docs/first-hour.md, a 300-step run),
    and a newcomer would conclude training is broken. On a trained model DDIM at 50 steps is the better trade
    (bundled model: FID 47.8 against 83.3 for DDPM at 100 steps; docs/samplers.md)."""
    T = cfg.num_train_timesteps
    by_sampler = {"ddpm": int(cfg.sample_steps), **FEW_STEP_SUGGESTIONS}
    return "ddpm", {name: min(steps, T) for name, steps in by_sampler.items()}


def set_recommendation(pipe: DDPMPipeline, cfg: TrainConfig) -> None:
    """Give ``pipe`` the recommendation of :func:`recommended_sampling` (written to ``ddpm.json`` when saved)."""
    sampler, by_sampler = recommended_sampling(cfg)
    pipe.recommended_sampler = sampler
    pipe.recommended_steps_by_sampler = by_sampler
    pipe.recommended_num_inference_steps = by_sampler[sampler]


def young_ema_note(share: float | None, step: int) -> str | None:
    """A one-line explanation when an EMA still holds more than :data:`YOUNG_EMA_SHARE` of the initial weights."""
    if share is None or share <= YOUNG_EMA_SHARE:
        return None
    return (
        f"the EMA weights still hold {share:.0%} of the random initial weights at step {step} (an EMA without "
        "warm-up forgets them slowly), so their samples look like noise; the raw weights do not: use the raw "
        "weights (--weights raw, --grid-weights raw|both) or train with --ema-warmup"
    )


def pipeline_from_checkpoint(loaded: LoadedCheckpoint, weights: str = "ema") -> DDPMPipeline:
    """A :class:`~ddpm.pipeline.DDPMPipeline` (CPU, float32, eval mode) with the checkpoint's ``ema`` or ``raw``
    weights, the UNet and the scheduler of the run's config, and the run's grid settings as its recommendation."""
    from ddpm.models import UNet2DModel
    from ddpm.pipeline import DDPMPipeline
    from ddpm.schedulers import DDPMScheduler

    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}; allowed: {', '.join(WEIGHTS)}")
    cfg = loaded.config()
    if weights == "ema":
        ema = loaded.payload.get("ema")
        if not ema:
            raise CheckpointSourceError(f"{loaded.path} holds no EMA weights; use the raw weights")
        state = {**ema["params"], **ema["buffers"]}
    else:
        state = loaded.payload["model"]
    try:
        unet = UNet2DModel.from_config(cfg.unet_config())
        persistent = unet.state_dict().keys()  # the EMA also copies non-persistent buffers (e.g. time_proj.freqs)
        unet.load_state_dict({k: v for k, v in state.items() if k in persistent}, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        first = " ".join(str(err).split())[:300]
        raise CheckpointSourceError(
            f"{loaded.path}: its {weights} weights do not fit the UNet its config describes (a run trained with a "
            f"model object of its own?): {first}"
        ) from None
    unet.eval().requires_grad_(False)
    pipe = DDPMPipeline(unet, DDPMScheduler.from_config(cfg.scheduler_config()))
    set_recommendation(pipe, cfg)
    return pipe


def check_export_target(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``out`` if an export may write it: absent, an empty folder, or (with ``overwrite``) a pipeline folder.
    :class:`ExportTargetError` otherwise. A non-empty folder that is not a pipeline folder is never replaced."""
    from ddpm.pipeline import MODEL_INDEX_NAME

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportTargetError(f"{out} is a file; a folder to create was expected")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportTargetError(f"{out} is not empty; pass --overwrite to replace it")
        if not (out / MODEL_INDEX_NAME).is_file():
            raise ExportTargetError(
                f"{out} is not empty and is not a pipeline folder (no {MODEL_INDEX_NAME}); it is never replaced"
            )
    return out


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_pipeline_folder(pipe: DDPMPipeline, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``pipe`` to the folder ``out`` atomically: into a temporary sibling folder (``.NAME.*.tmp``), synced,
    then renamed onto ``out``. A kill leaves ``out`` absent or as it was, never half-written (at worst a temporary
    sibling to delete). With ``overwrite`` an existing pipeline folder is replaced (see :func:`check_export_target`).
    """
    out = check_export_target(out, overwrite)
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    old = None
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; give it an ordinary folder's permissions
        pipe.save_pretrained(tmp)
        _fsync_tree(tmp)
        if out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old)  # onto the empty folder just made
        os.replace(tmp, out)  # onto nothing or an empty folder
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous export back
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, weights: str = "ema", overwrite: bool = False
) -> tuple[Path, LoadedCheckpoint]:
    """``ddpm export``: the pipeline of a checkpoint file or run folder (:func:`load_training_checkpoint`) with its
    ``weights``, written to ``out`` (:func:`save_pipeline_folder`). Returns the folder and the checkpoint used."""
    check_export_target(out, overwrite)  # before reading a large checkpoint
    loaded = load_training_checkpoint(checkpoint)
    pipe = pipeline_from_checkpoint(loaded, weights)
    return save_pipeline_folder(pipe, out, overwrite), loaded
