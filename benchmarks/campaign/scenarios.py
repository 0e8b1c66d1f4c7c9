"""Attempts that are more than one command: kills at chosen moments and reruns, two runs in one folder, resumes
with changed settings, caches that go stale. Each ``make_*`` returns a ``custom(work, fx) -> (outcome, evidence)``.

Reference runs (uninterrupted, same settings) are made once per campaign in ``fixtures.Fixtures.reference``. Work is
measured in CPU seconds of the child (``Run.cpu``), not wall time, so a busy machine does not change the verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np

from .core import (
    TRACEBACK,
    Run,
    cpu_seconds,
    ddpm_argv,
    finish_process,
    kill_group,
    last_line,
    run_process,
    start_process,
    traceback_evidence,
    warned,
)
from .fixtures import TRAIN_TINY

EXPORT = Path("pipeline") / "unet" / "diffusion_pytorch_model.safetensors"


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def _fill(fx, args: list[str], work: Path) -> list[str]:
    return [fx.fill(a, work) for a in args]


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _tmp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name)


def _steps_of(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[-1]) for p in (folder / "checkpoints").glob("checkpoint-*.pt"))


def _metrics_steps(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError, TypeError):
            steps.append(-1)
    return steps


def _wait(proc, condition, timeout: float, poll: float = 0.002) -> bool:
    """Poll ``condition()`` until it holds (True) or the process ends or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if _ended(proc):
            return condition()
        time.sleep(poll)
    return False


def _ended(proc) -> bool:
    """Whether ``proc`` has ended, without reaping it (``finish_process`` collects its status and CPU time)."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _failed(run: Run, what: str) -> tuple[str, str] | None:
    """The outcome of a step that had to succeed, or None when it did."""
    if run.timed_out:
        return "timeout", f"{what}: no answer in time"
    if TRACEBACK in run.stderr:
        return "traceback", f"{what}: {traceback_evidence(run.stderr)}"
    if run.rc is not None and run.rc < 0:
        return "crash", f"{what}: killed by signal {-run.rc}"
    if run.rc != 0:
        return "lost-work", f"{what} failed (exit {run.rc}): {last_line(run.stderr)}"
    return None


def _train_args(max_steps: int, every: int, out: str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["train", *TRAIN_TINY, "--max-steps", str(max_steps), "--checkpoint-every", str(every), *extra,
            "--output-dir", out]  # fmt: skip


def train_reference(fx, max_steps: int, every: int) -> dict:
    """An uninterrupted tiny run: the export's digest, the checkpoint steps and the run folder (kept)."""

    def make():
        folder = fx.root / "refs" / f"train-{max_steps}-{every}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        run = fx.run_ddpm(_train_args(max_steps, every, str(folder / "run")), folder)
        return {"run": run, "folder": folder / "run", "export": _digest(folder / "run" / EXPORT)}

    return fx.reference(f"train-{max_steps}-{every}", make)


def _compare_run(out: Path, ref: dict, max_steps: int) -> tuple[str, str] | None:
    """lost-work / silent-wrong evidence for a resumed run folder against the uninterrupted one."""
    if ref["export"] is None:
        return "crash", f"the reference run failed: {last_line(ref['run'].stderr)}"
    steps = _steps_of(out)
    if not steps or steps[-1] != max_steps:
        return "lost-work", f"newest checkpoint is step {steps[-1] if steps else None}, not {max_steps}"
    got = _digest(out / EXPORT)
    if got is None:
        return "lost-work", "pipeline/ export missing after the resume"
    if got != ref["export"]:
        return "lost-work", "exported weights differ from the uninterrupted run's (stale or wrong export)"
    if tmp := _tmp_files(out):
        return "silent-wrong", f"temporary files left behind: {', '.join(tmp[:3])}"
    metric_steps = _metrics_steps(out)
    if len(metric_steps) != len(set(metric_steps)):
        return "silent-wrong", "metrics.jsonl lists a step twice"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Kills during training, then --resume
# ---------------------------------------------------------------------------------------------------------------
def make_train_kill(moment: str, sig: int = signal.SIGKILL, max_steps: int = 12, every: int = 3, seed: int = 0):
    """SIGKILL at ``moment``: ``mid`` (after the first checkpoint, at a random point), ``ckpt-write`` (while a
    checkpoint's temporary file exists), ``final-ckpt`` (as soon as the last checkpoint file exists, before the
    export), ``export`` (while a file of pipeline/ is being written); then ``ddpm train --resume``, compared with an
    uninterrupted run bit for bit."""

    def custom(work: Path, fx):
        ref = train_reference(fx, max_steps, every)
        out = work / "run"
        proc = start_process(ddpm_argv(_fill(fx, _train_args(max_steps, every, str(out)), work)), work)
        started = time.monotonic()
        ckdir, pipe = out / "checkpoints", out / "pipeline"
        conditions = {
            "mid": lambda: bool(_steps_of(out)),
            "ckpt-write": lambda: ckdir.is_dir() and bool(_tmp_files(ckdir)),
            "final-ckpt": lambda: (ckdir / f"checkpoint-{max_steps:09d}.pt").exists(),
            "export": lambda: pipe.is_dir() and bool(_tmp_files(pipe)) and bool(_steps_of(out)),
        }
        hit = _wait(proc, conditions[moment], timeout=240, poll=0.0005)
        if moment == "mid":
            time.sleep(random.Random(seed).uniform(0.0, 0.3))
        kill_group(proc, sig)
        killed = finish_process(proc, 60, started)
        if killed.rc == 0:
            return "ok", f"the run finished before the kill ({moment} {'seen' if hit else 'not seen'}); nothing tested"
        resumed = fx.run_ddpm(["train", "--output-dir", str(out), "--resume", "--no-progress"], work, timeout=240)
        if bad := _failed(resumed, "resume"):
            return bad
        if bad := _compare_run(out, ref, max_steps):
            return bad
        return "ok", f"killed at {moment} (steps {_steps_of(out)}), resumed bit for bit"

    return custom


def make_train_interrupt(sig: int, max_steps: int = 40):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption) in the middle of a run whose checkpoints are far apart:
    the run should write a checkpoint, print the resume command and stop cleanly; the resume must then equal an
    uninterrupted run."""
    every = 1000

    def custom(work: Path, fx):
        ref = train_reference(fx, max_steps, every)
        out = work / "run"
        proc = start_process(ddpm_argv(_fill(fx, _train_args(max_steps, every, str(out)), work)), work)
        started = time.monotonic()
        _wait(proc, lambda: len(_metrics_steps(out)) >= 6, timeout=240, poll=0.01)
        kill_group(proc, sig)
        stopped = finish_process(proc, 90, started)
        name = signal.Signals(sig).name
        if stopped.rc == 0:
            return "ok", f"the run finished before the {name}; nothing tested"
        if TRACEBACK in stopped.stderr:
            return "traceback", f"on {name}: {traceback_evidence(stopped.stderr)}"
        logged = _metrics_steps(out)
        if not _steps_of(out):
            return "lost-work", (
                f"{name} after step {logged[-1] if logged else '?'}: no checkpoint written (exit {stopped.rc}), "
                "every step since the start is lost"
            )
        if "--resume" not in stopped.stderr:
            return "silent-wrong", f"{name}: checkpoint written but no resume command printed"
        resumed = fx.run_ddpm(["train", "--output-dir", str(out), "--resume", "--no-progress"], work, timeout=240)
        if bad := _failed(resumed, "resume"):
            return bad
        if bad := _compare_run(out, ref, max_steps):
            return bad
        return "ok", f"{name}: checkpoint at step {_steps_of(out)[0]}, resume command printed, resumed bit for bit"

    return custom


# ---------------------------------------------------------------------------------------------------------------
# Kills during eval generate / eval nll, then the same command again
# ---------------------------------------------------------------------------------------------------------------
EVAL_JOBS = {
    "generate": (
        ["eval", "generate", "--model", "{tiny}", "--num-samples", "256", "--batch-size", "8", "--sampler", "ddpm",
         "--num-inference-steps", "50", "--threads", "1", "--out", "{work}/g.npz"],
        ["eval", "generate", "--model", "{tiny}", "--num-samples", "1", "--batch-size", "1", "--sampler", "ddpm",
         "--num-inference-steps", "1", "--threads", "1", "--out", "{work}/g.npz"],
        "g.npz", "images",
    ),
    "nll": (
        ["eval", "nll", "--model", "{tiny}", "--data", "{npz_many}", "--num-samples", "48", "--batch-size", "2",
         "--t-batch", "1", "--out", "{work}/n.npz"],
        ["eval", "nll", "--model", "{tiny}", "--data", "{npz_many}", "--num-samples", "1", "--batch-size", "1",
         "--t-batch", "50", "--out", "{work}/n.npz"],
        "n.npz", "total_bpd",
    ),
}  # fmt: skip


def eval_reference(fx, job: str) -> dict:
    full, small, name, key = EVAL_JOBS[job]

    def make():
        folder = fx.root / "refs" / f"eval-{job}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        startup = fx.run_ddpm(small, folder)
        run = fx.run_ddpm(full, folder, timeout=600)
        value = None
        if (folder / name).is_file():
            with np.load(folder / name) as data:
                value = data[key].copy()
        return {"run": run, "startup": startup.cpu, "cpu": run.cpu, "value": value}

    return fx.reference(f"eval-{job}", make)


def make_eval_kill(job: str, sig: int = signal.SIGKILL, fraction: float = 0.6):
    """Kill ``ddpm eval JOB`` when it has used ``fraction`` of an uninterrupted run's CPU time past start-up, rerun
    the same command: the result must equal the uninterrupted one, and the rerun must not redo the finished part
    (lost-work when the rerun costs more than start-up + 80 % of the uninterrupted work... scaled by how much was
    done before the kill)."""
    full, _, name, key = EVAL_JOBS[job]

    def custom(work: Path, fx):
        ref = eval_reference(fx, job)
        if ref["value"] is None:
            return "crash", f"the reference run failed: {last_line(ref['run'].stderr)}"
        startup, total = ref["startup"], ref["cpu"]
        argv = ddpm_argv(_fill(fx, full, work))
        proc = start_process(argv, work)
        started = time.monotonic()
        target = startup + fraction * max(0.0, total - startup)
        _wait(proc, lambda: cpu_seconds(proc.pid) >= target, timeout=600, poll=0.02)
        kill_group(proc, sig)
        killed = finish_process(proc, 60, started)
        sig_name = signal.Signals(sig).name
        if killed.rc == 0:
            return "ok", f"finished before the {sig_name}; nothing tested"
        if TRACEBACK in killed.stderr and sig != signal.SIGKILL:
            return "traceback", f"on {sig_name}: {traceback_evidence(killed.stderr)}"
        done = min(1.0, max(0.0, (killed.cpu - startup) / max(1e-6, total - startup)))
        rerun = run_process(argv, work, timeout=600)
        if bad := _failed(rerun, "rerun"):
            return bad
        with np.load(work / name) as data:
            value = data[key]
            same = value.shape == ref["value"].shape and np.array_equal(value, ref["value"])
        if not same:
            return "lost-work", f"the rerun's {key} differ from an uninterrupted run's"
        if tmp := _tmp_files(work):
            return "silent-wrong", f"temporary files left behind: {', '.join(tmp[:3])}"
        allowed = startup + (1.0 - 0.5 * done) * (total - startup)
        if rerun.cpu > allowed:
            return "lost-work", (
                f"{sig_name} after ~{done:.0%} of the work; the rerun restarted from zero "
                f"({rerun.cpu:.1f} s CPU, uninterrupted {total:.1f} s, start-up {startup:.1f} s)"
            )
        return "ok", f"{sig_name} after ~{done:.0%}; the rerun resumed ({rerun.cpu:.1f} s CPU of {total:.1f} s)"

    return custom


# ---------------------------------------------------------------------------------------------------------------
# Two runs, one folder; resumes with other settings
# ---------------------------------------------------------------------------------------------------------------
def make_two_trains(max_steps: int = 40, every: int = 5, after_steps: int = 2):
    """Start a second ``ddpm train`` into the folder of a running one (once the first has logged ``after_steps``
    steps; 0: both at once): the second must be refused (a clean error) and the first must end exactly as if
    alone."""

    def custom(work: Path, fx):
        ref = train_reference(fx, max_steps, every)
        out = work / "run"
        argv = ddpm_argv(_fill(fx, _train_args(max_steps, every, str(out)), work))
        first = start_process(argv, work)
        started = time.monotonic()
        if after_steps:
            _wait(first, lambda: len(_metrics_steps(out)) >= after_steps, timeout=240, poll=0.01)
        second = run_process(argv, work, timeout=300)
        first_run = finish_process(first, 300, started)
        runs = {"first": first_run, "second": second}
        for name, run in runs.items():
            if TRACEBACK in run.stderr:
                return "traceback", f"{name} run: {traceback_evidence(run.stderr)}"
            if run.timed_out or (run.rc is not None and run.rc < 0):
                return "crash", f"{name} run: exit {run.rc}{' (timed out)' if run.timed_out else ''}"
        ok = [name for name, run in runs.items() if run.rc == 0]
        if len(ok) == 2:
            return "silent-wrong", "both runs into the same folder were accepted and ran side by side"
        if not ok:
            return "lost-work", f"both runs failed: {last_line(first_run.stderr)} / {last_line(second.stderr)}"
        if bad := _compare_run(out, ref, max_steps):
            return bad
        refused = "second" if ok == ["first"] else "first"
        return "ok", f"the {refused} run was refused: {last_line(runs[refused].stderr)}"

    return custom


def _base_run(fx, work: Path, max_steps: int = 4, every: int = 2) -> Path:
    """A copy of a finished tiny run (``max_steps`` steps, checkpoints every ``every``) in ``work/run``."""
    ref = train_reference(fx, max_steps, every)
    out = work / "run"
    shutil.copytree(ref["folder"], out)
    return out


def make_changed_resume(extra: list[str], expect: str, max_steps: int = 6):
    """Resume a finished 4-step run to ``max_steps`` with ``extra`` options changed. ``expect``: ``notice`` (allowed,
    but the user must be told the run is no longer an exact continuation: a warning or a refusal), ``refuse`` (a
    clean error), ``either`` (anything clean)."""

    def custom(work: Path, fx):
        out = _base_run(fx, work)
        args = ["train", "--output-dir", str(out), "--resume", "--no-progress", "--max-steps", str(max_steps)]
        run = fx.run_ddpm(args + _fill(fx, extra, work), work, timeout=240)
        if TRACEBACK in run.stderr:
            return "traceback", traceback_evidence(run.stderr)
        if run.rc is not None and run.rc < 0:
            return "crash", f"killed by signal {-run.rc}"
        if run.rc in (1, 2):
            return "ok", f"refused: {last_line(run.stderr)}"
        if run.rc != 0:
            return "crash", f"exit {run.rc}"
        if expect == "refuse":
            return "silent-wrong", f"resumed with {' '.join(extra)} although it cannot continue the run"
        if expect == "notice" and not warned(run.stderr):
            return "silent-wrong", f"resumed with {' '.join(extra)} without a word: no longer an exact continuation"
        return "ok", "resumed" + (" with a warning" if warned(run.stderr) else "")

    return custom


def make_damaged_resume(damage: str):
    """Resume a finished 4-step run (checkpoints 2 and 4) to step 6 after damaging it: ``config`` (config.json
    deleted), ``newest`` (newest checkpoint cut short: the previous one must be used, and the result must equal an
    uninterrupted 6-step run), ``all`` (every checkpoint cut short), ``zero`` (newest checkpoint zero bytes),
    ``export`` (pipeline/ deleted, resume at the same --max-steps must re-export)."""

    def custom(work: Path, fx):
        out = _base_run(fx, work)
        ckpts = sorted((out / "checkpoints").glob("checkpoint-*.pt"))
        max_steps = 6
        if damage == "config":
            (out / "config.json").unlink()
        elif damage == "newest":
            ckpts[-1].write_bytes(ckpts[-1].read_bytes()[:4000])
        elif damage == "zero":
            ckpts[-1].write_bytes(b"")
        elif damage == "all":
            for c in ckpts:
                c.write_bytes(c.read_bytes()[:4000])
        elif damage == "export":
            shutil.rmtree(out / "pipeline")
            max_steps = 4
        resume = ["train", "--output-dir", str(out), "--resume", "--no-progress", "--max-steps", str(max_steps)]
        run = fx.run_ddpm(resume, work, timeout=240)
        if TRACEBACK in run.stderr:
            return "traceback", traceback_evidence(run.stderr)
        if run.rc is not None and run.rc < 0:
            return "crash", f"killed by signal {-run.rc}"
        if run.rc != 0:
            if damage in ("config", "all"):
                return "ok", f"refused: {last_line(run.stderr)}"
            return "lost-work", f"resume failed (exit {run.rc}): {last_line(run.stderr)}"
        if damage == "config":
            config = json.loads((out / "pipeline" / "unet" / "config.json").read_text())
            if list(config.get("block_out_channels", [])) != [8, 16]:
                return (
                    "silent-wrong",
                    f"config.json deleted: resumed as another model {config.get('block_out_channels')}",
                )
        if damage == "all" and not warned(run.stderr):
            return "silent-wrong", "every checkpoint damaged: started afresh without a word"
        if damage in ("newest", "zero", "export"):
            ref = train_reference(fx, max_steps, 2)
            if bad := _compare_run(out, ref, max_steps):
                return bad
        return "ok", "resumed" + (" with a warning" if warned(run.stderr) else "")

    return custom


# ---------------------------------------------------------------------------------------------------------------
# Caches: two archives of one file name; a FID reference file whose images changed
# ---------------------------------------------------------------------------------------------------------------
def make_archive_cache():
    """Score two different archives named ``cifar10-jpeg.tar.gz`` one after the other (one cache): the second result
    must equal the second archive scored with a fresh cache."""

    def custom(work: Path, fx):
        def nll(archive: str, cache: str, name: str) -> Run:
            env_work = work / cache
            env_work.mkdir(exist_ok=True)
            args = ["eval", "nll", "--model", "{tiny}", "--data", f"cifar10:{archive}@test", "--num-samples", "4",
                    "--t-batch", "25", "--json", str(work / name)]  # fmt: skip
            return fx.run_ddpm(args, env_work)

        for run in (
            nll("{arch_a}", "one", "a.json"),
            nll("{arch_b}", "one", "b.json"),
            nll("{arch_b}", "two", "c.json"),
        ):
            if bad := _failed(run, "eval nll"):
                return bad
        b = json.loads((work / "b.json").read_text())["total_bpd"]
        c = json.loads((work / "c.json").read_text())["total_bpd"]
        if b != c:
            return "silent-wrong", f"second archive scored from the first one's extraction cache ({b:.4f} vs {c:.4f})"
        return "ok", "each archive extracted on its own"

    return custom


def make_stale_fid_cache():
    """``eval fid S REF.npz --ref-stats C`` twice, with REF.npz's images replaced in between: the second FID must
    equal a run without the cache file (the cache must not be used for other images)."""

    def custom(work: Path, fx):
        rng = np.random.default_rng(11)
        ref = work / "ref.npz"
        np.savez(ref, images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
        base = ["eval", "fid", "{samples}", str(ref), "--method", "eigh"]
        first = fx.run_ddpm([*base, "--ref-stats", str(work / "c.npz")], work, timeout=600)
        if bad := _failed(first, "first FID"):
            return bad
        np.savez(ref, images=np.clip(rng.integers(0, 256, (12, 8, 8, 3)) // 4, 0, 255).astype(np.uint8))
        second = fx.run_ddpm([*base, "--ref-stats", str(work / "c.npz")], work, timeout=600)
        fresh = fx.run_ddpm(base, work, timeout=600)
        for run, what in ((second, "second FID"), (fresh, "FID without cache")):
            if bad := _failed(run, what):
                return bad
        a, b = last_line(second.stdout).split()[:2], last_line(fresh.stdout).split()[:2]
        if a != b:
            return "silent-wrong", f"stale reference statistics used after the images changed ({a[1]} vs {b[1]})"
        return "ok", "the changed reference was recomputed"

    return custom
