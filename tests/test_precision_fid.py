"""Quality guard of reduced precision: bfloat16 sampling scores an FID within the seed-to-seed noise of float32.

Slow (about 5 minutes on 2 CPU cores): the bundled model samples the same 300 images (seed 0) in float32 and in
bfloat16, and 300 others (seed 1) in float32; all three are scored against 300 Fashion-MNIST test images with the real
Inception network. bfloat16 passes when it is no further from float32 (same seeds) than float32 is from itself with
other seeds, plus a margin of 10% of the FID. The measured numbers at a larger scale are in docs/benchmarks.md.
"""

import numpy as np
import pytest
import torch

from ddpm.evaluation.inception import inception_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not inception_available(), reason="the FID Inception network is not installed"),
]

N, STEPS = 300, 50


def _samples(tmp_path, name: str, dtype: str, seed: int):
    from ddpm.evaluation.generate import generate_images, load_pipeline

    try:
        pipe = load_pipeline("ddpm/default", dtype=dtype)
    except FileNotFoundError:
        pytest.skip("no bundled model")
    images = generate_images(pipe, N, seed=seed, batch_size=N, num_inference_steps=STEPS)
    path = tmp_path / f"{name}.npz"
    np.savez(path, images=images)
    return path, images


def test_bfloat16_fid_is_within_the_float32_noise(tmp_path):
    from ddpm.data import open_dataset
    from ddpm.evaluation.fid import fid

    try:
        open_dataset("fashion-mnist", split="test")
    except ValueError:
        pytest.skip("Fashion-MNIST is not installed")
    threads = torch.get_num_threads()
    try:
        fp32, fp32_images = _samples(tmp_path, "fp32", "float32", 0)
        bf16, bf16_images = _samples(tmp_path, "bf16", "bfloat16", 0)
        other, _ = _samples(tmp_path, "fp32_seed1", "float32", 1)
        ref_stats = tmp_path / "ref.npz"
        scores = {
            name: fid(path, "fashion-mnist@test", num_samples=N, ref_stats=ref_stats)["fid"]
            for name, path in (("fp32", fp32), ("bf16", bf16), ("fp32_seed1", other))
        }
    finally:
        torch.set_num_threads(threads)
    print(f"FID against {N} test images, {N} samples, {STEPS} steps: {scores}")
    # The same noise in both precisions: the images differ, but not by much.
    diff = np.abs(fp32_images.astype(int) - bf16_images.astype(int))
    assert 0 < diff.mean() < 8
    noise = abs(scores["fp32_seed1"] - scores["fp32"])
    assert abs(scores["bf16"] - scores["fp32"]) <= noise + 0.1 * scores["fp32"], scores
