"""``ddpm train`` refuses what cannot work before any work, in one line ``ddpm train: error: --option: value: reason;
allowed: ...`` with exit code 2 (the campaign rerun of docs/hardening.md): a batch larger than the memory (it hung;
one larger than the data set now trains with a warning), sample steps above T (silently clamped), binary or odd files
as ``--config`` and ``--model-config`` (tracebacks, or an endless read of /dev/zero), and UNet config keys of the wrong
type."""

import json
import time

import pytest

from ddpm.cli import main
from ddpm.training.config import (
    ConfigError,
    batch_repeat_warning,
    check_step_fits,
    parameter_count,
    resolve_config,
    step_memory_bytes,
)
from test_train_loop import TINY_UNET, _npz


@pytest.fixture
def tiny(tmp_path):
    data = _npz(tmp_path / "d.npz")  # 24 images, 8x8 RGB
    unet = tmp_path / "unet.json"
    unet.write_text(json.dumps(TINY_UNET))
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--resolution", "8", "--channels", "3", "--model-config", str(unet),
            "--batch-size", "4", "--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0",
            "--num-workers", "0", "--no-progress", "--threads", "1", "--output-dir", str(out)]  # fmt: skip
    return argv, out


def _refused(capsys, argv, *needles) -> str:
    start = time.monotonic()
    code = main(argv)
    took = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in "\n".join(err)
    line = err[-1]
    assert line.startswith("ddpm train: error: "), line
    for needle in needles:
        assert needle in line, line
    assert took < 10, f"{took:.1f} s: not refused up front"
    return line


def test_a_batch_larger_than_memory_is_refused_at_once(tiny, capsys):
    argv, out = tiny
    line = _refused(capsys, [*argv, "--batch-size", "1000000000"], "--batch-size: 1000000000: ", "memory",
                    "; allowed: ")  # fmt: skip
    assert "TB" in line
    _refused(capsys, [*argv, "--grad-accum", "1000000000"], "--grad-accum: 1000000000: ", "memory")
    assert not out.exists()  # nothing created


def test_a_batch_larger_than_the_data_set_trains_with_a_warning(tiny, capsys, caplog):
    argv, out = tiny
    assert main([*argv, "--batch-size", "4", "--grad-accum", "7", "--max-steps", "1", "--checkpoint-every", "1"]) == 0
    err = capsys.readouterr().err + caplog.text
    assert "warning: --batch-size 4 x --grad-accum 7 = 28 images per update, more than the 24 images" in err
    caplog.clear()
    assert main([*argv, "--batch-size", "24", "--max-steps", "1", "--checkpoint-every", "1", "--output-dir",
                 str(out) + "-2"]) == 0  # fmt: skip
    assert "warning" not in capsys.readouterr().err + caplog.text


def test_batch_bounds_in_the_library():
    cfg = resolve_config(model=TINY_UNET, resolution=8, batch_size=8, grad_accum=2)
    assert batch_repeat_warning(cfg, 16) is None
    assert "16 images per update, more than the 15 images" in batch_repeat_warning(cfg, 15)
    # the bound: weights, grads, Adam, EMA (20 bytes a parameter) + the update's noise + one activation
    small, big = step_memory_bytes(cfg), step_memory_bytes(resolve_config(model=TINY_UNET, resolution=8, batch_size=16))
    assert big - small == 16 * 8 * 64 * 4 - 8 * 8 * 64 * 4  # noise unchanged (16 = 8 x 2), one activation doubles
    assert small == 20 * parameter_count(cfg) + 16 * 3 * 64 * 4 + 8 * 8 * 64 * 4
    with pytest.raises(ConfigError, match="grad_accum=2: one training step needs at least") as err:
        check_step_fits(cfg, small - 1, "a test's memory")  # one micro-batch fits, the update's noise does not
    assert (err.value.key, err.value.value) == ("grad_accum", 2)
    with pytest.raises(ConfigError, match="batch_size=8: one training step needs at least") as err:
        check_step_fits(cfg, step_memory_bytes(cfg, grad_accum=1) - 1, "a test's memory")
    assert (err.value.key, err.value.value) == ("batch_size", 8)
    check_step_fits(cfg, small, "a test's memory")
    check_step_fits(cfg, None, "unknown memory")


def test_sample_steps_above_t_are_refused(tiny, capsys):
    argv, _ = tiny
    _refused(capsys, [*argv, "--sample-steps", "5000"], "--num-inference-steps: 5000: ", "[1, 1000]")
    _refused(capsys, [*argv, "--num-inference-steps", "1001"], "--num-inference-steps: 1001: ")
    assert resolve_config(sample_steps=1000).sample_steps == 1000
    with pytest.raises(ConfigError, match="sample_steps=60"):
        resolve_config(sample_steps=60, scheduler={"num_train_timesteps": 50})
    with pytest.raises(ConfigError, match="fid_num_inference_steps=51"):
        resolve_config(scheduler={"num_train_timesteps": 50}, sample_steps=10, fid_every=5, fid_ref_stats="r.npz",
                       fid_num_inference_steps=51)  # fmt: skip
    resolve_config(scheduler={"num_train_timesteps": 50}, sample_steps=10, fid_num_inference_steps=51)  # unused
    with pytest.raises(ConfigError, match="fid_num_samples=1000000000"):
        resolve_config(fid_num_samples=10**9)


def test_binary_and_odd_files_as_config_and_model_config(tiny, tmp_path, capsys):
    argv, _ = tiny
    binary = tmp_path / "d.npz"
    line = _refused(capsys, [*argv, "--config", str(binary)], f"--config: '{binary}': ", "not a JSON preset",
                    "cifar10, cifar10-small")  # fmt: skip
    assert "binary" in line
    _refused(capsys, [*argv, "--model-config", str(binary)], f"--model-config: '{binary}': ", "not a JSON")
    _refused(capsys, [*argv, "--model-config", "/dev/zero"], "--model-config: '/dev/zero': ", "not a regular file")
    _refused(capsys, [*argv, "--config", str(tmp_path)], "--config: ", "a folder")
    _refused(capsys, [*argv, "--config", "nosuchpreset"], "--config: 'nosuchpreset': no preset", "fashion-mnist")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    _refused(capsys, [*argv, "--model-config", str(listed)], "--model-config: ", "holds a JSON list")
    _refused(capsys, [*argv, "--config", str(listed)], "--config: ", "holds a JSON list")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _refused(capsys, [*argv, "--config", str(deep)], "--config: ")


@pytest.mark.parametrize(
    "keys, needle",
    [
        ({"layers_per_block": "x"}, "layers_per_block='x' is not an integer"),
        ({"layers_per_block": 10**9}, "layers_per_block=1000000000"),  # built 10^9 blocks on the meta device: hung
        ({"norm_num_groups": "4"}, "norm_num_groups='4'"),
        ({"norm_eps": "x"}, "norm_eps='x' is not a finite number"),  # accepted, then failed at the first step
        ({"add_attention": "x"}, "add_attention='x' is not true or false"),
        ({"down_block_types": "DownBlock2D"}, "down_block_types='DownBlock2D' is not a list"),
        ({"sample_size": []}, "sample_size=[] is not an integer"),  # IndexError
        ({"sample_size": "big"}, "sample_size='big'"),
        ({"in_channels": [3]}, "in_channels=[3]"),  # was blamed on --channels
        (
            {
                "block_out_channels": [8] * 20,
                "down_block_types": ["DownBlock2D"] * 20,
                "up_block_types": ["UpBlock2D"] * 20,
            },
            "20 levels",
        ),
        ({"no_such_key": 1, "block_out_channels": "wide"}, "block_out_channels='wide'"),  # the baseline's TypeError
    ],
)
def test_model_config_keys_of_the_wrong_type(tiny, tmp_path, capsys, keys, needle):
    argv, _ = tiny
    bad = tmp_path / "bad-unet.json"
    bad.write_text(json.dumps({**TINY_UNET, **keys}))
    if "sample_size" in keys:  # the file's shape applies unless given as an option
        argv = [a for a in argv if a not in ("--resolution", "8")]
    if "in_channels" in keys:
        argv = [a for a in argv if a not in ("--channels", "3")]
    _refused(capsys, [*argv, "--model-config", str(bad)], "--model-config: ", needle)


def test_proxy_fid_errors_name_the_option(tiny, tmp_path, capsys):
    argv, _ = tiny
    _refused(capsys, [*argv, "--fid-every", "5"], "--fid-ref-stats: missing: ", "--fid-every 5", "allowed: ")
    text = tmp_path / "t.npz"
    text.write_text("not statistics")
    _refused(capsys, [*argv, "--fid-every", "5", "--fid-ref-stats", str(text)], f"--fid-ref-stats: '{text}': ")
