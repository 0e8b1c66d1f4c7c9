"""Where a run reports besides ``metrics.jsonl``: experiment trackers and plain progress lines for logs.

Trackers (``--report-to``, as the ``--report_to`` of Diffusers' training examples), on rank 0 only:

* ``tensorboard``: event files in ``<output_dir>/tensorboard/`` through ``torch.utils.tensorboard`` (needs the
  ``tensorboard`` package: ``pip install tensorboard``);
* ``wandb``: Weights & Biases, offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads the run later);
  files in ``<output_dir>/wandb/``, project ``$WANDB_PROJECT`` (default ``ddpm``), the run's id kept in
  ``<output_dir>/wandb-run.json`` so a resumed run continues the same W&B run;
* ``auto`` (the default): ``tensorboard`` when it is installed, else nothing; ``none``: nothing.

Each tracker gets the scalars of every metrics line (``train/loss``, ``train/lr``, ``train/grad_norm``,
``train/images_per_s``, the quartiles; ``eval/proxy_fid``), the sample grids as images and the resolved config once.

No duplicate events after a resume: a resumed run reports only steps after its checkpoint's step. TensorBoard is
opened with ``purge_step = checkpoint step + 1``, so the events a killed run wrote past its last checkpoint are
dropped by TensorBoard's reader; W&B steps already sent (``last_step`` in ``wandb-run.json``) are not sent again (an
exact resume recomputes the same values for them).

Off a terminal (stderr piped to a file, a batch scheduler) a tqdm bar is replaced by :class:`PlainProgress`: one line
per metrics flush (every ``--log-every`` steps), at most one every ``--progress-interval`` seconds, and always the
last step, e.g.::

    train step 1200/800000 (0.2%) | loss 0.0652 | 345 img/s | lr 2.00e-04 | elapsed 0:04:10 | eta 3d 4:05:06
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ddpm import io as ddpm_io
from ddpm.training.config import ConfigError, TrainConfig, report_targets

WANDB_STATE_FILE = "wandb-run.json"


# ---------------------------------------------------------------------------------------------------------------
# Trackers
# ---------------------------------------------------------------------------------------------------------------
def _tensorboard_writer_class():
    from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

    return SummaryWriter


def tensorboard_available() -> bool:
    try:
        _tensorboard_writer_class()
    except ImportError:
        return False
    return True


def resolve_targets(report_to: str) -> list[str]:
    """The trackers ``report_to`` names (``auto`` resolved); a :class:`ConfigError` naming the ``pip install`` when a
    named one is not installed."""
    targets = report_targets(report_to)
    if targets == ["auto"]:
        return ["tensorboard"] if tensorboard_available() else []
    if "tensorboard" in targets and not tensorboard_available():
        raise ConfigError(
            "--report-to tensorboard needs the tensorboard package: pip install tensorboard "
            "(or pip install 'ddpm[tensorboard]')"
        )
    if "wandb" in targets:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--report-to wandb needs the wandb package: pip install wandb (or pip install 'ddpm[wandb]')"
            ) from None
    return targets


class _TensorBoard:
    def __init__(self, folder: Path, config_json: str, resumed_step: int):
        writer_class = _tensorboard_writer_class()
        # purge_step: TensorBoard's reader drops the events of earlier writers at steps >= purge_step
        self.writer = writer_class(log_dir=str(folder), purge_step=resumed_step + 1 if resumed_step else None)
        if not resumed_step:
            self.writer.add_text("config", "```json\n" + config_json + "```", 0)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out: Path, config: dict[str, Any], resumed_step: int):
        import wandb

        self.wandb = wandb
        self.state_path = out / WANDB_STATE_FILE
        saved = {}
        if resumed_step and self.state_path.is_file():
            try:
                saved = json.loads(self.state_path.read_text(encoding="utf-8"))
            except ValueError:
                saved = {}
        self.run_id = str(saved.get("id") or secrets.token_hex(4))
        self.last_step = int(saved.get("last_step", 0)) if resumed_step else 0
        self.sent_before = self.last_step  # the run this one resumes sent steps up to here
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ddpm"),
            name=out.name,
            id=self.run_id,
            resume="allow",
            dir=str(out),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=config,
        )
        self._save_state()

    def _save_state(self) -> None:
        ddpm_io.atomic_write_text(self.state_path, json.dumps({"id": self.run_id, "last_step": self.last_step}) + "\n")

    def _log(self, payload: dict[str, Any], step: int) -> None:
        if step <= self.sent_before:  # already sent by the run this one resumes (same values: exact resume)
            return
        self.run.log(payload, step=step)
        if step > self.last_step:
            self.last_step = step
            self._save_state()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._log({tag: value}, step)  # several calls at one step make one W&B history row

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._log({tag: self.wandb.Image(image)}, step)

    def close(self) -> None:
        self.run.finish()


class Reporter:
    """The run's trackers (rank 0) behind the part of TensorBoard's ``SummaryWriter`` interface the trainer uses
    (``add_scalar``, ``add_image``, ``close``); nothing is reported for steps up to ``resumed_step``."""

    def __init__(self, trackers: list, resumed_step: int = 0):
        self.trackers = trackers
        self.resumed_step = resumed_step

    def add_scalar(self, tag: str, value: Any, step: int) -> None:
        if step > self.resumed_step and isinstance(value, (int, float)) and not isinstance(value, bool):
            for tracker in self.trackers:
                tracker.scalar(tag, float(value), step)

    def add_image(self, tag: str, image: np.ndarray, step: int, dataformats: str = "HWC") -> None:
        """A uint8 image (a sample grid), HWC or CHW."""
        image = np.asarray(image)
        if dataformats == "CHW":
            image = image.transpose(1, 2, 0)
        elif dataformats != "HWC":
            raise ValueError(f"dataformats={dataformats!r}: must be HWC or CHW")
        if step > self.resumed_step:
            for tracker in self.trackers:
                tracker.image(tag, image, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_reporter(cfg: TrainConfig, out: Path, resumed_step: int = 0) -> Reporter | None:
    """The trackers of ``cfg.report_to`` for a run in ``out`` that starts after ``resumed_step`` (0: a fresh run),
    or None when there are none."""
    targets = resolve_targets(cfg.report_to)
    if not targets:
        return None
    trackers: list = []
    if "tensorboard" in targets:
        trackers.append(_TensorBoard(out / "tensorboard", cfg.to_json(), resumed_step))
    if "wandb" in targets:
        trackers.append(_Wandb(out, cfg.to_dict(), resumed_step))
    return Reporter(trackers, resumed_step)


# ---------------------------------------------------------------------------------------------------------------
# Progress off a terminal
# ---------------------------------------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{h}:{m:02d}:{s:02d}"


class PlainProgress:
    """Progress as plain lines on ``stream`` (default stderr), for logs: the stand-in for the tqdm bar off a
    terminal, with the part of its interface the trainer uses. :meth:`update` counts steps; :meth:`set_postfix` (the
    trainer's metrics flush: the formatted ``loss`` and ``img_s``) prints a line (step/max, loss, img/s, the LR from
    ``lr(step)``, elapsed, ETA from this process's mean step time) when ``interval`` seconds have passed since the
    last line, and always for the first flush and the last step."""

    def __init__(self, start_step: int, max_steps: int, interval: float = 30.0, stream: TextIO | None = None, lr=None):
        self.start_step = self.step = start_step
        self.max_steps = max_steps
        self.interval = interval
        self.stream = stream
        self.lr = lr
        self.start = time.perf_counter()
        self.last_line: float | None = None

    def update(self, n: int = 1) -> None:
        self.step += n

    def set_postfix(self, loss: str | None = None, img_s: str | None = None, refresh: bool = True) -> str | None:
        now = time.perf_counter()
        step = self.step
        due = self.last_line is None or now - self.last_line >= self.interval or step >= self.max_steps
        if not due:
            return None
        self.last_line = now
        elapsed = now - self.start
        done = step - self.start_step
        eta = elapsed / done * (self.max_steps - step) if done > 0 else float("nan")
        parts = [f"train step {step}/{self.max_steps} ({100.0 * step / self.max_steps:.1f}%)"]
        if loss is not None:
            parts.append(f"loss {loss}")
        if img_s is not None:
            parts.append(f"{img_s} img/s")
        if self.lr is not None:
            parts.append(f"lr {self.lr(step):.2e}")
        parts.append(f"elapsed {_duration(elapsed)}")
        parts.append(f"eta {_duration(eta)}" if eta == eta else "eta ?")
        line = " | ".join(parts)
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)
        return line

    def close(self) -> None:
        pass


def progress_display(
    progress: bool | None, start_step: int, max_steps: int, interval: float = 30.0, stream=None, lr=None
):
    """What shows progress: None (``progress`` False), a tqdm bar (``progress`` True, or None on a terminal), or
    :class:`PlainProgress` lines (``progress`` None off a terminal). ``lr(step)``: the LR of the update that made
    ``step``, for the lines."""
    if progress is False:
        return None
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if progress is None and not (isatty is not None and isatty()):
        return PlainProgress(start_step, max_steps, interval, stream, lr=lr)
    from tqdm.auto import tqdm

    return tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, file=stream)
