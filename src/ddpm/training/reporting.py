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

    train step 1200/800000 (0.2%) | loss 0.0652 | 345.1 img/s | lr 2.00e-04 | elapsed 0:04:10 | eta 3d 04:05:06
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

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

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

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._log(dict(values), step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self._log({tag: self.wandb.Image(image)}, step)

    def close(self) -> None:
        self.run.finish()


class Reporter:
    """The run's trackers (rank 0): scalars, images, the config once; nothing for steps up to ``resumed_step``."""

    def __init__(self, trackers: list, resumed_step: int = 0):
        self.trackers = trackers
        self.resumed_step = resumed_step

    def scalars(self, record: dict[str, Any], prefix: str = "train") -> None:
        """The numbers of one metrics record (its ``step`` says where) as ``prefix/key``."""
        step = int(record["step"])
        values = {
            f"{prefix}/{k}": float(v)
            for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if step > self.resumed_step and values:
            for tracker in self.trackers:
                tracker.scalars(values, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """A uint8 HWC image (a sample grid)."""
        if step > self.resumed_step:
            for tracker in self.trackers:
                tracker.image(tag, np.asarray(image), step)

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
    terminal. :meth:`update` counts steps; :meth:`show` prints a line for a metrics record (step/max, loss, img/s, lr,
    elapsed, ETA from this process's mean step time) when ``interval`` seconds have passed since the last line, and
    always for the first record and the last step."""

    def __init__(self, start_step: int, max_steps: int, interval: float = 30.0, stream: TextIO | None = None):
        self.start_step = self.step = start_step
        self.max_steps = max_steps
        self.interval = interval
        self.stream = stream
        self.start = time.perf_counter()
        self.last_line: float | None = None

    def update(self, n: int = 1) -> None:
        self.step += n

    def set_postfix(self, *args, **kwargs) -> None:  # tqdm's interface; the numbers come through show()
        pass

    def show(self, record: dict[str, Any]) -> str | None:
        now = time.perf_counter()
        step = int(record["step"])
        due = self.last_line is None or now - self.last_line >= self.interval or step >= self.max_steps
        if not due:
            return None
        self.last_line = now
        elapsed = now - self.start
        done = step - self.start_step
        eta = elapsed / done * (self.max_steps - step) if done > 0 else float("nan")
        parts = [f"train step {step}/{self.max_steps} ({100.0 * step / self.max_steps:.1f}%)"]
        if "loss" in record:
            parts.append(f"loss {record['loss']:.4g}")
        if "images_per_s" in record:
            parts.append(f"{record['images_per_s']:.1f} img/s")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.2e}")
        parts.append(f"elapsed {_duration(elapsed)}")
        parts.append(f"eta {_duration(eta)}" if eta == eta else "eta ?")
        line = " | ".join(parts)
        stream = self.stream if self.stream is not None else sys.stderr
        print(line, file=stream, flush=True)
        return line

    def close(self) -> None:
        pass


def show_metrics(bar, record: dict[str, Any]) -> None:
    """Hand a metrics record to the progress display: a tqdm bar's postfix, or a :class:`PlainProgress` line."""
    if bar is None:
        return
    if isinstance(bar, PlainProgress):
        bar.show(record)
    else:
        bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}", refresh=False)


def progress_display(progress: bool | None, start_step: int, max_steps: int, interval: float, stream=None):
    """What shows progress: None (``progress`` False), a tqdm bar (``progress`` True, or None on a terminal), or
    :class:`PlainProgress` lines (``progress`` None off a terminal)."""
    if progress is False:
        return None
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if progress is None and not (isatty is not None and isatty()):
        return PlainProgress(start_step, max_steps, interval, stream)
    from tqdm.auto import tqdm

    return tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, file=stream)
