"""One option vocabulary across ``ddpm sample`` and every ``ddpm eval`` sub-command (issue #17.4), and bad values,
unusable output paths, devices and sizes refused up front, one line naming the option, exit code 2 (issue #15)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ddpm
from _helpers import tiny_unet
from ddpm.cli import build_parser, main
from ddpm.cli.options import count, count_or_all

T = 12
SRC = Path(__file__).resolve().parents[1] / "src" / "ddpm"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pipe = ddpm.DDPMPipeline(tiny_unet(3, 3), ddpm.DDPMScheduler(num_train_timesteps=T))
    pipe.recommended_num_inference_steps = 4
    path = tmp_path_factory.mktemp("m") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "images.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    return path


def _parsers() -> dict:
    parser = build_parser()
    top = next(a for a in parser._actions if a.dest == "command").choices
    subs = next(a for a in top["eval"]._actions if a.dest == "eval_command").choices
    return {"sample": top["sample"], **{f"eval {k}": v for k, v in subs.items()}}


def _options(p) -> dict:
    return {o: a for a in p._actions for o in a.option_strings}


def test_one_vocabulary_everywhere():
    parsers = _parsers()
    for name, p in parsers.items():
        opts = _options(p)
        for option in ("--device", "--threads", "--no-progress"):
            assert option in opts, (name, option)
        assert opts["--device"].default == "auto", name
        assert "--quiet" not in opts and "--steps" not in {o for o in opts if opts[o].help != "==SUPPRESS=="}
    counted = ["sample", "eval fid", "eval is", "eval nll", "eval generate", "eval progressive", "eval rate-distortion"]
    for name in counted:
        assert "--num-samples" in _options(parsers[name]), name
    for name in ("sample", "eval nll", "eval progressive", "eval rate-distortion"):  # the old spelling, hidden
        assert _options(parsers[name])["--num-images"].dest == "num_samples", name
    for name in ("sample", "eval fid", "eval is", "eval generate", "eval progressive"):  # commands that sample
        opts = _options(parsers[name])
        assert opts["--num-inference-steps"].default is None and opts["--steps"].dest == "num_inference_steps", name


def test_counts_accept_exponents():
    assert count("50000") == 50000 and count("5e4") == 50000 and count("50_000") == 50000
    assert count_or_all("all") is None and count_or_all("3") == 3
    for bad in ("1.5", "x", "inf", "1e400"):
        with pytest.raises(Exception, match="whole number"):
            count(bad)


def test_old_spellings_work_with_one_notice(model, data, tmp_path, capsys):
    out = tmp_path / "p.png"
    argv = ["eval", "progressive", "--model", str(model), "--num-images", "2", "--steps", "4", "--every", "2"]
    assert main([*argv, "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "--num-images is deprecated; use --num-samples" in err and "--steps is deprecated" in err
    assert main(["sample", "--model", str(model), "--num-images", "1", "--out", str(tmp_path / "a.npz")]) == 0
    assert capsys.readouterr().err.count("--num-images is deprecated") == 1
    # nll's old "--num-images 0" (every image) keeps its meaning
    js = tmp_path / "n.json"
    assert (
        main(["eval", "nll", "--model", str(model), "--data", str(data), "--num-images", "0", "--json", str(js)]) == 0
    )
    assert '"num_images": 5' in js.read_text()


def test_progressive_defaults_to_the_models_recommended_steps(model, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["eval", "progressive", "--model", str(model), "--every", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "x 4 columns" in text  # 4 steps (ddpm.json), not the full chain of 12


def _one_line_exit_2(capsys, argv, *needles):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "is deprecated" not in line]
    assert len(lines) == 1 and " error: " in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["eval", "progressive", "--model", "M", "--every", "0"], ["--every must be >= 1, got 0"]),
        (["eval", "progressive", "--model", "M", "--num-samples", "0"], ["--num-samples must be >= 1, got 0"]),
        (["eval", "progressive", "--model", "M", "--num-samples", "-1"], ["--num-samples must be >= 1, got -1"]),
        (["eval", "nll", "--model", "M", "--data", "D", "--num-samples", "0"], ["--num-samples must be >= 1 or all"]),
        (["eval", "nll", "--model", "M", "--data", "D", "--num-samples", "-1"], ["--num-samples", "got -1"]),
        (["eval", "nll", "--model", "M", "--data", "D", "--num-images", "-1"], ["--num-samples", "got -1"]),
        (["eval", "rate-distortion", "--model", "M", "--data", "D", "--num-samples", "-2"], ["--num-samples"]),
        (["eval", "generate", "--model", "M", "--out", "s.npz", "--num-samples", "0"], ["--num-samples must be >= 1"]),
        (["eval", "generate", "--model", "M", "--out", "s.npz", "--batch-size", "0"], ["--batch-size must be >= 1"]),
        (["eval", "fid", "M", "R", "--batch-size", "0"], ["--batch-size must be >= 1"]),
        (["eval", "is", "M", "--num-samples", "-3"], ["--num-samples must be >= 1"]),
        (["eval", "interpolate", "--model", "M", "--data", "D", "--pairs", "a,b"], ["--pairs must be comma-separated"]),
        (["eval", "rate-distortion", "--from", "/nonexistent/b.npz"], ["--from /nonexistent/b.npz: no such file"]),
        (["eval", "nll", "--model", "M", "--data", "D", "--device", "gpu"], ["--device gpu: not a torch device"]),
        (["eval", "generate", "--model", "M", "--out", "s.npz", "--threads", "0"], ["--threads must be >= 1"]),
        (["eval", "shared-latent", "--model", "M", "--threads", "0"], ["--threads must be >= 1"]),
        (["eval", "fid", "M", "R", "--inception", "/nonexistent/net.pt"], ["--inception /nonexistent/net.pt"]),
        (["eval", "progressive", "--model", "M", "--num-inference-steps", "0"], ["--num-inference-steps must be >= 1"]),
        (["sample", "--device", "tpu"], ["--device tpu"]),
    ],
)
def test_bad_values_one_line_exit_2(capsys, argv, needles):
    _one_line_exit_2(capsys, argv, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cmd", [["sample"], ["eval", "progressive", "--model", "M"], ["eval", "fid", "a", "b"]])
def test_cuda_without_a_gpu_is_a_usage_error(capsys, cmd):
    _one_line_exit_2(capsys, [*cmd, "--device", "cuda"], "--device cuda: no CUDA device is available")


def test_steps_out_of_range_before_sampling(model, data, tmp_path, capsys):
    too_many = ["--num-inference-steps", "5000"]
    message = f"--num-inference-steps must be <= {T}"
    _one_line_exit_2(capsys, ["sample", "--model", str(model), *too_many], message)
    out = str(tmp_path / "s.npz")
    _one_line_exit_2(capsys, ["eval", "generate", "--model", str(model), "--out", out, *too_many], message)
    _one_line_exit_2(capsys, ["eval", "progressive", "--model", str(model), *too_many], message)
    _one_line_exit_2(capsys, ["eval", "fid", str(model), str(data), "--num-samples", "2", *too_many], message)
    _one_line_exit_2(capsys, ["eval", "fid", str(model), str(data)], "--num-samples", "pipeline folder")
    assert not (tmp_path / "s.npz.partial").exists()


def test_huge_sizes_are_refused_at_once(model, data, tmp_path, capsys, monkeypatch):
    from ddpm.cli import options

    start = time.perf_counter()
    out = str(tmp_path / "s.npz")
    sample = ["sample", "--model", str(model), "--no-progress"]
    _one_line_exit_2(capsys, [*sample, "--num-samples", "1e12", "--out", out], "--num-samples 1000000000000", "memory")
    huge = ["--num-samples", "1e13", "--batch-size", "1e13", "--out", str(tmp_path / "pngs")]
    _one_line_exit_2(capsys, [*sample, *huge], "--batch-size 10000000000000", "memory")
    argv = ["eval", "generate", "--model", str(model), "--out", out]
    _one_line_exit_2(capsys, [*argv, "--num-samples", "1e15"], "--num-samples 1000000000000000", "free disk")
    _one_line_exit_2(capsys, ["eval", "fid", str(model), str(data), "--num-samples", "1e13"], "memory")
    monkeypatch.setattr(options, "memory_bytes", lambda: 1000)  # a batch of 4 8x8 images needs more than 1 kB
    _one_line_exit_2(capsys, [*argv, "--num-samples", "8", "--batch-size", "4", "--device", "cpu"], "--batch-size 4")
    assert time.perf_counter() - start < 30 and not (tmp_path / "s.npz.partial").exists()
    assert not (tmp_path / "pngs").exists()


def test_sample_to_a_folder_is_lazy(model, tmp_path, monkeypatch):
    from ddpm import images as ddpm_images

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ddpm_images, "save_images", stop)
    start = time.perf_counter()
    argv = ["sample", "--model", str(model), "--num-samples", "1e9", "--batch-size", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "pngs")]) == 130  # the first batch ran, nothing was built first
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sample", "--out", "{dir}"], None),  # a folder is a valid --out for sample (one PNG per image)
        (["sample", "--out", "{dir}/x.npz/"], "folder"),
        (["sample", "--out", "{file}/x.npz"], "is a file"),
        (["eval", "generate", "--model", "{model}", "--out", "{dir}/d.npz"], "is a folder"),
        (["eval", "generate", "--model", "{model}", "--out", "{file}/s.npz"], "is a file"),
        (["eval", "nll", "--model", "{model}", "--data", "D", "--json", "{dir}"], "--json"),
        (["eval", "nll", "--model", "{model}", "--data", "D", "--out", "{file}/b.npz"], "--out"),
        (["eval", "progressive", "--model", "{model}", "--out", "{dir}"], "is a folder"),
        (["eval", "rate-distortion", "--from", "{file}", "--out", "{file}/rd"], "--out"),
        (["eval", "fid", "A", "B", "--json", "{file}/r.json"], "--json"),
        (["eval", "generate", "--model", "{model}", "--out", "{ro}/s.npz"], "not writable"),
        (["eval", "nll", "--model", "{model}", "--data", "D", "--json", "{ro}/sub/n.json"], "not writable"),
    ],
)
def test_output_paths_checked_before_any_work(model, tmp_path, capsys, argv, needle):
    (tmp_path / "d.npz").mkdir()
    (tmp_path / "x.npz").mkdir()
    (tmp_path / "file").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if needle == "not writable" and os.access(ro, os.W_OK):
        pytest.skip("running as root: permissions are not enforced")
    names = {"dir": str(tmp_path), "file": str(tmp_path / "file"), "model": str(model), "ro": str(ro)}
    argv = [a.format(**names) for a in argv]
    if needle is None:
        assert main([*argv, "--model", str(model), "--num-samples", "1", "--no-progress"]) == 0
        return
    _one_line_exit_2(capsys, argv, needle)
    ro.chmod(0o755)


def test_hints_name_options_that_exist():
    """Every --option named in the messages and help of sample / eval (and of the evaluation library) exists."""
    known = {o for p in _parsers().values() for a in p._actions for o in a.option_strings}
    known |= {o for p in _parsers().values() for a in p._actions for o in getattr(a, "option_strings", [])}
    top = next(a for a in build_parser()._actions if a.dest == "command").choices
    known |= {o for a in top["train"]._actions for o in a.option_strings}  # evaluation/proxy_fid.py serves train
    known |= {"--help", "--version", "--nproc-per-node", "--no-deps"}  # torchrun, pip
    files = [SRC / "cli" / "sample.py", SRC / "cli" / "sampler_options.py", SRC / "cli" / "options.py"]
    files += sorted((SRC / "cli" / "eval").glob("*.py")) + sorted((SRC / "evaluation").glob("*.py"))
    missing = {}
    for path in files:
        for option in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", path.read_text())):
            if option not in known:
                missing.setdefault(option, []).append(path.name)
    assert not missing, missing
