"""The Diffusers peer of the bundled default model: the same architecture trained the Diffusers way.

Issue #7 asks that the bundled model's FID is not beaten by "the same architecture trained with Diffusers'
UNet2DModel and the same steps, batch and learning rate". This script trains that peer:

* model: ``diffusers.UNet2DModel`` built from the preset's UNet config (``fashion-mnist-default``);
* data: the same 60,000 Fashion-MNIST training images at 28x28, scaled to [-1, 1], random horizontal flips, a shuffled
  ``DataLoader`` (Diffusers' example reads them through ``datasets``; the pixels are the same);
* loop: Diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` with its defaults for everything
  the issue does not fix: AdamW (betas 0.95/0.999, weight decay 1e-6, eps 1e-8), the ``cosine`` schedule from
  ``diffusers.optimization.get_scheduler`` with 500 warm-up steps, ``DDPMScheduler.add_noise``,
  ``F.mse_loss(out.float(), noise.float())``, ``clip_grad_norm_(1.0)``, and ``EMAModel`` with its warm-up
  (inv_gamma 1, power 3/4, max decay 0.9999);
* fixed by the issue, taken from the preset: 5000 steps, batch 64, learning rate 5e-4.

The EMA weights are saved as a pipeline folder whose scheduler is the preset's sampling scheduler (fixed_large,
clip_sample), so both models are sampled by the same sampler and only the weights differ. Run (about 45 min on one
CPU thread)::

    .venv/bin/python -m benchmarks.default_model_peer --output-dir runs/peer --threads 1
    ddpm eval generate --model runs/peer/pipeline --num-samples 2000 --num-inference-steps 250 --out peer.npz
    ddpm eval fid peer.npz fashion-mnist@test --ref-stats fmnist_test.npz

``--compare OURS.npz PEER.npz --ref-stats S.npz`` then scores both sample sets once more from one feature pass each:
the FID of each whole set and of each half (images 0..n/2-1 and n/2..n-1), so the gap between the two models can be
read against the gap between two halves of one model's samples (the sampling noise of FID at that size). A model's
set may be several files joined by commas (``ours_seed0.npz,ours_seed1.npz``): they are pooled, and each file is a
part. ``--noise-mse PIPELINE ...`` prints each model's noise-prediction error on held-out test images per timestep.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _features(path: str, extractor):
    """Inception features of the uint8 NHWC ``images`` in an .npz, or features saved earlier as an [N, 2048] .npy."""
    import numpy as np

    if path.endswith(".npy"):
        return np.load(path)
    with np.load(path) as data:
        return extractor(data["images"])


def compare(groups: list[str], ref_stats: str) -> dict:
    """FID of each model's sample set against ``ref_stats``, whole and in parts.

    Each entry of ``groups`` is one model's samples: an .npz (or a features .npy), or several joined by commas (e.g.
    two seeds), pooled into one set. The parts are the files of a pooled set, or the two halves of a single file.
    """
    import numpy as np

    from ddpm.evaluation.fid import FeatureStatistics, compute_statistics, fid_from_statistics
    from ddpm.evaluation.inception import InceptionFeatureExtractor

    ref = FeatureStatistics.load(ref_stats)
    extractor = None if all(p.endswith(".npy") for g in groups for p in g.split(",")) else InceptionFeatureExtractor()
    result = {}
    for group in groups:
        parts = [_features(path, extractor) for path in group.split(",")]
        if len(parts) == 1:
            half = len(parts[0]) // 2
            parts = [parts[0][:half], parts[0][half:]]
        features = np.concatenate(parts)
        result[group] = {
            "n": len(features),
            "fid": fid_from_statistics(compute_statistics(features), ref),
            "fid_parts": [fid_from_statistics(compute_statistics(part), ref) for part in parts],
            "n_parts": [len(part) for part in parts],
        }
        print(json.dumps({group: result[group]}), flush=True)
    return result


def noise_mse(pipelines: list[str], data: str = "fashion-mnist@test", n: int = 512, seed: int = 0) -> dict:
    """Held-out noise-prediction error of each pipeline's UNet: ``mean((eps_hat - eps)^2)`` on the first ``n`` test
    images at t = 10, 50, 150, 500, 900, and its mean over t = 25, 75, ..., 975 (the L_simple test loss). The
    same images, noise and t for every model."""
    from ddpm import DDPMPipeline
    from ddpm.data import open_dataset, to_model_range

    name, _, split = data.partition("@")
    x0 = to_model_range(open_dataset(name, split=split or "test").images[:n])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    result = {}
    for path in pipelines:
        pipe = DDPMPipeline.from_pretrained(path)

        def mse(t: int, pipe=pipe) -> float:
            tt = torch.full((len(x0),), t)
            with torch.inference_mode():
                eps = pipe.unet(pipe.scheduler.add_noise(x0, noise, tt), tt).sample
            return (eps - noise).square().mean().item()

        row = {f"t={t}": mse(t) for t in (10, 50, 150, 500, 900)}
        row["mean_over_t"] = sum(mse(t) for t in range(25, 1000, 50)) / 20
        result[path] = row
        print(json.dumps({path: row}), flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--compare", nargs="+", metavar="SAMPLES", help="score sample sets, one per model (a,b pools files; see above)"
    )
    parser.add_argument("--noise-mse", nargs="+", metavar="PIPELINE", help="held-out noise-prediction error (above)")
    parser.add_argument("--ref-stats", help="reference statistics .npz for --compare")
    parser.add_argument("--output-dir", help="where the pipeline folder and metrics.jsonl go")
    parser.add_argument("--preset", default="fashion-mnist-default", help="the preset whose architecture is trained")
    parser.add_argument("--data", default="fashion-mnist", help="data source (as for ddpm train --data)")
    parser.add_argument("--max-steps", type=int, default=None, help="default: the preset's max_steps")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's batch_size")
    parser.add_argument("--lr", type=float, default=None, help="default: the preset's lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        if not args.ref_stats:
            parser.error("--compare needs --ref-stats")
        compare(args.compare, args.ref_stats)
        return 0
    if args.noise_mse:
        noise_mse(args.noise_mse)
        return 0
    if not args.output_dir:
        parser.error("--output-dir is required to train")

    import diffusers
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from ddpm.data import open_dataset, to_model_range
    from ddpm.training.config import resolve_config

    cfg = resolve_config(args.preset)
    steps = args.max_steps or cfg.max_steps
    batch = args.batch_size or cfg.batch_size
    lr = args.lr or cfg.lr
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    model = diffusers.UNet2DModel(**cfg.unet_config()).train()
    train_sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_sched = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=steps)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                   model_cls=diffusers.UNet2DModel, model_config=model.config)  # fmt: skip

    dataset = open_dataset(args.data, resolution=cfg.resolution, channels=cfg.channels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
    metrics = (out / "metrics.jsonl").open("w")
    step, t0, losses = 0, time.perf_counter(), []
    while step < steps:
        for images in loader:
            clean = to_model_range(images)
            if cfg.hflip:
                flip = torch.rand(clean.shape[0]) < 0.5
                clean = torch.where(flip[:, None, None, None], clean.flip(-1), clean)
            noise = torch.randn_like(clean)
            t = torch.randint(0, train_sched.config.num_train_timesteps, (clean.shape[0],))
            noisy = train_sched.add_noise(clean, noise, t)
            loss = F.mse_loss(model(noisy, t).sample.float(), noise.float())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_sched.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())
            step += 1
            losses.append(loss.item())
            if step % args.log_every == 0 or step == steps:
                row = {"step": step, "loss": sum(losses) / len(losses), "lr": lr_sched.get_last_lr()[0],
                       "ema_decay": ema.cur_decay_value, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                print(json.dumps(row), flush=True)
                losses = []
            if step >= steps:
                break
    metrics.close()

    ema.copy_to(model.parameters())
    sample_sched = diffusers.DDPMScheduler(**cfg.scheduler_config())
    diffusers.DDPMPipeline(unet=model.eval(), scheduler=sample_sched).save_pretrained(out / "pipeline")
    print(f"wrote {out / 'pipeline'} after {step} steps in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
