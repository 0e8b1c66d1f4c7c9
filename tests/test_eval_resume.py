"""Crash-safe, resumable long evaluation (issue #15.2): ``ddpm eval generate`` and ``ddpm eval nll`` killed with
SIGKILL midway and run again give bit for bit the result of an uninterrupted run; a rerun with other settings is
refused naming the setting; the work folder's pieces (manifest, shards, the streamed .npz) on their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm
from _helpers import tiny_unet
from ddpm.cli import main
from ddpm.evaluation.generate import generate_images, generate_to_npz
from ddpm.evaluation.nll_runs import bound_over_images
from ddpm.evaluation.partial import (
    SettingsMismatchError,
    WorkFolder,
    npz_array_shape,
    sha256_of_state_dict,
    write_npz_streaming,
)

T = 6

# Runs ddpm.cli.main in a subprocess with every batch slowed down (pipeline call or bound), so that the test can kill
# it between batches without racing a fast machine.
DRIVER = """
import sys, time
delay = float(sys.argv[1])
import ddpm.pipeline as P
import ddpm.evaluation.nll as N
call, bound = P.DDPMPipeline.__call__, N.variational_bound
def slow_call(self, *a, **k):
    out = call(self, *a, **k)
    time.sleep(delay)
    return out
def slow_bound(*a, **k):
    out = bound(*a, **k)
    time.sleep(delay)
    return out
P.DDPMPipeline.__call__ = slow_call
N.variational_bound = slow_bound
from ddpm.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    p = ddpm.DDPMPipeline(tiny_unet(3, 3), ddpm.DDPMScheduler(num_train_timesteps=T))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def folder(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("pipe") / "pipe"
    pipe.save_pretrained(path)
    data = tmp_path_factory.mktemp("data") / "images.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8))
    return path, data


def _kill_after(argv: list[str], work: Path, prefix: str, shards: int, tmp_path: Path) -> None:
    """Start ``ddpm ARGV`` slowed down, SIGKILL it once ``work`` holds ``shards`` shard files."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(driver), "0.4", *argv], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while len(list(work.glob(f"{prefix}-*.npz"))) < shards:
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no shards written in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_generate_killed_midway_then_rerun_equals_an_uninterrupted_run(folder, tmp_path, capsys):
    model, _ = folder
    out = tmp_path / "s.npz"
    work = tmp_path / "s.npz.partial"
    argv = ["eval", "generate", "--model", str(model), "--num-samples", "9", "--batch-size", "2", "--seed", "3"]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress"]
    _kill_after(argv, work, "images", 2, tmp_path)
    assert not out.exists() and (work / "manifest.json").is_file()
    held = sorted(p.name for p in work.glob("images-*.npz"))
    assert 2 <= len(held) < 5 and held[0] == "images-0000000000-0000000002.npz"

    # other settings: refused, naming the setting, and the finished batches are kept
    for extra, setting in ((["--seed", "4"], "seed 3 there, 4 now"), (["--num-inference-steps", "3"], "steps 6")):
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and setting in err and str(work) in err
    assert sorted(p.name for p in work.glob("images-*.npz")) == held

    assert main([*argv[:-1]]) == 0  # same settings (with progress): continues
    assert f"continuing the run in {work}: {2 * len(held)}/9 images done" in capsys.readouterr().err
    assert not work.exists()
    assert main([*argv[:-3], "--out", str(tmp_path / "whole.npz")]) == 0  # uninterrupted
    with np.load(out) as a, np.load(tmp_path / "whole.npz") as b:
        assert set(a.files) == {"images", "indices", "seed", "num_inference_steps"}
        assert a["images"].shape == (9, 8, 8, 3)
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["indices"], np.arange(9))
        assert int(a["seed"]) == 3 and int(a["num_inference_steps"]) == T


@pytest.mark.slow  # about 15 s (a subprocess); the resume itself is also tested in-process below
def test_nll_killed_midway_then_rerun_equals_an_uninterrupted_run(folder, tmp_path, capsys):
    model, data = folder
    out = tmp_path / "b.npz"
    work = tmp_path / "b.npz.partial"
    argv = ["eval", "nll", "--model", str(model), "--data", str(data), "--num-samples", "all", "--batch-size", "2"]
    argv += ["--device", "cpu", "--no-progress", "--out", str(out)]
    _kill_after(argv, work, "bound", 1, tmp_path)
    assert not out.exists() and (work / "manifest.json").is_file()
    assert main([*argv, "--no-clip"]) == 1
    assert "clip_denoised true there, false now" in capsys.readouterr().err
    assert main(argv) == 0
    assert not work.exists()
    assert main([*argv[:-1], str(tmp_path / "whole.npz")]) == 0
    with np.load(out) as a, np.load(tmp_path / "whole.npz") as b:
        assert a["terms_bpd"].shape == (7, T)
        for key in ("total_bpd", "terms_bpd", "mse", "eps_mse", "prior_bpd", "decoder_bpd"):
            np.testing.assert_array_equal(a[key], b[key])


def test_work_folder_mixes_batch_sizes_and_ignores_torn_files(pipe, tmp_path):
    plain = generate_images(pipe, 7, seed=1, batch_size=3)
    work = tmp_path / "w"
    # a first run (batch 2) stopped after images 0..3, then a rerun with batch 3 that also stopped
    generate_images(pipe, 4, seed=1, batch_size=2, work_dir=work, keep_work_dir=True)
    folder = WorkFolder(work, {}, "images")
    assert [(a, b) for a, b, _ in folder.shards()] == [(0, 2), (2, 4)]
    (work / ".images-0000000004-0000000007.npz.123.tmp").write_bytes(b"torn")  # a kill during a write
    # the rerun with another count is another run (num_samples is a setting)
    with pytest.raises(SettingsMismatchError, match="num_samples 4 there, 7 now"):
        generate_images(pipe, 7, seed=1, batch_size=3, work_dir=work)
    resumed = generate_images(pipe, 4, seed=1, batch_size=3, work_dir=work)
    np.testing.assert_array_equal(resumed, plain[:4])
    assert not work.exists()

    # overlapping shards of two batch sizes: read back in index order
    folder = WorkFolder(tmp_path / "o", {"k": 1}).open()
    folder.save(0, {"images": plain[0:3]})
    folder.save(2, {"images": plain[2:6]})
    assert folder.missing(0, 7) == [range(6, 7)] and folder.done(0, 7) == 6
    with pytest.raises(RuntimeError, match="no results for images 6..6"):
        folder.read(0, 7, ["images"])
    folder.save(6, {"images": plain[6:7]})
    np.testing.assert_array_equal(folder.read(0, 7, ["images"])["images"], plain)
    np.testing.assert_array_equal(folder.read(1, 5, ["images"])["images"], plain[1:5])
    assert not list((tmp_path / "o").glob(".*.tmp"))
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest == {"format": 1, "k": 1}
    with pytest.raises(SettingsMismatchError, match="k 1 there, 2 now"):
        WorkFolder(tmp_path / "o", {"k": 2}).open()
    with pytest.raises(SettingsMismatchError, match="k 1 there, \\(none\\) now"):
        WorkFolder(tmp_path / "o", {}).open()


def test_generate_to_npz_settings_are_the_models_and_the_samplers(folder, tmp_path):
    model, _ = folder
    from ddpm.pipeline import DDPMPipeline

    a = DDPMPipeline.from_pretrained(model)
    work = tmp_path / "s.npz.partial"
    # leave a work folder of a run with the same settings but other weights: refused, naming the model
    other = DDPMPipeline.from_pretrained(model)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    generate_images(other, 2, seed=0, batch_size=1, work_dir=work, keep_work_dir=True)
    with pytest.raises(SettingsMismatchError, match="model "):
        generate_to_npz(a, 2, tmp_path / "s.npz", seed=0, batch_size=1)
    p, out = tmp_path / "p", tmp_path / "p.npz"
    generate_images(a, 1, work_dir=p, keep_work_dir=True)
    with pytest.raises(SettingsMismatchError, match='sampler "ddpm" there, "ddim" now'):
        generate_to_npz(DDPMPipeline.from_pretrained(model).set_sampler("ddim"), 1, out, work_dir=p)
    with pytest.raises(SettingsMismatchError, match="num_inference_steps 6 there, 3 now"):
        generate_to_npz(a, 1, out, num_inference_steps=3, work_dir=p)
    with pytest.raises(SettingsMismatchError, match="seed 0 there, 1 now"):
        generate_to_npz(a, 1, out, seed=1, work_dir=p)
    assert generate_to_npz(a, 1, out, work_dir=p) == out and not p.exists() and out.is_file()
    assert sha256_of_state_dict(a.unet) != sha256_of_state_dict(other.unet)
    ddim = generate_images(DDPMPipeline.from_pretrained(model).set_sampler("ddim"), 1, work_dir=tmp_path / "d")
    ddim1 = DDPMPipeline.from_pretrained(model).set_sampler("ddim", eta=1.0)
    generate_images(ddim1, 1, work_dir=tmp_path / "d", keep_work_dir=True)
    with pytest.raises(SettingsMismatchError, match="eta 1.0 there, \\(none\\) now"):
        generate_images(DDPMPipeline.from_pretrained(model).set_sampler("ddim"), 1, work_dir=tmp_path / "d")
    assert ddim.shape == (1, 8, 8, 3)


def test_streamed_npz_is_what_savez_writes(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    path = write_npz_streaming(
        tmp_path / "a.npz", "images", images.shape, np.uint8, [images[:2], images[2:]], {"seed": np.int64(3)}
    )
    assert npz_array_shape(path, "images") == (5, 4, 4, 3)
    with np.load(path) as f:
        np.testing.assert_array_equal(f["images"], images)
        assert int(f["seed"]) == 3
    with pytest.raises(RuntimeError, match="4 rows written, 5 expected"):
        write_npz_streaming(tmp_path / "b.npz", "images", images.shape, np.uint8, [images[:4]])
    assert not (tmp_path / "b.npz").exists() and not list(tmp_path.glob(".*.tmp"))


def test_bound_over_images_resumes(pipe, tmp_path):
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8))
    plain = bound_over_images(pipe.unet, pipe.scheduler, x, seed=2, batch_size=2)
    work = tmp_path / "w"
    bound_over_images(pipe.unet, pipe.scheduler, x[:5], seed=2, batch_size=2, work_dir=work, keep_work_dir=True)
    (work / "bound-0000000004-0000000005.npz").unlink()  # as if killed before the last batch
    calls = []
    original = ddpm.evaluation.nll.variational_bound

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return original(*args, **kwargs)

    ddpm.evaluation.nll.variational_bound = counting
    try:
        resumed = bound_over_images(pipe.unet, pipe.scheduler, x, seed=2, batch_size=2, work_dir=work)
    finally:
        ddpm.evaluation.nll.variational_bound = original
    assert calls == [1] and not work.exists()
    for key, value in plain.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0)
    # other images are another run
    bound_over_images(pipe.unet, pipe.scheduler, x[:2], seed=2, work_dir=work, keep_work_dir=True)
    with pytest.raises(SettingsMismatchError, match="images"):
        bound_over_images(pipe.unet, pipe.scheduler, x[1:3], seed=2, work_dir=work)


@pytest.mark.slow  # about 20 s: two torchrun processes
def test_torchrun_continues_a_run_started_by_one_process(folder, pipe, tmp_path):
    model, _ = folder
    out = tmp_path / "two.npz"
    from ddpm.pipeline import DDPMPipeline

    one = DDPMPipeline.from_pretrained(model)
    one.set_progress_bar_config(disable=True)
    # one process finished images 0..2 (batch 3) and was stopped; two processes (batch 2) finish the run
    generate_images(one, 3, seed=4, batch_size=3, work_dir=tmp_path / "two.npz.partial", keep_work_dir=True)
    manifest = tmp_path / "two.npz.partial" / "manifest.json"
    settings = json.loads(manifest.read_text())
    settings["num_samples"] = 7  # the whole run's count (generate_images recorded its own)
    manifest.write_text(json.dumps(settings))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ddpm"]
    cmd += ["eval", "generate", "--model", str(model), "--num-samples", "7", "--batch-size", "2", "--seed", "4"]
    cmd += ["--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        np.testing.assert_array_equal(f["images"], generate_images(one, 7, seed=4, batch_size=7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.npz"]


class _FakeExtractor:
    """Stands in for the Inception network: the first six pixel values as features."""

    sha1 = "fake"

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, images, batch_size=50):
        return torch.as_tensor(np.asarray(images)).reshape(len(images), -1)[:, :6].double().numpy()


def test_fid_of_a_pipeline_resumes_its_generation(folder, tmp_path, monkeypatch, capsys):
    import ddpm.evaluation.inception as inception

    model, data = folder
    work = tmp_path / "w"
    common = ["eval", "fid", str(model), str(data), "--num-samples", "5", "--gen-batch-size", "2", "--seed", "1"]
    argv = [*common, "--work-dir", str(work), "--device", "cpu", "--json", str(tmp_path / "r.json")]

    class Crash(_FakeExtractor):
        def __call__(self, images, batch_size=50):
            raise RuntimeError("killed while computing features")

    monkeypatch.setattr(inception, "InceptionFeatureExtractor", Crash)
    assert main(argv) == 1
    assert len(list(work.glob("images-*.npz"))) == 3  # the samples survive a failure after generation
    capsys.readouterr()
    monkeypatch.setattr(inception, "InceptionFeatureExtractor", _FakeExtractor)
    assert main(argv) == 0
    assert f"continuing the run in {work}: 5/5 images done" in capsys.readouterr().err
    assert not work.exists()
    first = json.loads((tmp_path / "r.json").read_text())["fid"]
    monkeypatch.chdir(tmp_path)
    assert main(common) == 0  # the default work folder (in the current folder), no crash
    assert first == pytest.approx(float(capsys.readouterr().out.split()[1]), abs=1e-4)
    assert not list(tmp_path.glob("ddpm-fid-samples-*.partial"))


def test_inception_score_of_a_pipeline_takes_the_sampler(folder, tmp_path, monkeypatch, capsys):
    import ddpm.evaluation.inception_score as inception_score

    class Logits:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, images, batch_size=50):
            return torch.as_tensor(np.asarray(images)).reshape(len(images), -1)[:, :8].double()

    monkeypatch.setattr(inception_score, "InceptionLogits", Logits)
    model, _ = folder
    net = tmp_path / "net.pt"
    net.write_bytes(b"")
    argv = ["eval", "is", str(model), "--num-samples", "4", "--splits", "2", "--inception-logits", str(net)]
    assert main([*argv, "--sampler", "ddim", "--num-inference-steps", "3", "--work-dir", str(tmp_path / "w")]) == 0
    assert "IS " in capsys.readouterr().out and not (tmp_path / "w").exists()
