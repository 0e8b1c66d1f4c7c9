"""Up-front guards of ``ddpm sample``, ``ddpm eval`` and ``ddpm analytic-dpm`` found by the hostile-user campaign
(docs/hardening.md): one seed range, clamped batches that never allocate, figures and estimates too large to fit,
figure outputs and lambdas, damaged --from files, outputs that cannot be created, NaN weights, and the Fréchet
distance of two statistics files of another feature size."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

import ddpm
from ddpm.cli import UsageError, main
from ddpm.cli import options as cli_options
from ddpm.evaluation.fid import FeatureStatistics

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


def _save(folder, nan: bool = False):
    torch.manual_seed(0)
    unet = ddpm.UNet2DModel(**TINY_UNET)
    if nan:
        with torch.no_grad():
            unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(num_train_timesteps=50))
    pipe.recommended_num_inference_steps = 3
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("model") / "pipe")


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("model") / "nan-pipe", nan=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "images.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8))
    return path


def _error(capsys, prog: str, *needles: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith(f"ddpm {prog}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


# --- one seed range ---------------------------------------------------------------------------------------------
def test_seed_range_is_one_shared_check():
    cli_options.check_seed(0)
    cli_options.check_seed(2**63 - 1)
    torch.Generator().manual_seed(2**63 - 1)  # the largest seed allowed is one torch takes
    with pytest.raises(UsageError, match=r"--seed must be >= 0, got -1"):
        cli_options.check_seed(-1)
    with pytest.raises(UsageError, match=r"--seed must be < 2\*\*63 = 9223372036854775808, got 1"):
        cli_options.check_seed(10**20)


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--model", "{model}", "--out", "{tmp}/s.npz"],
        ["eval", "generate", "--model", "{model}", "--out", "{tmp}/g.npz", "--num-samples", "2"],
        ["eval", "progressive", "--model", "{model}", "--out", "{tmp}/p.png"],
        ["eval", "nll", "--model", "{model}", "--data", "{data}"],
        ["eval", "fid", "{model}", "{data}", "--num-samples", "2"],
        ["analytic-dpm", "--model", "{model}", "--data", "{data}"],
    ],
)
def test_a_seed_too_large_is_refused_by_every_command(model, data, tmp_path, capsys, argv):
    argv = [a.format(model=model, data=data, tmp=tmp_path) for a in argv]
    assert main([*argv, "--seed", str(10**20), "--no-progress"]) == 2
    prog = argv[0] if argv[0] != "eval" else f"eval {argv[1]}"
    _error(capsys, prog, "--seed must be < 2**63", str(10**20))
    assert list(tmp_path.iterdir()) == []


# --- batch sizes: clamped to the number of images, never allocated when they cannot fit -------------------------
def test_a_batch_above_the_number_of_images_is_clamped(model, data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nll's work folder
    seen = []
    real = cli_options.check_batch_fits
    monkeypatch.setattr(cli_options, "check_batch_fits", lambda o, b, p, d: (seen.append((o, b)), real(o, b, p, d)))
    out = tmp_path / "s.npz"
    assert main(["sample", "--model", str(model), "--num-samples", "2", "--batch-size", "1e9", "--no-progress",
                 "--num-inference-steps", "2", "--out", str(out)]) == 0  # fmt: skip
    assert np.load(out)["images"].shape == (2, 8, 8, 3)
    assert main(["eval", "nll", "--model", str(model), "--data", str(data), "--num-samples", "2",
                 "--batch-size", "1e9", "--t-batch", "10", "--no-progress"]) == 0  # fmt: skip
    assert seen == [("--batch-size", 2), ("--batch-size", 2 * 10)]
    capsys.readouterr()
    for argv in (["sample"], ["eval", "nll"]):
        help_text = _help(capsys, argv)
        assert "clamped" in help_text, argv


def _help(capsys, argv):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_a_batch_that_cannot_fit_is_refused_before_sampling(model, data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_options, "memory_bytes", lambda: 1000)
    assert main(["eval", "nll", "--model", str(model), "--data", str(data), "--num-samples", "2",
                 "--batch-size", "2", "--no-progress"]) == 2  # fmt: skip
    _error(capsys, "eval nll", "--batch-size 2", "memory")


# --- figures and estimates too large ------------------------------------------------------------------------------
PAIRS = ",".join(["0,1"] * 3000)  # 3,000 rows of interpolation


@pytest.mark.parametrize(
    "argv",
    [
        ["progressive", "--model", "{model}", "--out", "{tmp}/p.png", "--num-samples", "1e9"],
        ["shared-latent", "--model", "{model}", "--out", "{tmp}/sl.png", "--num-samples", "1000000000"],
        ["interpolate", "--model", "{model}", "--data", "{data}", "--out", "{tmp}/i.png", "--pairs", "{pairs}"],
    ],
)  # fmt: skip
def test_a_figure_too_large_is_refused_up_front(model, data, tmp_path, capsys, argv):
    argv = [a.format(model=model, data=data, tmp=tmp_path, pairs=PAIRS) for a in argv]
    start = time.perf_counter()
    assert main(["eval", *argv, "--no-progress"]) == 2
    assert time.perf_counter() - start < 10
    err = _error(capsys, f"eval {argv[0]}", "the figure would be", "pixels")
    assert "--num-samples 1000000000" in err or "--pairs/--lambdas" in err
    assert list(tmp_path.iterdir()) == []


def test_a_figure_that_fits_is_written(model, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["eval", "progressive", "--model", str(model), "--num-samples", "2", "--every", "1",
                 "--num-inference-steps", "2", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analytic_dpm_refuses_an_estimate_too_large(model, data, capsys):
    start = time.perf_counter()
    argv = ["analytic-dpm", "--model", str(model), "--data", str(data), "--no-progress"]
    assert main([*argv, "--num-samples-per-timestep", "1000000000"]) == 2
    assert time.perf_counter() - start < 10
    _error(capsys, "analytic-dpm", "--num-samples-per-timestep 1000000000", "50,000,000,000 UNet evaluations")
    assert not (model / "analytic_dpm.json").exists()


# --- figure options -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lambdas", ["nan", "0,inf", "-0.1", "0,1.5"])
def test_lambdas_must_be_finite_in_0_1(model, data, tmp_path, capsys, lambdas):
    out = tmp_path / "i.png"
    argv = ["eval", "interpolate", "--model", str(model), "--data", str(data), "--out", str(out)]
    assert main([*argv, "--lambdas", lambdas]) == 2
    _error(capsys, "eval interpolate", "--lambdas must be finite numbers in [0, 1]")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["progressive", "--model", "{model}"],
        ["shared-latent", "--model", "{model}"],
        ["interpolate", "--model", "{model}", "--data", "{data}"],
    ],
)
def test_figure_outputs_must_end_in_png(model, data, tmp_path, capsys, argv):
    argv = [a.format(model=model, data=data) for a in argv]
    out = tmp_path / "p.txt"
    assert main(["eval", *argv, "--out", str(out), "--no-progress"]) == 2
    _error(capsys, f"eval {argv[0]}", "--out must be a path ending in .png", "p.txt")
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"hello, not numpy\n", "not a readable .npz"),
        ("npz-truncated", "not a readable .npz"),
        ("npy", "a single .npy array"),
    ],
)
def test_rate_distortion_from_a_damaged_file_names_it(tmp_path, capsys, content, needle):
    path = tmp_path / "bound.npz"
    if content == "npz-truncated":
        np.savez(path, terms_bpd=np.zeros((2, 3)), mse=np.zeros((2, 3)), prior_bpd=np.zeros(2))
        path.write_bytes(path.read_bytes()[:-40])
    elif content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        path.write_bytes(content)
    assert main(["eval", "rate-distortion", "--from", str(path), "--out", str(tmp_path / "rd")]) == 1
    _error(capsys, "eval rate-distortion", str(path), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bound.npz"]


# --- outputs that cannot be created --------------------------------------------------------------------------------
def test_check_output_really_creates_and_removes(tmp_path):
    cli_options.check_output("--out", tmp_path / "a" / "b" / "s.npz")
    cli_options.check_output("--work-dir", tmp_path / "w" / "x.partial", "folder")
    assert list(tmp_path.iterdir()) == []  # the folders it made to try are gone
    with pytest.raises(UsageError, match=r"--out /proc/ddpm-guards/s.npz: not writable: cannot create the folder"):
        cli_options.check_output("--out", "/proc/ddpm-guards/s.npz")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        cli_options.check_output("--out", blocker / "s.npz")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_sample_into_proc_is_refused_before_loading(capsys, monkeypatch):
    from ddpm.cli import sample as sample_cli

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sample_cli, "_load_pipeline", no_load)
    assert main(["sample", "--num-samples", "6", "--no-progress", "--out", "/proc/ddpm-campaign/s.npz"]) == 2
    _error(capsys, "sample", "--out /proc/ddpm-campaign/s.npz", "not writable")


# --- NaN weights --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--model", "{m}", "--out", "{tmp}/s.npz", "--num-samples", "2"],
        ["eval", "generate", "--model", "{m}", "--out", "{tmp}/g.npz", "--num-samples", "2"],
        ["eval", "nll", "--model", "{m}", "--data", "{data}", "--num-samples", "2", "--json", "{tmp}/n.json"],
        ["eval", "progressive", "--model", "{m}", "--out", "{tmp}/p.png"],
        ["eval", "fid", "{m}", "{data}", "--num-samples", "2"],
        ["analytic-dpm", "--model", "{m}", "--data", "{data}", "--num-samples-per-timestep", "2"],
    ],
)
def test_nan_weights_are_an_error_naming_the_model_and_tensor(nan_model, data, tmp_path, capsys, argv):
    argv = [a.format(m=nan_model, data=data, tmp=tmp_path) for a in argv]
    assert main([*argv, "--no-progress"]) == 1
    prog = argv[0] if argv[0] != "eval" else f"eval {argv[1]}"
    _error(capsys, prog, str(nan_model), "conv_out.weight holds 1 NaN/inf", "not finite")
    assert list(tmp_path.iterdir()) == []
    assert not (nan_model / "analytic_dpm.json").exists()


def test_a_non_finite_bound_is_never_printed():
    from ddpm.cli.eval.nll import check_finite_bound

    good = {"total_bpd": torch.ones(3), "terms_bpd": torch.ones(3, 4)}
    check_finite_bound(good, "m")
    bad = {"total_bpd": torch.tensor([1.0, float("nan"), 2.0]), "terms_bpd": torch.ones(3, 4)}
    bad["terms_bpd"][0, 1] = float("inf")
    with pytest.raises(RuntimeError, match=r"bound of m is not finite: total_bpd \(1 image\(s\)\), terms_bpd \(1"):
        check_finite_bound(bad, "m")


# --- Fréchet distance of statistics of another feature size -------------------------------------------------------
def _stats(path, dim, value=0.0):
    FeatureStatistics(np.full(dim, value), np.eye(dim), 5000, source="test").save(path)
    return path


def test_fid_of_two_statistics_files_of_another_equal_size_warns(tmp_path, capsys):
    a, b = _stats(tmp_path / "a.npz", 8), _stats(tmp_path / "b.npz", 8, value=1.0)
    assert main(["eval", "fid", str(a), str(b), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "FID 8.0000" in captured.out  # ||mu_a - mu_b||^2 = 8, equal covariances
    assert "not the 2048 Inception pool3 features" in captured.err and "not an FID comparable" in captured.err
    assert main(["eval", "fid", str(a), "--ref-stats", str(b), "--no-progress"]) == 0
    assert "FID 8.0000" in capsys.readouterr().out
    c = _stats(tmp_path / "c.npz", 16)
    assert main(["eval", "fid", str(a), str(c), "--no-progress"]) == 1
    assert "a.npz: statistics of 8 features" in capsys.readouterr().err


def test_analytic_dpm_clamps_its_batch_and_refuses_one_that_cannot_fit(model, data, capsys, monkeypatch):
    monkeypatch.setattr(cli_options, "memory_bytes", lambda: 10_000)  # the 2 x 50 draws' bookkeeping fits, no batch
    argv = ["analytic-dpm", "--model", str(model), "--data", str(data), "--no-progress", "--device", "cpu"]
    assert main([*argv, "--num-samples-per-timestep", "2", "--batch-size", str(10**12)]) == 2
    _error(capsys, "analytic-dpm", "--batch-size 100:", "memory")  # clamped to the 2 x 50 draws
    assert not (model / "analytic_dpm.json").exists()


def test_nll_of_one_image_prints_no_nan(model, data, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its work folder
    assert main(["eval", "nll", "--model", str(model), "--data", str(data), "--num-samples", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and "(one image: no standard error)" in out


def test_fid_subset_seed_must_be_a_seed(tmp_path, capsys):
    """Found by the campaign's final rerun: a negative --subset-seed was accepted when both sets are statistics."""
    from ddpm.cli import main

    assert main(["eval", "fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--subset-seed", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--subset-seed must be in [0, 2**63), got -1" in err
