"""Generation for FID: images depend on (seed, index) only, not on the batch size, the offset or the number of
processes (torchrun on gloo with 2 CPU processes gives the same .npz as one process)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddpm
from _helpers import tiny_unet
from ddpm.evaluation.fid import source_statistics
from ddpm.evaluation.generate import generate_images, generate_to_npz, image_generators, shard_range

T = 6


@pytest.fixture(scope="module")
def pipe():
    unet = tiny_unet(1, 1)
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(num_train_timesteps=T))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folder(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("gen") / "pipe"
    pipe.save_pretrained(path)
    return path


def test_images_do_not_depend_on_batch_size_or_offset(pipe):
    a = generate_images(pipe, 5, seed=2, batch_size=2)
    b = generate_images(pipe, 5, seed=2, batch_size=5)
    assert a.shape == (5, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(generate_images(pipe, 2, seed=2, batch_size=3, start=3), a[3:5])
    one = pipe(batch_size=1, generator=image_generators(2, [4]), num_inference_steps=T, output_type="np").images
    np.testing.assert_array_equal(a[4], (one[0] * 255).round().astype(np.uint8))
    assert not np.array_equal(generate_images(pipe, 1, seed=3), a[:1])


def test_shard_ranges_cover_every_index_once():
    for n, w in ((10, 3), (5, 2), (2, 4)):
        got = [i for r in range(w) for i in shard_range(n, r, w)]
        assert got == list(range(n))


def test_generate_to_npz_single_process(pipe, tmp_path):
    out = generate_to_npz(pipe, 3, tmp_path / "s.npz", seed=1, batch_size=2)
    with np.load(out) as f:
        np.testing.assert_array_equal(f["images"], generate_images(pipe, 3, seed=1))
        assert f["indices"].tolist() == [0, 1, 2] and int(f["seed"]) == 1 and int(f["num_inference_steps"]) == T


def test_torchrun_two_processes_give_the_same_images(folder, pipe, tmp_path):
    out = tmp_path / "two.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "ddpm",
        "eval",
        "generate",
        "--model",
        str(folder),
        "--num-samples",
        "5",
        "--batch-size",
        "2",
        "--seed",
        "4",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        np.testing.assert_array_equal(f["images"], generate_images(pipe, 5, seed=4, batch_size=5))
        assert f["indices"].tolist() == list(range(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.npz"]  # shards removed


class _FakeExtractor:
    sha1 = "fake"

    def __call__(self, images, batch_size=50):
        x = torch.as_tensor(images).reshape(len(images), -1).double()
        return x[:, :6].numpy()


def test_fid_statistics_of_a_pipeline_source(folder, pipe):
    stats = source_statistics(folder, _FakeExtractor(), num_samples=4, generation={"seed": 7, "batch_size": 3})
    expected = generate_images(pipe, 4, seed=7).reshape(4, -1)[:, :6].astype(np.float64)
    np.testing.assert_allclose(stats.mu, expected.mean(0))
    assert stats.n == 4
    with pytest.raises(ValueError, match="--num-samples"):
        source_statistics(folder, _FakeExtractor())


@pytest.mark.parametrize(("sampler", "eta"), [("ddim", None), ("ddim", 1.0), ("dpm-solver++", None)])
def test_eval_generate_with_a_sampler_equals_the_pipeline(folder, tmp_path, sampler, eta):
    from ddpm.cli import main
    from ddpm.pipeline import DDPMPipeline

    argv = ["eval", "generate", "--model", str(folder), "--num-samples", "3", "--batch-size", "2"]
    argv += ["--sampler", sampler, "--num-inference-steps", "4", "--out", str(tmp_path / "s.npz")]
    argv += [] if eta is None else ["--eta", str(eta)]
    assert main(argv) == 0
    expected = DDPMPipeline.from_pretrained(folder).set_sampler(sampler, eta=eta)
    expected.set_progress_bar_config(disable=True)
    with np.load(tmp_path / "s.npz") as data:
        images = data["images"]
    np.testing.assert_array_equal(images, generate_images(expected, 3, num_inference_steps=4))
    if eta:  # eta reaches the step: other images than eta 0
        plain = DDPMPipeline.from_pretrained(folder).set_sampler(sampler)
        plain.set_progress_bar_config(disable=True)
        assert not np.array_equal(generate_images(plain, 3, num_inference_steps=4), images)
