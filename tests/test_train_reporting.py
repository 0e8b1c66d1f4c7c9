"""Progress lines off a terminal and the experiment trackers (``--report-to``): TensorBoard and Weights & Biases,
through stand-in modules when the real packages are not installed; no duplicate events after a resume."""

import json
import sys
import types
import typing

import numpy as np
import pytest

from ddpm.cli import main
from ddpm.training import reporting
from ddpm.training import trainer as trainer_mod
from ddpm.training.config import ConfigError
from ddpm.training.trainer import Trainer
from test_train_loop import _cfg, _npz

RUN = dict(max_steps=6, checkpoint_every=3, log_every=1, sample_every=3, sample_steps=1, num_samples=2, dropout=0.0)


class _Stop(Exception):
    pass


def _run_killed_after(step, cfg, monkeypatch):
    """Run ``cfg`` and die right after step ``step``'s maintenance, as a kill between checkpoints would."""
    original = trainer_mod.Trainer._maintain

    def maintain(self, state, loop):
        original(self, state, loop)
        if state.step == step:
            raise _Stop

    monkeypatch.setattr(trainer_mod.Trainer, "_maintain", maintain)
    with pytest.raises(_Stop):
        Trainer(cfg, progress=False).run()
    monkeypatch.setattr(trainer_mod.Trainer, "_maintain", original)


# ---------------------------------------------------------------------------------------------------------------
# Plain progress lines
# ---------------------------------------------------------------------------------------------------------------
def test_plain_progress_lines_off_a_terminal(tmp_path, capsys):
    data = _npz(tmp_path / "data.npz")
    cfg = _cfg(data, tmp_path / "run", max_steps=6, log_every=2, checkpoint_every=6, progress_interval=0)
    Trainer(cfg).run()  # progress=None: stderr is not a terminal under capsys
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train step")]
    assert [line.split()[2] for line in lines] == ["2/6", "4/6", "6/6"]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for line, record in zip(lines, records, strict=True):
        fields = line.split(" | ")
        assert fields[1] == f"loss {record['loss']:.4f}" and fields[2] == f"{record['images_per_s']:.0f} img/s"
        assert fields[3] == f"lr {record['lr']:.2e}" and fields[4].startswith("elapsed ")
        assert fields[5].startswith("eta ")
    assert lines[-1].endswith("eta 0:00:00")


def test_plain_progress_is_rate_limited_but_shows_the_first_and_last_step(tmp_path, capsys):
    data = _npz(tmp_path / "data.npz")
    cfg = _cfg(data, tmp_path / "run", max_steps=6, log_every=1, checkpoint_every=6, progress_interval=3600)
    Trainer(cfg).run()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train step")]
    assert [line.split()[2] for line in lines] == ["1/6", "6/6"]
    Trainer(_cfg(data, tmp_path / "quiet", max_steps=2), progress=False).run()
    assert "train step" not in capsys.readouterr().err


def test_progress_display_choice_and_eta():
    class Tty:
        def isatty(self):
            return True

        def write(self, text):
            pass

        def flush(self):
            pass

    assert reporting.progress_display(False, 0, 10, 30.0) is None
    assert isinstance(
        reporting.progress_display(None, 0, 10, 30.0, stream=types.SimpleNamespace()), reporting.PlainProgress
    )
    bar = reporting.progress_display(None, 0, 10, 30.0, stream=Tty())
    assert not isinstance(bar, reporting.PlainProgress)
    bar.close()
    assert reporting._duration(3 * 86400 + 4 * 3600 + 5 * 60 + 6) == "3d 4:05:06"
    assert reporting._duration(59.6) == "0:01:00"


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------------------------
class _FakeSummaryWriter:
    """Records what torch.utils.tensorboard.SummaryWriter is asked to write."""

    writers: typing.ClassVar[list] = []

    def __init__(self, log_dir=None, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars, self.images, self.texts, self.closed = [], [], [], False
        _FakeSummaryWriter.writers.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, float(value), step))

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.images.append((tag, np.asarray(image).shape, dataformats, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tensorboard(monkeypatch):
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = _FakeSummaryWriter
    _FakeSummaryWriter.writers = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    return _FakeSummaryWriter


def test_tensorboard_events_without_duplicates_after_a_resume(tmp_path, monkeypatch, fake_tensorboard):
    data = _npz(tmp_path / "data.npz")
    cfg = _cfg(data, tmp_path / "run", report_to="tensorboard", **RUN)
    _run_killed_after(5, cfg, monkeypatch)  # logged steps 1..5; the last checkpoint is step 3
    Trainer(cfg, resume=True, progress=False).run()
    first, second = fake_tensorboard.writers
    assert first.log_dir == second.log_dir == str(tmp_path / "run" / "tensorboard") and first.closed and second.closed
    assert first.purge_step is None and second.purge_step == 4  # the reader drops the killed run's steps >= 4
    assert [t[0] for t in first.texts] == ["config"] and json.loads(first.texts[0][1].strip("`json\n"))["seed"] == 0
    assert second.texts == []  # the config once per run
    loss_steps = lambda w: [s for tag, _, s in w.scalars if tag == "train/loss"]  # noqa: E731
    assert loss_steps(first) == [1, 2, 3, 4, 5] and loss_steps(second) == [4, 5, 6]
    for tag in ("train/lr", "train/grad_norm", "train/images_per_s", "train/loss_q0"):
        assert tag in {t for t, _, _ in second.scalars}
    assert [(i[0], i[2], i[3]) for i in first.images] == [("samples", "HWC", 3)]
    assert [i[3] for i in second.images] == [6] and second.images[0][1][2] == 3
    # What TensorBoard shows: the first writer's events before the purge step, then the second's: each step once.
    shown = [(t, s) for t, _, s in first.scalars if s < second.purge_step] + [(t, s) for t, _, s in second.scalars]
    assert len(shown) == len(set(shown))
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in metrics}
    assert {s: v for t, v, s in second.scalars if t == "train/loss"} == pytest.approx(
        {s: by_step[s] for s in range(4, 7)}
    )


def test_tensorboard_missing_is_a_clear_error_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as without the package
    data = _npz(tmp_path / "data.npz")
    with pytest.raises(ConfigError, match=r"pip install tensorboard"):
        Trainer(_cfg(data, tmp_path / "a", report_to="tensorboard"), progress=False)
    assert reporting.resolve_targets("auto") == [] and reporting.resolve_targets("none") == []
    result = Trainer(_cfg(data, tmp_path / "b", max_steps=2), progress=False).run()  # auto: nothing, no error
    assert result.step == 2 and not (tmp_path / "b" / "tensorboard").exists()


def test_real_tensorboard_event_files_have_each_step_once(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (an optional extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _npz(tmp_path / "data.npz")
    cfg = _cfg(data, tmp_path / "run", report_to="tensorboard", **RUN)
    _run_killed_after(5, cfg, monkeypatch)
    Trainer(cfg, resume=True, progress=False).run()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), purge_orphaned_data=True)
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 7))
    assert [e.step for e in acc.Images("samples")] == [3, 6]


# ---------------------------------------------------------------------------------------------------------------
# Weights & Biases
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.inits, module.logged = [], []

    class Image:
        def __init__(self, array):
            self.shape = np.asarray(array).shape

    class Run:
        def log(self, payload, step=None):
            module.logged.append((step, dict(payload)))

        def finish(self):
            module.finished = True

    def init(**kwargs):
        module.inits.append(kwargs)
        return Run()

    module.Image, module.init = Image, init
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return module


def test_wandb_offline_run_resumes_the_same_run_without_resending_steps(tmp_path, monkeypatch, fake_wandb):
    data = _npz(tmp_path / "data.npz")
    cfg = _cfg(data, tmp_path / "run", report_to="wandb", **RUN)
    _run_killed_after(5, cfg, monkeypatch)
    sent_first = [step for step, payload in fake_wandb.logged if "train/loss" in payload]
    assert sent_first == [1, 2, 3, 4, 5]
    Trainer(cfg, resume=True, progress=False).run()
    first, second = fake_wandb.inits
    assert first["mode"] == second["mode"] == "offline" and first["dir"] == str(tmp_path / "run")
    assert first["id"] == second["id"] and second["resume"] == "allow" and first["config"]["report_to"] == "wandb"
    steps = [step for step, payload in fake_wandb.logged if "train/loss" in payload]
    assert steps == [1, 2, 3, 4, 5, 6]  # 4 and 5 are not sent again
    images = [(step, payload["samples"].shape) for step, payload in fake_wandb.logged if "samples" in payload]
    assert [s for s, _ in images] == [3, 6] and images[0][1][2] == 3
    saved = json.loads((tmp_path / "run" / "wandb-run.json").read_text())
    assert saved == {"id": first["id"], "last_step": 6} and fake_wandb.finished
    last = {key for step, payload in fake_wandb.logged if step == 6 for key in payload}
    assert {"train/lr", "train/grad_norm", "train/images_per_s", "samples"} <= last


def test_wandb_mode_follows_the_environment(tmp_path, monkeypatch, fake_wandb):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = _npz(tmp_path / "data.npz")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        Trainer(_cfg(data, tmp_path / "x", report_to="wandb,tensorboard"), progress=False)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard")
    Trainer(_cfg(data, tmp_path / "run2", report_to="wandb", max_steps=1), progress=False).run()
    assert fake_wandb.inits[-1]["mode"] == "disabled"


def test_wandb_missing_names_the_pip_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    data = _npz(tmp_path / "data.npz")
    with pytest.raises(ConfigError, match=r"needs the wandb package: pip install wandb"):
        Trainer(_cfg(data, tmp_path / "a", report_to="wandb"), progress=False)
    args = ["train", "--data", str(data), "--resolution", "8", "--output-dir", str(tmp_path / "b"), "--no-progress"]
    assert main([*args, "--report-to", "wandb"]) == 2
    assert "pip install wandb" in capsys.readouterr().err
    assert main([*args, "--report-to", "mlflow"]) == 2
    assert "ddpm train: error: --report-to: 'mlflow': invalid value; allowed: " in capsys.readouterr().err


@pytest.mark.slow
def test_real_wandb_offline_run_and_its_resume(tmp_path, monkeypatch):
    """The real package (pip install wandb), offline: a run and its resume log into one offline run folder."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = _npz(tmp_path / "data.npz")
    Trainer(_cfg(data, tmp_path / "run", report_to="wandb", **{**RUN, "max_steps": 3}), progress=False).run()
    saved = json.loads((tmp_path / "run" / "wandb-run.json").read_text())
    assert saved["last_step"] == 3
    Trainer(_cfg(data, tmp_path / "run", report_to="wandb", **RUN), resume=True, progress=False).run()
    again = json.loads((tmp_path / "run" / "wandb-run.json").read_text())
    assert again == {"id": saved["id"], "last_step": 6}
    runs = list((tmp_path / "run" / "wandb").glob(f"**/offline-run-*-{saved['id']}"))  # in the run folder
    assert runs and all(list(run.glob("*.wandb")) for run in runs), wandb.__version__
