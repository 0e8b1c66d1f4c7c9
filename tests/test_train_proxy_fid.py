"""``--fid-every N``: a proxy FID curve during training (few-step sampler, n images, reference statistics from a
file), logged on rank 0 with its settings and left out of the images/s."""

import json
import time

import numpy as np
import pytest

from ddpm import DDPMPipeline
from ddpm.cli import main
from ddpm.evaluation.fid import FeatureStatistics, compute_statistics, fid_from_statistics
from ddpm.evaluation.generate import generate_images
from ddpm.evaluation.proxy_fid import ProxyFID
from ddpm.training.config import ConfigError
from ddpm.training.trainer import Trainer, TrainingError
from test_train_loop import TINY_UNET, _cfg, _npz

DIM = 16


def _features(images):
    """A stand-in for the Inception network: the first 16 pixel values, scaled to [0, 1]."""
    return np.asarray(images).reshape(len(images), -1)[:, :DIM].astype(np.float64) / 255.0


def _reference(path, dim=DIM):
    rng = np.random.default_rng(0)
    FeatureStatistics(rng.normal(0.5, 0.1, dim), np.eye(dim) * 0.05, 100, source="fake").save(path)
    return path


def test_proxy_fid_curve_is_logged_with_its_settings_and_matches_the_exported_pipeline(tmp_path):
    data, ref = _npz(tmp_path / "data.npz"), _reference(tmp_path / "ref.npz")
    cfg = _cfg(
        data, tmp_path / "run", max_steps=4, log_every=2, checkpoint_every=4, fid_every=2, fid_ref_stats=str(ref)
    )
    evaluator = ProxyFID(ref, num_samples=6, num_inference_steps=3, sampler="ddim", extractor=_features)
    assert "proxy FID: 6 images, ddim 3 steps" in evaluator.describe()
    Trainer(cfg, progress=False, evaluator=evaluator).run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fid_records = [r for r in records if "proxy_fid" in r]
    assert [r["step"] for r in fid_records] == [2, 4]
    assert fid_records[0]["proxy_fid_num_samples"] == 6 and fid_records[0]["proxy_fid_sampler"] == "ddim"
    assert fid_records[0]["proxy_fid_steps"] == 3 and fid_records[0]["proxy_fid_ref_stats"] == str(ref)
    assert [r["step"] for r in records if "loss" in r] == [2, 4]  # the loss lines are untouched

    # The value at step 4 is the FID of the exported EMA pipeline's first 6 DDIM-3 images (seed 0).
    pipe = DDPMPipeline.from_pretrained(tmp_path / "run" / "pipeline").set_sampler("ddim")
    images = generate_images(pipe, 6, seed=0, num_inference_steps=3)
    expected = fid_from_statistics(compute_statistics(_features(images)), FeatureStatistics.load(ref), method="eigh")
    assert fid_records[1]["proxy_fid"] == pytest.approx(expected, rel=1e-6)


def test_proxy_fid_time_is_not_in_images_per_second(tmp_path, monkeypatch):
    data, ref = _npz(tmp_path / "data.npz"), _reference(tmp_path / "ref.npz")
    cfg = _cfg(
        data, tmp_path / "run", max_steps=4, log_every=2, checkpoint_every=4, fid_every=2, fid_ref_stats=str(ref)
    )
    proxy = ProxyFID(ref, num_samples=2, num_inference_steps=1, extractor=_features)
    clock = {"offset": 0.0}
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real() + clock["offset"])

    def slow(pipeline, step):  # an evaluation that takes 1000 s on the clock the trainer reads
        clock["offset"] += 1000.0
        return proxy(pipeline, step)

    result = Trainer(cfg, progress=False, evaluator=slow).run()
    # Steps 3-4 (8 images) ran after the evaluation of step 2; counted, it would make images/s < 8 / 1000.
    assert result.last_metrics["images_per_s"] > 0.1


def test_proxy_fid_options_are_checked(tmp_path, capsys):
    data = _npz(tmp_path / "data.npz")
    with pytest.raises(ConfigError, match="fid_ref_stats"):
        _cfg(data, tmp_path / "a", fid_every=5)
    with pytest.raises(ConfigError, match="fid_sampler='analytic-ddpm'"):
        _cfg(data, tmp_path / "a", fid_every=5, fid_ref_stats="x.npz", fid_sampler="analytic-ddpm")
    with pytest.raises(TrainingError, match="evaluator"):
        Trainer(_cfg(data, tmp_path / "a", fid_every=5, fid_ref_stats="x.npz"))
    with pytest.raises(ValueError, match="no such file"):
        ProxyFID(tmp_path / "missing.npz", extractor=_features)
    with pytest.raises(ValueError, match="num_samples=1"):
        ProxyFID(_reference(tmp_path / "ref.npz"), num_samples=1, extractor=_features)
    args = ["train", "--data", str(data), "--resolution", "8", "--output-dir", str(tmp_path / "b"), "--no-progress"]
    assert main([*args, "--fid-every", "2"]) == 2
    assert "error: --fid-ref-stats: " in capsys.readouterr().err
    assert main([*args, "--fid-every", "2", "--fid-ref-stats", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_proxy_fid_with_the_real_inception_network_through_the_cli(tmp_path):
    data = _npz(tmp_path / "data.npz")
    ref = _reference(tmp_path / "ref.npz", dim=2048)
    unet = tmp_path / "unet.json"
    unet.write_text(json.dumps(TINY_UNET))
    args = [
        "train", "--data", str(data), "--resolution", "8", "--model-config", str(unet), "--batch-size", "4",
        "--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0", "--num-workers", "0", "--no-progress",
        "--fid-every", "2", "--fid-ref-stats", str(ref), "--fid-num-samples", "2", "--fid-num-inference-steps", "2",
        "--output-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (fid,) = [r for r in records if "proxy_fid" in r]
    assert fid["step"] == 2 and fid["proxy_fid_num_samples"] == 2 and np.isfinite(fid["proxy_fid"])
    assert fid["proxy_fid"] > 0
