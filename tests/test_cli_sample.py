"""``ddpm sample``, run in-process through ``ddpm.cli.main`` with a tiny pipeline folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from ddpm import pipeline as ddpm_pipeline
from ddpm.cli import main

TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8,),
    layers_per_block=1,
    down_block_types=("DownBlock2D",),
    up_block_types=("UpBlock2D",),
    norm_num_groups=4,
    add_attention=False,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    unet = ddpm.UNet2DModel(**TINY_UNET)
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(num_train_timesteps=50))
    pipe.recommended_num_inference_steps = 4
    folder = tmp_path_factory.mktemp("model") / "pipe"
    pipe.save_pretrained(folder)
    return folder


def sample(model, *args):
    return main(["sample", "--model", str(model), "--no-progress", *args])


def test_png_grid(model, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert sample(model, "--num-samples", "5", "--batch-size", "2", "--scale", "1", "--out", str(out)) == 0
    grid = Image.open(out)
    # 5 images -> 3 columns x 2 rows of 8x8 tiles with 2 px padding (--scale 1: the raw pixels)
    assert grid.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2) and grid.mode == "RGB"
    err = capsys.readouterr().err
    assert "wrote" in err and "4 steps" in err  # the model's recommended steps (ddpm.json)


def test_folder_npz_and_batch_size_invariance(model, tmp_path):
    three = ["--num-samples", "3", "--seed", "7"]
    assert sample(model, *three, "--batch-size", "3", "--out", str(tmp_path / "a.npz")) == 0
    assert sample(model, *three, "--batch-size", "2", "--out", str(tmp_path / "imgs")) == 0
    with np.load(tmp_path / "a.npz") as data:
        images = data["images"]
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    files = sorted(p.name for p in (tmp_path / "imgs").iterdir())
    assert files == ["000000.png", "000001.png", "000002.png"]
    for i, name in enumerate(files):
        diff = np.abs(np.asarray(Image.open(tmp_path / "imgs" / name), dtype=int) - images[i].astype(int)).max()
        assert diff <= 1  # batch size 3 vs 2: same noise; float rounding may differ by one level at most
    # another seed, other images; explicit --steps is used
    assert sample(model, "--num-samples", "1", "--seed", "8", "--steps", "2", "--out", str(tmp_path / "b.npz")) == 0
    with np.load(tmp_path / "b.npz") as data:
        assert not np.array_equal(data["images"][0], images[0])


def test_same_as_the_library(model, tmp_path):
    assert sample(model, "--num-samples", "2", "--seed", "3", "--out", str(tmp_path / "c.npz")) == 0
    pipe = ddpm.DDPMPipeline.from_pretrained(model)
    expected = pipe(
        batch_size=2,
        generator=ddpm_pipeline.image_generators(3, range(2)),
        num_inference_steps=4,
        output_type="np",
        progress=False,
    ).images
    with np.load(tmp_path / "c.npz") as data:
        np.testing.assert_array_equal(data["images"], (expected * 255).round().astype(np.uint8))


def test_speed_options_same_images(model, tmp_path, capsys):
    """--channels-last off (the reference NCHW path) and on give the same images; the summary names the settings."""
    common = ["--num-samples", "2", "--seed", "5", "--compile", "off"]
    assert sample(model, *common, "--channels-last", "off", "--out", str(tmp_path / "a.npz")) == 0
    assert "compiled" not in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        assert sample(model, *common, "--channels-last", "on", "--threads", "1", "--out", str(tmp_path / "b.npz")) == 0
    finally:
        torch.set_num_threads(threads)
    assert "1 thread(s), channels-last" in capsys.readouterr().err
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--num-inference-steps", "0"], "--num-inference-steps must be >= 1"),
        (["--num-inference-steps", "51"], "--num-inference-steps must be <= 50"),
        (["--eta", "-1"], "--eta must be a finite number >= 0"),
        (["--eta", "nan"], "--eta must be a finite number >= 0"),
        (["--sampler", "ddpm", "--eta", "0.5"], "--eta applies to --sampler ddim / analytic-ddim only"),
        (["--sampler", "analytic-ddpm"], "ddpm analytic-dpm"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--out", "x.jpg"], "--out must end in .png or .npz"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_bad_options_print_one_line(model, tmp_path, capsys, args, match):
    assert sample(model, *args) != 0
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err


def test_old_steps_spelling_still_works_with_a_warning(model, tmp_path, capsys):
    assert sample(model, "--num-samples", "1", "--steps", "2", "--out", str(tmp_path / "a.npz")) == 0
    err = capsys.readouterr().err
    assert "--steps is deprecated; use --num-inference-steps" in err and "ddpm 2 steps" in err
    assert sample(model, "--steps", "0") == 2
    assert "--num-inference-steps must be >= 1" in capsys.readouterr().err


def test_missing_model_and_no_bundled_model(tmp_path, capsys, monkeypatch):
    assert main(["sample", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddpm sample: error:") and "\n" not in err
    assert main(["sample", "--model", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 1
    assert "model_index.json" in capsys.readouterr().err

    def no_bundle():
        raise ddpm_pipeline.NoBundledModelError("no model is bundled with this version of ddpm yet")

    monkeypatch.setattr(ddpm_pipeline, "bundled_model_path", no_bundle)
    assert main(["sample", "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no model is bundled" in err and "--model" in err and "\n" not in err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 16)", "(default: 0)", "(default: auto)", "(default: float32)", "(default: samples.png)"):
        assert default in text, default


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--dtype", "float8"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_progress_bar_on_stderr(model, tmp_path, capsys):
    assert main(["sample", "--model", str(model), "--num-samples", "2", "--out", str(tmp_path / "p.npz")]) == 0
    assert "4/4" in capsys.readouterr().err


def test_index_json_is_untouched_by_sampling(model):
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"


def test_default_steps_without_ddpm_json(tmp_path, capsys):
    torch.manual_seed(0)
    pipe = ddpm.DDPMPipeline(ddpm.UNet2DModel(**TINY_UNET), ddpm.DDPMScheduler(num_train_timesteps=30))
    pipe.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "pipe" / "ddpm.json").exists()
    assert sample(tmp_path / "pipe", "--num-samples", "1", "--out", str(tmp_path / "o.npz")) == 0
    assert "30 steps" in capsys.readouterr().err  # min(1000, num_train_timesteps)
