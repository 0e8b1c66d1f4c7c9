"""What the attempts share, made once per campaign in its root folder: a tiny pipeline (8x8 RGB, T = 50), a tiny UNet
config for training, small data sets (good and bad), FID statistics, and the uninterrupted reference runs that the
kill attempts compare with (made on first use, then cached)."""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np

from .core import Run, child_env, ddpm_argv, run_process

#: The training UNet of tests/test_train_loop.py: two levels (8, 16 channels), attention at the lower one.
TINY_TRAIN_UNET = {
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 0,
    "norm_eps": 1e-6,
    "attention_head_dim": None,
}

#: A tiny training run (all options that a kill/interference attempt shares); add --max-steps, --output-dir ...
TRAIN_TINY = [
    "--data", "{npz}", "--resolution", "8", "--channels", "3", "--model-config", "{unet_json}", "--batch-size", "4",
    "--sample-every", "0", "--warmup-steps", "2", "--num-workers", "0", "--log-every", "1", "--no-progress",
    "--seed", "3", "--lr", "1e-3", "--dropout", "0.1",
]  # fmt: skip


class Fixtures:
    """Paths of the shared inputs (``paths``; used as ``{name}`` in commands) and cached reference runs."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "fixtures"
        self.paths: dict[str, str] = {"bundled": "ddpm/default"}
        self._refs: dict[str, object] = {}
        self._lock = threading.Lock()
        self._ref_locks: dict[str, threading.Lock] = {}

    # -----------------------------------------------------------------------------------------------------------
    def fill(self, text: str, work: Path) -> str:
        if "{" not in text:
            return text
        return text.format(work=str(work), **self.paths)

    def build(self) -> Fixtures:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        p = self.paths

        p["unet_json"] = str(d / "unet.json")
        (d / "unet.json").write_text(json.dumps(TINY_TRAIN_UNET))
        p["npz"] = _save_npz(d / "data.npz", rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8))
        p["npz2"] = _save_npz(d / "data2.npz", rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8))
        p["npz_many"] = _save_npz(d / "many.npz", rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
        p["npz_gray"] = _save_npz(d / "gray.npz", rng.integers(0, 256, (24, 8, 8), dtype=np.uint8))
        p["npz_10px"] = _save_npz(d / "ten.npz", rng.integers(0, 256, (24, 10, 10, 3), dtype=np.uint8))
        p["samples"] = _save_npz(d / "samples.npz", rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
        p["npz_float"] = _save_npz(d / "float.npz", rng.random((12, 8, 8, 3)).astype(np.float32))
        p["npz_01"] = _save_npz(d / "zero_one.npz", rng.integers(0, 2, (12, 8, 8, 3), dtype=np.uint8))
        p["npz_empty_array"] = _save_npz(d / "no_images.npz", np.zeros((0, 8, 8, 3), np.uint8))
        p["npz_two_keys"] = str(d / "two_keys.npz")
        np.savez(d / "two_keys.npz", a=np.zeros((2, 8, 8, 3), np.uint8), b=np.zeros((2, 8, 8, 3), np.uint8))
        p["zero_byte"] = str(d / "zero.npz")
        (d / "zero.npz").write_bytes(b"")
        p["truncated_npz"] = str(d / "truncated.npz")
        (d / "truncated.npz").write_bytes(Path(p["npz"]).read_bytes()[:300])
        p["text_npz"] = str(d / "text.npz")
        (d / "text.npz").write_text("these are not images\n")
        p["a_file"] = str(d / "plain.txt")
        (d / "plain.txt").write_text("a plain file\n")
        p["empty_dir"] = str(d / "empty_dir")
        (d / "empty_dir").mkdir(exist_ok=True)

        # FID statistics. stats/stats2: the Inception's 2048 pool3 features (the normal case; well conditioned, n as
        # for a 50k FID), for the valid attempt only: one FID of them costs about a minute of CPU. stats8/stats8b: 8
        # features (the distance is instant), for the option attempts and the bad statistics below (NaN, infinite,
        # not a covariance, another feature size), so that those fail for their own reason, not for the size.
        wide = rng.normal(size=(64, 2048))
        mu, sigma = wide.mean(0), np.cov(wide, rowvar=False) + 0.01 * np.eye(2048)
        p["stats"] = _save_stats(d / "stats.npz", mu, sigma, n=50_000)
        p["stats2"] = _save_stats(d / "stats2.npz", mu + 0.5, sigma * 1.5, n=50_000)
        feats = rng.normal(size=(40, 8))
        mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
        p["stats8"] = _save_stats(d / "stats8.npz", mu, sigma)
        p["stats8b"] = _save_stats(d / "stats8b.npz", mu + 0.5, sigma * 1.5)
        p["stats_nan"] = _save_stats(d / "stats_nan.npz", np.full_like(mu, np.nan), sigma)
        p["stats_inf"] = _save_stats(d / "stats_inf.npz", mu, np.where(np.eye(8) > 0, np.inf, 0.0))
        p["stats_neg"] = _save_stats(d / "stats_neg.npz", mu, -np.eye(8))
        p["stats_dim4"] = _save_stats(d / "stats_dim4.npz", mu[:4], sigma[:4, :4])

        # Image folders: PNGs of varied size, and JPEGs of which one is cut short after a valid header.
        from PIL import Image

        png = d / "png_folder"
        png.mkdir(exist_ok=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (10, 8, 3), dtype=np.uint8)).save(png / f"{i:03d}.png")
        p["png_folder"] = str(png)
        jpg = d / "jpeg_truncated"
        jpg.mkdir(exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(jpg / f"{i:03d}.jpg", quality=90)
        whole = (jpg / "003.jpg").read_bytes()
        (jpg / "003.jpg").write_bytes(whole[: len(whole) // 2])
        p["jpeg_truncated"] = str(jpg)
        bad = d / "all_broken"
        bad.mkdir(exist_ok=True)
        for i in range(3):
            (bad / f"{i}.png").write_bytes(b"\x89PNG not really")
        p["all_broken"] = str(bad)

        # Two CIFAR-10-like archives with the same file name and different images (the extraction cache's key).
        for tag, seed in (("arch_a", 1), ("arch_b", 2)):
            p[tag] = _cifar_archive(d / tag, seed)

        # An idx file (MNIST layout), gzip-compressed and one cut short.
        idx = d / "train-images-idx3-ubyte.gz"
        raw = rng.integers(0, 256, (16, 8, 8), dtype=np.uint8)
        header = (2051).to_bytes(4, "big") + (16).to_bytes(4, "big") + (8).to_bytes(4, "big") + (8).to_bytes(4, "big")
        with gzip.open(idx, "wb") as f:
            f.write(header + raw.tobytes())
        p["idx"] = str(idx)
        cut = d / "cut" / "train-images-idx3-ubyte"
        cut.parent.mkdir(exist_ok=True)
        cut.write_bytes(header + raw.tobytes()[:100])
        p["idx_truncated"] = str(cut)

        self._tiny_pipelines(d)
        return self

    def _tiny_pipelines(self, d: Path) -> None:
        import torch

        from ddpm import DDPMPipeline, DDPMScheduler, UNet2DModel

        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=8,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )
        with torch.no_grad():
            for prm in unet.parameters():
                prm.add_(torch.randn_like(prm) * 0.02)
        tiny = d / "tiny_pipeline"
        DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=50)).save_pretrained(tiny)
        self.paths["tiny"] = str(tiny)
        # Broken copies of it.
        for name, damage in (
            ("tiny_no_weights", lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink()),
            ("tiny_cut_weights", _cut_weights),
            ("tiny_bad_index", lambda f: (f / "model_index.json").write_text("{not json")),
            ("tiny_empty_config", lambda f: (f / "unet" / "config.json").write_text("")),
            ("tiny_nan_weights", _nan_weights),
        ):
            copy = d / name
            shutil.copytree(tiny, copy, dirs_exist_ok=True)
            damage(copy)
            self.paths[name] = str(copy)

    # -----------------------------------------------------------------------------------------------------------
    def reference(self, key: str, make):
        """The cached result of ``make()`` (an uninterrupted reference run), made once even with parallel jobs."""
        with self._lock:
            lock = self._ref_locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._refs:
                self._refs[key] = make()
            return self._refs[key]

    def run_ddpm(self, args: list[str], cwd: Path, timeout: float = 300) -> Run:
        return run_process(ddpm_argv([self.fill(a, cwd) for a in args]), cwd, timeout, env=child_env(cwd))


def _save_npz(path: Path, images: np.ndarray) -> str:
    np.savez(path, images=images)
    return str(path)


def _save_stats(path: Path, mu: np.ndarray, sigma: np.ndarray, n: int = 40) -> str:
    np.savez(path, mu=mu, sigma=sigma, n=np.int64(n))
    return str(path)


def _cut_weights(folder: Path) -> None:
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(f)
    for v in tensors.values():
        v.fill_(float("nan"))
    save_file(tensors, f)


def _cifar_archive(folder: Path, seed: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = folder / "src"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            sub = src / split / cls
            sub.mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    archive = folder / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "train", arcname="train")
        tar.add(src / "test", arcname="test")
    return str(archive)
