"""``ddpm export`` and ``ddpm sample --model CHECKPOINT --weights``: pipelines from training checkpoints with their
EMA or raw weights, written atomically; the training grids' ``grid_weights`` (issue #17)."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import DDPMPipeline
from ddpm.cli import main
from ddpm.training import checkpoint as ckpt
from ddpm.training import export
from ddpm.training.config import resolve_config
from ddpm.training.trainer import Trainer

TINY_UNET = {
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
ROOT = Path(__file__).resolve().parents[1]
RECOMMENDED = {  # what the grids use (ddpm, sample_steps), plus the few-step samplers' steps
    "sampler": "ddpm",
    "num_inference_steps": 3,
    "num_inference_steps_by_sampler": {"ddpm": 3, "ddim": 50, "dpm-solver++": 25},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step run without EMA warm-up (decay 0.9: EMA and raw weights differ clearly), grids of both weights."""
    tmp = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    np.savez(tmp / "data.npz", images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    cfg = resolve_config(
        data=str(tmp / "data.npz"), resolution=8, channels=3, model=TINY_UNET, batch_size=4, max_steps=4,
        checkpoint_every=2, keep_checkpoints=3, sample_every=4, sample_steps=3, num_samples=4, warmup_steps=1,
        log_every=2, num_workers=0, dropout=0.0, lr=1e-2, ema_decay=0.9, ema_warmup=False, grid_weights="both",
        output_dir=str(tmp / "run"),
    )  # fmt: skip
    logger = logging.getLogger("ddpm.training.trainer")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        Trainer(cfg, progress=False).run()
    finally:
        logger.removeHandler(handler)
    return tmp / "run", [r.getMessage() for r in records]


def _export(args, capsys):
    code = main(["export", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def _one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpm "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def test_grids_of_both_weights_and_the_young_ema_note(run):
    folder, messages = run
    names = sorted(p.name for p in (folder / "samples").iterdir())
    assert names == ["step-000000004-raw.png", "step-000000004.png"]
    with (
        Image.open(folder / "samples/step-000000004.png") as a,
        Image.open(folder / "samples/step-000000004-raw.png") as b,
    ):
        assert not np.array_equal(np.asarray(a), np.asarray(b))
    # decay 0.9, no warm-up: 0.9 ** 2 = 81 % of the initialisation at the first export (step 2); said once
    notes = [m for m in messages if "random initial weights" in m]
    assert len(notes) == 1 and "81%" in notes[0] and "--grid-weights raw|both" in notes[0]
    # the training export recommends DDIM at 50 steps (measured better than DDPM at 100 on the bundled model)
    assert json.loads((folder / "pipeline/ddpm.json").read_text()) == RECOMMENDED


def test_export_ema_and_raw_hold_the_checkpoint_weights(run, tmp_path, capsys):
    folder, _ = run
    state, newest = ckpt.load_latest_checkpoint(folder / "checkpoints")
    assert state["ema"]["warmup"] is False
    pipes = {}
    for weights in ("ema", "raw"):
        out = tmp_path / weights
        code, err = _export(["--checkpoint", folder, "--weights", weights, "--out", out], capsys)
        assert code == 0, err
        assert f"{weights} weights of step 4 from {newest}" in err
        assert sorted(p.name for p in out.iterdir()) == ["ddpm.json", "model_index.json", "scheduler", "unet"]
        assert json.loads((out / "ddpm.json").read_text()) == RECOMMENDED
        pipes[weights] = DDPMPipeline.from_pretrained(out)
        assert pipes[weights].default_sampler() == "ddpm" and pipes[weights].default_steps() == 3
    expected = {"ema": state["ema"]["params"], "raw": state["model"]}
    for weights, pipe in pipes.items():
        for key, value in pipe.unet.state_dict().items():
            assert torch.equal(value, expected[weights][key]), (weights, key)
    differ = [
        k for k, v in pipes["ema"].unet.state_dict().items() if not torch.equal(v, pipes["raw"].unet.state_dict()[k])
    ]
    assert differ  # the two sets are not the same weights
    # the run's own pipeline/ is the EMA export of its newest checkpoint, byte for byte
    for name in ("unet/diffusion_pytorch_model.safetensors", "unet/config.json", "scheduler/scheduler_config.json"):
        assert (tmp_path / "ema" / name).read_bytes() == (folder / "pipeline" / name).read_bytes(), name
    # an older checkpoint file by name
    older = ckpt.checkpoint_path(folder / "checkpoints", 2)
    code, err = _export(["--checkpoint", older, "--out", tmp_path / "old"], capsys)
    assert code == 0 and "ema weights of step 2" in err
    old = DDPMPipeline.from_pretrained(tmp_path / "old")
    assert not torch.equal(old.unet.conv_in.weight, pipes["ema"].unet.conv_in.weight)


def test_export_samples_as_the_checkpoint_and_loads_in_diffusers(run, tmp_path, capsys):
    folder, _ = run
    out = tmp_path / "raw"
    assert _export(["--checkpoint", folder, "--weights", "raw", "--out", out], capsys)[0] == 0
    ours = DDPMPipeline.from_pretrained(out)
    direct = export.pipeline_from_checkpoint(export.load_training_checkpoint(folder), "raw")

    def draw(pipe):
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=4, output_type="np")

    a, b = draw(ours).images, draw(direct).images
    np.testing.assert_array_equal(a, b)
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMPipeline.from_pretrained(out)
    np.testing.assert_allclose(draw(theirs).images, a, atol=2e-5, rtol=0)

    # the CLI: sampling the run folder with --weights raw gives the export's images, bit for bit
    common = ["--num-inference-steps", "3", "--seed", "5", "--no-progress", "--device", "cpu"]
    assert main(["sample", "--model", str(folder), "--weights", "raw", *common, "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["sample", "--model", str(out), *common, "--out", str(tmp_path / "b.npz")]) == 0
    assert main(["sample", "--model", str(folder), *common, "--out", str(tmp_path / "ema.npz")]) == 0
    capsys.readouterr()
    images = {k: np.load(tmp_path / f"{k}.npz")["images"] for k in ("a", "b", "ema")}
    np.testing.assert_array_equal(images["a"], images["b"])
    assert not np.array_equal(images["a"], images["ema"])  # the default for a checkpoint: the EMA weights


def test_sample_from_a_checkpoint_file_notes_a_young_ema(run, tmp_path, capsys):
    folder, _ = run
    path = ckpt.checkpoint_path(folder / "checkpoints", 2)
    args = ["sample", "--model", str(path), "--num-inference-steps", "2", "--no-progress", "--out"]
    assert main([*args, str(tmp_path / "s.png")]) == 0
    err = capsys.readouterr().err
    assert "81% of the random initial weights at step 2" in err  # 0.9 ** 2
    assert main([*args, str(tmp_path / "r.png"), "--weights", "raw"]) == 0
    assert "random initial" not in capsys.readouterr().err


def test_weights_on_a_pipeline_folder_is_an_error(run, capsys):
    folder, _ = run
    for model in (str(folder / "pipeline"), None):
        argv = ["sample", "--weights", "raw", "--out", "x.png"] + (["--model", model] if model else [])
        assert main(argv) == 2
        _one_error_line(capsys.readouterr().err, "--weights raw", "one set of weights")


def test_bad_checkpoints_give_one_line_and_exit_2(run, tmp_path, capsys):
    folder, _ = run
    (tmp_path / "empty").mkdir()
    torch.save({"model": {}}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    data = ckpt.checkpoint_path(folder / "checkpoints", 4).read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "foreign.pt").write_bytes(ckpt.encode({"format": "something-else", "step": 1}))
    cases = {
        tmp_path / "missing": "no such file or folder",
        tmp_path / "empty": "no checkpoint-<step>.pt files",
        tmp_path / "other.pt": "not a ddpm training checkpoint",
        tmp_path / "text.pt": "too short to be a checkpoint",
        tmp_path / "torn.pt": "no checkpoint trailer",
        tmp_path / "foreign.pt": "not a ddpm training checkpoint",
        folder / "pipeline": "is a pipeline folder",
    }
    for path, reason in cases.items():
        code, err = _export(["--checkpoint", path, "--out", tmp_path / "out"], capsys)
        assert code == 2, (path, err)
        _one_error_line(err, "ddpm export: error: --checkpoint:", reason)
        assert not (tmp_path / "out").exists()
    code = main(["sample", "--model", str(tmp_path / "other.pt"), "--out", str(tmp_path / "s.png")])
    assert code == 2
    _one_error_line(capsys.readouterr().err, "ddpm sample: error: --model:", "not a ddpm training checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(folder), "--weights", "mean", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_out_folder_rules_and_overwrite(run, tmp_path, capsys):
    folder, _ = run
    out = tmp_path / "out"
    (tmp_path / "file").write_text("x")
    code, err = _export(["--checkpoint", folder, "--out", tmp_path / "file"], capsys)
    assert code == 2
    _one_error_line(err, "--out:", "is a file")
    out.mkdir()  # an empty folder is fine
    assert _export(["--checkpoint", folder, "--out", out], capsys)[0] == 0
    before = (out / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    code, err = _export(["--checkpoint", folder, "--weights", "raw", "--out", out], capsys)
    assert code == 2
    _one_error_line(err, "--out:", "is not empty; pass --overwrite")
    assert (out / "unet/diffusion_pytorch_model.safetensors").read_bytes() == before
    assert _export(["--checkpoint", folder, "--weights", "raw", "--out", out, "--overwrite"], capsys)[0] == 0
    assert (out / "unet/diffusion_pytorch_model.safetensors").read_bytes() != before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, err = _export(["--checkpoint", folder, "--out", mine, "--overwrite"], capsys)
    assert code == 2
    _one_error_line(err, "is not a pipeline folder", "never replaced")
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine", "out"]  # no temporary folders left


def test_a_failed_write_leaves_no_folder_and_keeps_the_old_one(run, tmp_path, monkeypatch):
    folder, _ = run
    pipe = export.pipeline_from_checkpoint(export.load_training_checkpoint(folder), "ema")
    real = DDPMPipeline.save_pretrained

    def failing(self, directory, **kwargs):
        self.unet.save_pretrained(Path(directory) / "unet")  # half a folder, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", failing)
    with pytest.raises(OSError, match="No space"):
        export.save_pipeline_folder(pipe, tmp_path / "new")
    assert sorted(tmp_path.iterdir()) == []
    monkeypatch.setattr(DDPMPipeline, "save_pretrained", real)
    export.save_pipeline_folder(pipe, tmp_path / "old")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    monkeypatch.setattr(DDPMPipeline, "save_pretrained", failing)
    with pytest.raises(OSError, match="No space"):
        export.save_pipeline_folder(pipe, tmp_path / "old", overwrite=True)
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_kill_while_exporting_leaves_no_half_written_folder(run, tmp_path):
    folder, _ = run
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from ddpm import DDPMPipeline
        from ddpm.cli import main

        def killed(self, directory, **kwargs):
            self.unet.save_pretrained(Path(directory) / "unet")
            os.kill(os.getpid(), signal.SIGKILL)

        DDPMPipeline.save_pretrained = killed
        main(["export", "--checkpoint", {str(folder)!r}, "--out", {str(tmp_path / "out")!r}])
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not (tmp_path / "out").exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".out.") and leftovers[0].endswith(".tmp")
