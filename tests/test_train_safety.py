"""``ddpm train`` loses no work, never calls something bad good, and refuses bad input up front (issue #15, #17.2).

Each test reproduces one defect of the training loop as it was: a resume that left the export stale, a signal that
lost the steps since the last checkpoint, two runs in one folder, NaN weights checkpointed as "the last good
checkpoint", sizes and numbers that crashed late, temporary files left by kills.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.training import checkpoint as ckpt
from ddpm.training import run_folder
from ddpm.training import trainer as trainer_mod
from ddpm.training.config import ConfigError, resolve_config
from ddpm.training.trainer import NonFiniteLossError, Trainer, TrainingError, TrainingInterrupted
from test_train_loop import TINY_UNET, _assert_same_state, _cfg, _cli, _final, _npz


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, but the lock file (it names the last holder)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != run_folder.LOCK_NAME
    }


# ---------------------------------------------------------------------------------------------------------------
# 1. The end of a run is finished by a resume, and a rerun of a finished run changes nothing
# ---------------------------------------------------------------------------------------------------------------
def test_resume_after_a_kill_behind_the_final_checkpoint_finishes_every_output(tmp_path, monkeypatch):
    data = _npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    kw = dict(max_steps=4, checkpoint_every=2, sample_every=3, sample_steps=2, num_samples=2, log_every=2)
    real_export = trainer_mod._SampleState.export

    def killed_at_the_end(self, ema, folder):
        if ema.num_updates == 4:  # the process dies right after writing checkpoint-4
            raise KeyboardInterrupt
        return real_export(self, ema, folder)

    monkeypatch.setattr(trainer_mod._SampleState, "export", killed_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(data, out, **kw), progress=False).run()
    monkeypatch.undo()
    assert _final(out)["step"] == 4
    assert json.loads((out / "outputs.json").read_text()) == {"loss_curve": 2, "pipeline": 2, "samples": 3}
    assert not (out / "samples" / "step-000000004.png").exists()

    result = Trainer(_cfg(data, out, **kw), resume=True, progress=False).run()
    assert result.step == 4
    assert json.loads((out / "outputs.json").read_text()) == {"loss_curve": 4, "pipeline": 4, "samples": 4}
    assert (out / "samples" / "step-000000004.png").is_file()
    from ddpm import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(out / "pipeline")
    ema = _final(out)["ema"]["params"]
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())  # the final checkpoint's EMA

    before = _snapshot(out)
    time.sleep(0.01)
    assert main(["train", "--output-dir", str(out), "--resume", "--no-progress"]) == 0
    assert _snapshot(out) == before  # idempotent: nothing rewritten


def test_checkpoint_and_grid_at_the_end_when_their_intervals_exceed_max_steps_and_ddpm_json(tmp_path):
    data = _npz(tmp_path / "d.npz", channels=1)
    kw = dict(channels=1, max_steps=3, checkpoint_every=100, sample_every=100, sample_steps=2, num_samples=2)
    Trainer(_cfg(data, tmp_path / "fixed", **kw), progress=False).run()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "fixed" / "checkpoints")] == [3]
    assert (tmp_path / "fixed" / "samples" / "step-000000003.png").is_file()
    from ddpm import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(tmp_path / "fixed" / "pipeline")
    # ddpm sample --model RUN/pipeline does not fall back to the 1000-step DDPM chain
    assert (pipe.default_sampler(), pipe.default_steps()) == ("ddpm", 2)  # what the grids use
    assert pipe.default_steps("ddim") == 50 and pipe.default_steps("dpm-solver++") == 25
    learned = dict(kw, scheduler={"variance_type": "learned_range", "num_train_timesteps": 20})
    Trainer(_cfg(data, tmp_path / "learned", **learned), progress=False).run()
    pipe = DDPMPipeline.from_pretrained(tmp_path / "learned" / "pipeline")
    assert (pipe.default_sampler(), pipe.default_steps()) == ("ddpm", 2)
    assert pipe.default_steps("dpm-solver++") == 20  # capped at T
    images = pipe(batch_size=1, num_inference_steps=2, output_type="np", progress=False).images
    assert np.isfinite(images).all()


def test_grids_print_their_status_and_stay_out_of_images_per_second(tmp_path, monkeypatch, caplog):
    data = _npz(tmp_path / "d.npz")
    real_grid, real_clock = trainer_mod._SampleState.sample_grid, time.perf_counter
    offset = [0.0]

    def slow_grid(self, ema, path):
        offset[0] += 1000.0  # a grid that takes 1000 s on the clock the metrics read
        return real_grid(self, ema, path)

    monkeypatch.setattr(trainer_mod._SampleState, "sample_grid", slow_grid)
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: real_clock() + offset[0])
    cfg = _cfg(data, tmp_path / "o", max_steps=4, checkpoint_every=4, sample_every=1, log_every=2, sample_steps=1,
               num_samples=1)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="ddpm.training.trainer"):
        Trainer(cfg, progress=False).run()
    assert "step 2: drawing 1 sample images (1 denoising steps)" in caplog.text
    assert "step 2: wrote" in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    # 8 images per row; with a 1000-s grid inside the window this would be 0.008 images/s
    assert all(r["images_per_s"] > 0.1 for r in rows), [r["images_per_s"] for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# 2. SIGINT / SIGTERM: a checkpoint of the current step, the resume command, exit 130 / 143, then an exact resume
# ---------------------------------------------------------------------------------------------------------------
def test_sigterm_saves_the_current_step_and_the_resume_is_bitwise_exact(tmp_path):
    data = _npz(tmp_path / "data.npz")
    model_config = tmp_path / "unet.json"
    model_config.write_text(json.dumps(TINY_UNET))
    common = [
        "--data", str(data), "--resolution", "8", "--channels", "3", "--model-config", str(model_config),
        "--batch-size", "4", "--max-steps", "16", "--checkpoint-every", "1000", "--keep-checkpoints", "2",
        "--sample-every", "0", "--warmup-steps", "4", "--lr", "1e-3", "--dropout", "0.1", "--num-workers", "0",
        "--log-every", "1", "--no-progress", "--seed", "5",
    ]  # fmt: skip
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    stopped = _cli([*common, "--output-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and stopped.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    out, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 143, err.decode()
    step = ckpt.list_checkpoints(run_dir / "checkpoints")[0][0]
    assert 3 <= step < 16, "the run finished before the signal"
    assert f"stopped by SIGTERM at step {step}" in err.decode()
    command = out.decode().strip().splitlines()[-1]
    assert command == f"ddpm train --output-dir {run_dir} --resume"

    resumed = _cli([*command.split()[2:], "--no-progress"], stderr=subprocess.PIPE)
    # the uninterrupted reference, in this process meanwhile (one thread, as the CLI runs here)
    ref = dict(max_steps=16, checkpoint_every=1000, keep_checkpoints=2, log_every=1, seed=5, threads=1)
    Trainer(_cfg(data, ref_dir, **ref), progress=False).run()
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err.decode()
    _assert_same_state(_final(ref_dir), _final(run_dir))


def test_sigint_in_process_stops_at_a_step_boundary_with_exit_code_130(tmp_path, monkeypatch, capsys):
    data = _npz(tmp_path / "d.npz")
    real = trainer_mod.optimisation_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the 5th update's bookkeeping
        return result

    monkeypatch.setattr(trainer_mod, "optimisation_step", interrupted)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        Trainer(_cfg(data, tmp_path / "o", checkpoint_every=100, log_every=100), progress=False).run()
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert info.value.exit_code == 130 and info.value.step == 5
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "o" / "checkpoints")] == [5]

    calls["n"] = 0
    out = tmp_path / "cli"
    args = ["train", "--data", str(data), "--resolution", "8", "--output-dir", str(out), "--max-steps", "12",
            "--checkpoint-every", "100", "--sample-every", "0", "--num-workers", "0", "--no-progress"]  # fmt: skip
    model = tmp_path / "unet.json"
    model.write_text(json.dumps(TINY_UNET))
    assert main([*args, "--model-config", str(model)]) == 130
    captured = capsys.readouterr()
    assert "stopped by SIGINT at step 5" in captured.err
    assert captured.out.strip().endswith(f"ddpm train --output-dir {out} --resume")


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resumes(tmp_path):
    from test_train_distributed import _free_port

    data = _npz(tmp_path / "data.npz", n=20)
    unet = tmp_path / "unet.json"
    unet.write_text(json.dumps(TINY_UNET))
    options = dict(batch_size=8, max_steps=30, checkpoint_every=1000, warmup_steps=2, dropout=0.0, lr=1e-3)
    Trainer(_cfg(data, tmp_path / "single", **options), progress=False).run()
    args = [
        "--data", str(data), "--resolution", "8", "--model-config", str(unet), "--batch-size", "8", "--max-steps", "30",
        "--checkpoint-every", "1000", "--warmup-steps", "2", "--dropout", "0", "--lr", "1e-3", "--sample-every", "0",
        "--log-every", "2", "--num-workers", "0", "--no-progress", "--output-dir", str(tmp_path / "ddp"),
    ]  # fmt: skip

    def torchrun(extra):
        launcher = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
        port = ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
        cmd = [sys.executable, *launcher, *port, "-m", "ddpm", "train", *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    stopped = torchrun(args)
    metrics = tmp_path / "ddp" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and stopped.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    out, err = stopped.communicate(timeout=180)
    assert stopped.returncode != 0
    step = ckpt.list_checkpoints(tmp_path / "ddp" / "checkpoints")[0][0]
    assert 4 <= step < 30 and step % 2 == 0, err.decode()[-3000:]  # both ranks stopped at one log boundary
    assert err.decode().count(f"stopped by SIGTERM at step {step}") == 1  # one line, from rank 0
    assert f"torchrun --nproc_per_node 2 -m ddpm train --output-dir {tmp_path / 'ddp'} --resume" in out.decode()

    resumed = torchrun(["--output-dir", str(tmp_path / "ddp"), "--resume", "--no-progress"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-3000:]
    single, ddp = _final(tmp_path / "single"), _final(tmp_path / "ddp")
    assert ddp["step"] == single["step"] == 30
    for key in (k for k in single["model"] if not k.endswith("to_k.bias")):  # see test_train_distributed.py
        torch.testing.assert_close(ddp["model"][key], single["model"][key], rtol=1e-4, atol=1e-5, msg=key)


# ---------------------------------------------------------------------------------------------------------------
# 3. One run per folder
# ---------------------------------------------------------------------------------------------------------------
def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys):
    data = _npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ddpm.training.run_folder import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == b"locked"
        model = tmp_path / "unet.json"
        model.write_text(json.dumps(TINY_UNET))
        args = ["train", "--data", str(data), "--resolution", "8", "--model-config", str(model), "--max-steps", "1",
                "--output-dir", str(out), "--sample-every", "0", "--num-workers", "0", "--no-progress"]  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"in use by another training run (pid {holder.pid} on host" in err and len(err.splitlines()) == 1
        assert not (out / "checkpoints").exists()
    finally:
        holder.kill()  # a killed holder frees the lock: nothing to clean up by hand
        holder.wait()
    assert main(args) == 0
    with run_folder.RunLock(out):  # held in this process: a second lock (another open file) is refused too
        with pytest.raises(run_folder.RunFolderLockedError, match=f"pid {os.getpid()}"):
            run_folder.RunLock(out).acquire()


# ---------------------------------------------------------------------------------------------------------------
# 4. What exactness depends on is recorded; a resume names what changed; a deleted config.json is recovered
# ---------------------------------------------------------------------------------------------------------------
def test_resume_names_what_breaks_exactness_and_recovers_a_deleted_config(tmp_path, capsys):
    data = _npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    Trainer(_cfg(data, out, max_steps=2, checkpoint_every=2, threads=1, ema_warmup=False), progress=False).run()
    env = _final(out)["environment"]
    assert env["threads"] == 1 and env["device_type"] == "cpu" and env["torch"] == str(torch.__version__)
    assert env["data"]["size"] == 24 and env["data"]["kind"] == "array"

    other = _npz(tmp_path / "other.npz", seed=1)  # same size, other pixels
    changed = _cfg(other, out, max_steps=3, checkpoint_every=3, threads=2, ema_warmup=True)
    with pytest.warns(UserWarning) as record:
        Trainer(changed, resume=True, progress=False).run()
    text = " | ".join(str(w.message) for w in record)
    assert "CPU threads: 1 -> 2" in text and "data set contents" in text and "ema_warmup: False -> True" in text

    (out / "config.json").unlink()
    assert main(["train", "--output-dir", str(out), "--resume", "--max-steps", "4", "--no-progress"]) == 0
    assert "config.json is missing; using the config stored in" in capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == 4 and saved["threads"] == 2 and saved["model"]["block_out_channels"] == [8, 16]

    newer = _final(out)
    newer["version"] = ckpt.CHECKPOINT_VERSION + 1
    ckpt.save_checkpoint(newer, out / "checkpoints", 5, keep=5)
    with pytest.raises(TrainingError, match="version 2 checkpoint"):
        Trainer(_cfg(data, out, max_steps=6), resume=True, progress=False).run()


# ---------------------------------------------------------------------------------------------------------------
# 5. Non-finite weights are caught after the update and never saved as good
# ---------------------------------------------------------------------------------------------------------------
def test_an_update_that_makes_the_weights_nan_is_never_checkpointed(tmp_path, monkeypatch):
    data = _npz(tmp_path / "d.npz")
    real = trainer_mod.optimisation_step
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        calls["n"] += 1
        result = real(model, *args, **kwargs)
        if calls["n"] == 6:  # the update that makes step 6, whose checkpoint follows at once: its loss was fine
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return result

    monkeypatch.setattr(trainer_mod, "optimisation_step", poisoned)
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError, match=r"weights .*non-finite at step 6.*checkpoint-000000003\.pt") as info:
        Trainer(_cfg(data, out, log_every=100), progress=False).run()
    assert info.value.step == 6
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [3]
    assert all(torch.isfinite(v).all() for v in _final(out)["model"].values())


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lr", float("inf"), "lr=inf"),
        ("lr", float("nan"), "lr=nan"),
        ("lr", 0.0, "lr=0.0"),
        ("adam_beta1", 1.0, "adam_beta1=1.0"),
        ("adam_beta2", -0.1, "adam_beta2=-0.1"),
        ("adam_eps", 0.0, "adam_eps=0.0"),
        ("grad_clip", float("inf"), "grad_clip=inf"),
        ("warmup_steps", -1, "warmup_steps=-1"),
        ("ema_decay", 1.0, "ema_decay=1.0"),
        ("ema_power", float("nan"), "ema_power=nan"),
        ("seed", 10**20, "seed=100000000000000000000"),
        ("seed", -1, "seed=-1"),
        ("resolution", 100_000, r"resolution=100000.*\[1, 4096\]"),
        ("resolution", 12, "resolution=12: must be a multiple of 8"),
        ("threads", 100_000, "threads=100000"),
        ("device", "gpu", "device='gpu'"),
        ("scheduler", {"num_train_timesteps": 10**7}, "num_train_timesteps=10000000"),
        ("model", {**TINY_UNET, "norm_num_groups": 3}, "cannot be built: norm_num_groups=3 must divide"),
    ],
)
def test_numbers_and_sizes_are_checked_up_front(key, value, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(**{key: value, **({"model": TINY_UNET} if key not in ("model", "resolution") else {})})


def test_cli_refuses_bad_values_in_one_line_with_exit_code_2(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    bad_model = tmp_path / "bad-unet.json"
    bad_model.write_text(json.dumps({**TINY_UNET, "layers_per_block": 0}))
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"adam_beta1": 1.5}))
    cases = [
        (["--lr", "inf"], "--lr: inf: invalid value; allowed: a finite number in (0, 1]"),
        (["--resolution", "30"], "--resolution: 30: invalid value; allowed: a multiple of 8"),
        (["--threads", "100000"], "--threads: 100000: invalid value; allowed: an integer in [0, "),
        (["--output-dir", str(a_file)], "--output-dir: " + repr(str(a_file)) + ": it is a file, not a folder"),
        (["--model-config", str(bad_model)], "--model-config: model: this UNet2DModel config cannot be built"),
        (["--config", str(preset)], "--config (adam_beta1): 1.5: invalid value; allowed: a number in [0, 1)"),
        (["--seed", "1e20"], "argument --seed: invalid int value: '1e20'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device: 'cuda': CUDA is not available on this machine; allowed:"))
    for extra, message in cases:
        with pytest.raises(SystemExit) if extra[0] == "--seed" else _nothing() as stop:
            code = main(["train", "--data", "x", "--output-dir", str(tmp_path / "o"), *extra])
        code = stop.value.code if extra[0] == "--seed" else code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (extra, err)
        assert err[-1].startswith("ddpm train: error: ") and message in err[-1], (extra, err)
    assert not (tmp_path / "o").exists()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------------------------
# 7. Temporary files of killed writes are removed at the next start; 8. the option names of issue #17
# ---------------------------------------------------------------------------------------------------------------
def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(tmp_path):
    data = _npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    Trainer(_cfg(data, out, max_steps=2, checkpoint_every=2), progress=False).run()
    left = [
        out / ".config.json.k2j3h4.tmp",
        out / "checkpoints" / ".checkpoint-000000004.pt.abc_12.tmp",
        out / "pipeline" / "unet" / ".diffusion_pytorch_model.safetensors.q1w2e3.tmp",
    ]
    for path in left:
        path.write_bytes(b"half a file")
    mine = out / "notes.tmp"  # not a name atomic writes make
    mine.write_text("keep me")
    Trainer(_cfg(data, out, max_steps=3, checkpoint_every=3), resume=True, progress=False).run()
    assert not any(p.exists() for p in left) and mine.read_text() == "keep me"


def test_option_names_of_issue_17_and_their_old_spellings(tmp_path, capsys):
    import argparse

    from ddpm.cli.train import add_parser, resolve_from_args

    parser = argparse.ArgumentParser(prog="ddpm train")
    add_parser(parser.add_subparsers())
    base = ["train", "--data", "x", "--output-dir", str(tmp_path)]
    args = parser.parse_args([*base, "--num-inference-steps", "7", "--no-progress", "--threads", "1"])
    cfg = resolve_from_args(args)
    assert (cfg.sample_steps, cfg.threads, args.no_progress) == (7, 1, True)
    assert capsys.readouterr().err == ""
    args = parser.parse_args([*base, "--sample-steps", "9", "--quiet"])
    assert resolve_from_args(args).sample_steps == 9 and args.no_progress is True
    err = capsys.readouterr().err
    assert "--sample-steps is deprecated; use --num-inference-steps" in err
    assert "--quiet is deprecated; use --no-progress" in err
    args = parser.parse_args(base)
    assert resolve_from_args(args).sample_steps == 100 and args.no_progress is False
