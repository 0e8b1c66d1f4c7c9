"""The ``ddpm eval`` command layer: explicit registration of every sub-command, the shared model options, and one
error path (a bad value: one line naming the option and what is allowed, exit code 2; a failure: one line, exit 1).
The numbers each sub-command computes are tested in test_fid*.py, test_nll.py and test_figures.py."""

import numpy as np
import pytest
import torch

from ddpm.cli import build_parser, main
from ddpm.cli import eval as eval_cli
from ddpm.evaluation.figure_rows import interpolation_rows, paper_timesteps
from ddpm.evaluation.nll_runs import load_bound_terms

NAMES = ["fid", "is", "nll", "generate", "progressive", "shared-latent", "interpolate", "rate-distortion"]


def _eval_subparsers():
    parser = build_parser()
    top = next(a for a in parser._actions if a.dest == "command")
    eval_parser = top.choices["eval"]
    return next(a for a in eval_parser._actions if a.dest == "eval_command").choices


def test_every_subcommand_is_registered_by_name():
    assert list(eval_cli.SUBCOMMANDS) == NAMES
    assert list(_eval_subparsers()) == NAMES


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("ddpm.cli.eval.nll:add_nl", "ddpm eval nll: ddpm.cli.eval.nll has no function 'add_nl'"),
        ("ddpm.cli.eval.nl:add_nll", "ddpm eval nll: no module 'ddpm.cli.eval.nl'"),
        ("ddpm.cli.eval.nll", "is not 'module:function'"),
    ],
)
def test_a_misspelled_registration_fails_loudly(monkeypatch, target, message):
    monkeypatch.setitem(eval_cli.SUBCOMMANDS, "nll", target)
    with pytest.raises(eval_cli.RegistrationError, match=message):
        build_parser()


def test_model_options_come_from_one_helper():
    for name, p in _eval_subparsers().items():
        options = {o for a in p._actions for o in a.option_strings}
        assert {"--device", "--seed"} <= options, name
        assert ("--model" in options) == (name not in ("fid", "is")), name
    # sampling sub-commands share --num-inference-steps; a pipeline source of fid/is is sampled the same way
    for name in ("fid", "is", "generate", "progressive"):
        assert "--num-inference-steps" in {o for a in _eval_subparsers()[name]._actions for o in a.option_strings}


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["fid", "a"], "--ref-stats"),
        (["fid", "a", "b", "--gen-batch-size", "0"], "--gen-batch-size must be >= 1, got 0"),
        (["fid", "a", "b", "--num-samples", "0"], "--num-samples must be >= 1, got 0"),
        (["is", "a", "--splits", "0"], "--splits must be >= 1, got 0"),
        (["nll", "--model", "m", "--data", "d", "--t-batch", "0"], "--t-batch must be >= 1, got 0"),
        (["nll", "--model", "m", "--data", "d", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["generate", "--model", "m", "--out", "s.npz", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["generate", "--model", "m", "--out", "s.png"], "--out must be a path ending in .npz, got s.png"),
        (["generate", "--model", "m", "--out", "s.npz", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["progressive", "--model", "m", "--every", "0"], "--every must be >= 1, got 0"),
        (["progressive", "--model", "m", "--num-inference-steps", "0"], "--num-inference-steps must be >= 1"),
        (["shared-latent", "--model", "m", "--num-samples", "0"], "--num-samples must be >= 1, got 0"),
        (["interpolate", "--model", "m", "--data", "d", "--pairs", "0,1,2"], "--pairs must be an even number"),
        (["interpolate", "--model", "m", "--data", "d", "--pairs", "0,x"], "--pairs must be comma-separated"),
        (["rate-distortion"], "--from NPZ, or --model and --data"),
        (["generate", "--model", "m", "--out", "s.npz", "--eta", "-1"], "--eta must be a finite number >= 0"),
        (["generate", "--model", "m", "--out", "s.npz", "--sampler", "ddpm", "--eta", "1"], "--eta applies to"),
        (["fid", "m", "r", "--num-samples", "2", "--eta", "inf"], "--eta must be a finite number >= 0"),
        (["progressive", "--model", "m", "--sampler", "dpm-solver++", "--eta", "0.5"], "--eta applies to"),
    ],
)
def test_bad_values_are_one_line_naming_the_option_exit_2(capsys, argv, option):
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ddpm eval {argv[0]}: error: ") and option in err


def test_failures_while_running_are_one_line_exit_1(tmp_path, capsys):
    assert main(["eval", "progressive", "--model", str(tmp_path), "--out", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ddpm eval progressive: error: ") and "model_index.json" in err
    npz = tmp_path / "other.npz"
    np.savez(npz, terms_bpd=np.zeros((2, 3)))
    assert main(["eval", "rate-distortion", "--from", str(npz)]) == 1
    assert "lacks mse, prior_bpd" in capsys.readouterr().err


def test_figure_helpers():
    assert paper_timesteps(1000) == [999, 749, 499, 249]
    assert paper_timesteps(12) == [11, 8, 5, 2] and paper_timesteps(12, (500,)) == [5]
    assert paper_timesteps(2) == [1, 0]  # distinct after scaling
    with pytest.raises(ValueError, match="pairs of images"):
        interpolation_rows(None, None, torch.zeros(3, 3, 8, 8, dtype=torch.uint8), t=0, lambdas=(0.0,))


def test_saved_bound_round_trip(tmp_path):
    from ddpm.evaluation.nll_runs import save_bound

    results = {"terms_bpd": torch.rand(2, 4), "mse": torch.rand(2, 4), "prior_bpd": torch.rand(2)}
    save_bound(tmp_path / "b.npz", results, {"num_images": 2})
    terms, mse, prior = load_bound_terms(tmp_path / "b.npz")
    np.testing.assert_array_equal(terms, results["terms_bpd"].numpy())
    np.testing.assert_array_equal(mse, results["mse"].numpy())
    np.testing.assert_array_equal(prior, results["prior_bpd"].numpy())
    with np.load(tmp_path / "b.npz") as f:
        assert str(f["summary"]) == '{"num_images": 2}'
