"""The paper's figures on a tiny random UNet with a short chain: files of the right size, and the property each
figure rests on."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from _helpers import tiny_unet
from ddpm.cli import main
from ddpm.evaluation.figures import (
    interpolate,
    progressive_generation,
    rate_distortion,
    shared_latent_samples,
    write_rate_distortion,
)
from ddpm.evaluation.generate import image_generators, reverse_process

T = 12
RAW = ("--scale", "1", "--no-labels")  # the raw grid, whose size and pixels these tests check


def _pipeline(variance_type="fixed_small"):
    unet = tiny_unet(3, 3)
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(num_train_timesteps=T, variance_type=variance_type))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return _pipeline()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("pipe") / "pipe"
    pipe.save_pretrained(path)
    data = tmp_path_factory.mktemp("data") / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    return path, data


def _size(path):
    with Image.open(path) as im:
        return im.size


def test_progressive_generation_ends_at_the_sample(pipe, folder, tmp_path):
    frames, timesteps = progressive_generation(pipe, num_images=2, every=4, seed=3)
    assert timesteps == [11, 7, 3, 0] and frames.shape == (2, 4, 8, 8, 3) and frames.dtype == np.uint8
    final = pipe(batch_size=2, generator=image_generators(3, range(2)), num_inference_steps=T, output_type="np")
    np.testing.assert_array_equal(frames[:, -1], (final.images * 255).round().astype(np.uint8))
    assert not np.array_equal(frames[:, 0], frames[:, -1])  # x̂_0 changes along the chain
    out = tmp_path / "prog.png"
    assert (
        main(
            [
                "eval",
                "progressive",
                "--model",
                str(folder[0]),
                "--num-samples",
                "2",
                "--every",
                "4",
                "--seed",
                "3",
                "--out",
                str(out),
                *RAW,
            ]
        )
        == 0
    )
    assert _size(out) == (4 * 8 + 5 * 2, 2 * 8 + 3 * 2)
    grid = np.asarray(Image.open(out))
    np.testing.assert_array_equal(grid[2:10, 2 + 3 * 10 : 10 + 3 * 10], frames[0, -1])


def test_shared_latent_rows(pipe, folder, tmp_path):
    rows = shared_latent_samples(pipe.unet, pipe.scheduler, timesteps=(11, 5, 0), num_samples=3, seed=1)
    assert [t for t, _, _ in rows] == [11, 5, 0]
    for t, x_t, samples in rows:
        assert x_t.shape == (1, 8, 8, 3) and samples.shape == (3, 8, 8, 3)
        distinct = len({s.tobytes() for s in samples})
        # From our t = 0 (the paper's x_1) the last step adds no noise: every sample is the same.
        assert distinct == (1 if t == 0 else 3)
    # Encoding a real image instead: x_t near the image for small t.
    x0 = torch.zeros(1, 3, 8, 8)
    rows = shared_latent_samples(pipe.unet, pipe.scheduler, timesteps=(0,), num_samples=2, x0=x0)
    assert np.abs(rows[0][1].astype(int) - 128).max() < 8
    out = tmp_path / "shared.png"
    assert (
        main(["eval", "shared-latent", "--model", str(folder[0]), "--num-samples", "2", "--out", str(out), *RAW]) == 0
    )
    # default timesteps: the paper's 1000, 750, 500, 250 scaled to T = 12 -> 11, 8, 5, 2; columns x_t + 2 samples
    assert _size(out) == (3 * 8 + 4 * 2, 4 * 8 + 5 * 2)


def test_interpolation_endpoints_are_the_reconstructions(pipe, folder, tmp_path):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(0, 256, (1, 3, 8, 8), generator=g, dtype=torch.uint8) for _ in range(2))
    lambdas = (0.0, 0.5, 1.0)
    mixed = interpolate(pipe.unet, pipe.scheduler, a, b, t=6, lambdas=lambdas, seed=5)
    assert mixed.shape == (3, 8, 8, 3)

    def reconstruct(x):
        x = x.float() / 127.5 - 1
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        x_t = pipe.scheduler.add_noise(x, noise, torch.tensor([6]))
        x0 = reverse_process(pipe.unet, pipe.scheduler, x_t, 6, generator=[torch.Generator().manual_seed(6)])
        return (((x0 / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)).permute(0, 2, 3, 1).numpy()[0]

    np.testing.assert_array_equal(mixed[0], reconstruct(a))
    np.testing.assert_array_equal(mixed[2], reconstruct(b))
    assert not np.array_equal(mixed[1], mixed[0])
    same = interpolate(pipe.unet, pipe.scheduler, a, a, t=6, lambdas=lambdas, seed=5)  # same noise for every λ
    assert all(np.array_equal(same[0], s) for s in same)
    out = tmp_path / "interp.png"
    args = ["eval", "interpolate", "--model", str(folder[0]), "--data", str(folder[1]), "--pairs", "0,1,2,3"]
    assert main([*args, "--lambdas", "0,0.5,1", "--out", str(out), *RAW]) == 0
    assert _size(out) == (5 * 8 + 6 * 2, 2 * 8 + 3 * 2)  # source, 3 λ, source; two pairs


def test_rate_distortion_curve_and_files(tmp_path):
    rng = np.random.default_rng(0)
    terms = rng.random((4, 10))
    mse = rng.random((4, 10))
    prior = rng.random(4) * 1e-5
    rd = rate_distortion(terms, mse, prior)
    assert rd["reverse_steps"].tolist() == list(range(1, 11))
    assert rd["rate_bpd"][0] == pytest.approx(prior.mean())  # after one step only x_T has been sent
    assert rd["rate_bpd"][-1] == pytest.approx(prior.mean() + terms[:, 1:].sum(1).mean())  # L_1 + ... + L_T
    assert np.all(np.diff(rd["rate_bpd"]) >= 0)
    assert rd["distortion_rmse"][-1] == pytest.approx(np.sqrt(mse[:, 0].mean()) * 127.5)
    assert rd["distortion_rmse"][0] == pytest.approx(np.sqrt(mse[:, 9].mean()) * 127.5)
    paths = write_rate_distortion(rd, tmp_path / "rd")
    assert [p.suffix for p in paths] == [".csv", ".json", ".png"]
    assert _size(paths[2]) == (960, 320)
    rows = paths[0].read_text().splitlines()
    assert rows[0] == "reverse_steps,timestep,rate_bpd,distortion_rmse" and len(rows) == 11
    assert json.loads(paths[1].read_text())["rate_bpd"][-1] == pytest.approx(rd["rate_bpd"][-1])


def test_nll_and_rate_distortion_commands(folder, tmp_path, capsys):
    model, data = folder
    npz, js = tmp_path / "nll.npz", tmp_path / "nll.json"
    args = ["eval", "nll", "--model", str(model), "--data", str(data)]
    assert main([*args, "--num-samples", "3", "--batch-size", "2", "--out", str(npz), "--json", str(js)]) == 0
    summary = json.loads(js.read_text())
    assert summary["num_images"] == 3 and summary["num_timesteps"] == T
    assert "NLL bound" in capsys.readouterr().out
    with np.load(npz) as f:
        assert f["terms_bpd"].shape == (3, T)
        assert f["total_bpd"].mean() == pytest.approx(summary["total_bpd"])
    # The bound of an image does not depend on the batch it was scored in (one generator per image).
    assert main([*args, "--num-samples", "1", "--out", str(tmp_path / "one.npz")]) == 0
    with np.load(npz) as f, np.load(tmp_path / "one.npz") as g:
        np.testing.assert_allclose(g["terms_bpd"][0], f["terms_bpd"][0], rtol=1e-5, atol=1e-7)
    assert main(["eval", "rate-distortion", "--from", str(npz), "--out", str(tmp_path / "rd")]) == 0
    assert _size(tmp_path / "rd.png") == (960, 320) and (tmp_path / "rd.csv").is_file()
