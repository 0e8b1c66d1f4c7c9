"""``ddpm train``: train a DDPM with the paper's recipes, resume exactly, run on many GPUs through torchrun.

Precedence of the settings, lowest first: built-in defaults (the paper's CIFAR-10 recipe), ``--config`` (a preset),
``--model-config`` (a UNet config.json), then the options given on the command line. With ``--resume`` the run's own
``<output-dir>/config.json`` takes the place of the defaults, so ``ddpm train --output-dir RUN --resume`` continues a
run with nothing else repeated.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ddpm.schedulers.vocabulary import PREDICTION_TYPES, VARIANCE_TYPES

EPILOG = """\
examples:
  ddpm train --config cifar10 --data cifar10:/data/cifar10-jpeg.tar.gz --output-dir runs/cifar10
  ddpm train --config fashion-mnist-small --data fashion-mnist --output-dir runs/fm --max-steps 2000
  ddpm train --output-dir runs/cifar10 --resume
  torchrun --nproc_per_node 8 -m ddpm train --config cifar10 --data cifar10 --output-dir runs/cifar10
"""


class _Explicit:
    """Mix-in for argparse actions: remember which options the user gave (for the precedence rules)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        given = set(getattr(namespace, "_explicit", set()))
        given.add(self.dest)
        namespace._explicit = given


class _Store(_Explicit, argparse._StoreAction):
    pass


class _Bool(_Explicit, argparse.BooleanOptionalAction):
    pass


# dest -> (flag, type, help); defaults come from TrainConfig so --help shows the real ones.
_OPTIONS = [
    ("data", str, "training images: an image folder, idx, .npz, fashion-mnist, cifar10[:PATH] or hf:NAME[:SPLIT]"),
    ("resolution", int, "image side in pixels"),
    ("channels", int, "image channels (1 or 3)"),
    ("batch_size", int, "global batch size (split across processes)"),
    ("lr", float, "Adam learning rate"),
    ("warmup_steps", int, "linear learning-rate warm-up steps"),
    ("lr_schedule", str, "after the warm-up: constant (the paper), or cosine / linear decay to 0 at --max-steps"),
    ("grad_clip", float, "clip the global gradient norm to this (0: no clipping)"),
    ("ema_decay", float, "decay of the exponential moving average of the weights"),
    ("dropout", float, "UNet dropout"),
    ("max_steps", int, "train until this many optimiser steps"),
    ("checkpoint_every", int, "write a checkpoint and re-export pipeline/ every N steps"),
    ("sample_every", int, "write a sample grid every N steps (0: never)"),
    ("sample_steps", int, "denoising steps of the sample grids (strided; 1000 = full chain)"),
    ("num_samples", int, "images per sample grid"),
    ("keep_checkpoints", int, "how many newest checkpoints to keep"),
    ("seed", int, "seed of the weights, noise, timesteps, flips and data order"),
    # docs/training.md: logging, Hugging Face data, gradient accumulation, proxy FID
    ("grad_accum", int, "accumulate K micro-batches of --batch-size per update (exactly a batch K times larger)"),
    ("report_to", str, "none, tensorboard, wandb (offline) or tensorboard,wandb; auto: tensorboard if installed"),
    ("progress_interval", float, "off a terminal: a plain progress line at most every S seconds (0: at every log)"),
    ("image_column", str, "Hugging Face data: the image column (default: the first Image feature)"),
    ("fid_every", int, "a proxy FID every N steps (few-step sampler, --fid-num-samples images; 0: never)"),
    ("fid_ref_stats", str, "reference statistics .npz of the proxy FID (made by ddpm eval fid ... --ref-stats FILE)"),
    ("fid_num_samples", int, "images of each proxy FID"),
    ("fid_num_inference_steps", int, "sampler steps of each proxy FID"),
    ("fid_sampler", str, "sampler of the proxy FID: ddim, dpm-solver++ or ddpm"),
    ("precision", str, "fp32, bf16 (autocast) or fp16 (autocast + gradient scaler)"),
    ("num_workers", int, "data-loading worker processes"),
    ("log_every", int, "append to metrics.jsonl every N steps"),
    ("device", str, "auto, cpu, cuda or cuda:N (under torchrun: the local rank's GPU)"),
    ("vlb_weight", float, "lambda of the hybrid loss L_simple + lambda*L_vlb (learned variance only)"),
    ("snr_gamma", float, "Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; 0: unweighted L_simple (the paper)"),
]


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter
    from ddpm.training.config import LR_SCHEDULES, PRECISIONS, TrainConfig

    defaults = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train a model (the paper's recipes; exact resume; torchrun for many GPUs)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--config",
        action=_Store,
        default=None,
        metavar="PRESET",
        help="preset: a name (cifar10, celebahq256, lsun256, fashion-mnist-small) or a JSON file",
    )
    p.add_argument("--model-config", action=_Store, default=None, metavar="FILE", help="UNet config.json (Diffusers)")
    p.add_argument("--output-dir", action=_Store, default=defaults.output_dir, help="run folder")
    for dest, typ, text in _OPTIONS:
        choices = {"precision": PRECISIONS, "lr_schedule": LR_SCHEDULES}
        kwargs = {"choices": choices[dest]} if dest in choices else {}
        p.add_argument(
            "--" + dest.replace("_", "-"), dest=dest, action=_Store, type=typ, default=getattr(defaults, dest),
            help=text, **kwargs,
        )  # fmt: skip
    p.add_argument("--hflip", action=_Bool, default=defaults.hflip, help="random horizontal flips")
    p.add_argument(
        "--prediction-type",
        action=_Store,
        choices=PREDICTION_TYPES,
        default=defaults.scheduler["prediction_type"],
        help="what the network predicts",
    )
    p.add_argument(
        "--variance-type",
        action=_Store,
        choices=VARIANCE_TYPES,
        default=defaults.scheduler["variance_type"],
        help="reverse-process variance; learned_range doubles the output channels and adds L_vlb (hybrid loss)",
    )
    p.add_argument("--ema-warmup", action=_Bool, default=defaults.ema_warmup, help="Diffusers' EMA warm-up")
    p.add_argument(
        "--gradient-checkpointing", action=_Bool, default=defaults.gradient_checkpointing, help="save memory"
    )
    p.add_argument(
        "--compile", action=_Bool, default=defaults.compile,
        help="torch.compile the UNet for training (a one-off compilation; see docs/benchmarks.md for what it pays)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --output-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resolve_from_args(args):
    from ddpm.training.config import TrainConfig, load_json_object, resolve_config

    given = set(getattr(args, "_explicit", set()))
    overrides = {dest: getattr(args, dest) for dest, _, _ in _OPTIONS if dest in given}
    for dest in ("hflip", "ema_warmup", "gradient_checkpointing", "compile"):
        if dest in given:
            overrides[dest] = getattr(args, dest)
    overrides["output_dir"] = args.output_dir
    scheduler = {}
    if "prediction_type" in given:
        scheduler["prediction_type"] = args.prediction_type
    if "variance_type" in given:
        scheduler["variance_type"] = args.variance_type
    base = None
    saved = Path(args.output_dir) / "config.json"
    if args.resume and saved.is_file():
        base = TrainConfig.from_dict(load_json_object(saved, "run config"), source=str(saved))
    cfg = resolve_config(preset=args.config, model_config=args.model_config, base=base, **overrides)
    if scheduler:
        cfg.scheduler.update(scheduler)
        cfg.validate()
    return cfg


def run(args) -> int:
    from ddpm.data import DataError
    from ddpm.training.checkpoint import CheckpointError
    from ddpm.training.config import ConfigError
    from ddpm.training.trainer import Trainer, TrainingError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = resolve_from_args(args)
    except ConfigError as err:
        print(f"ddpm train: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(cfg.to_json())
        return 0
    if cfg.fid_every:  # the proxy FID is handed to the Trainer from here: training does not import evaluation
        from functools import partial

        evaluator = _proxy_fid(cfg)
        if evaluator is None:
            return 2
        Trainer = partial(Trainer, evaluator=evaluator)
    try:
        result = Trainer(cfg, resume=args.resume, progress=False if args.quiet else None).run()
    except (DataError, ConfigError) as err:
        print(f"ddpm train: {err}", file=sys.stderr)
        return 2
    except (TrainingError, CheckpointError) as err:
        print(f"ddpm train: {err}", file=sys.stderr)
        return 1
    if result.pipeline_dir is not None:
        print(f"trained to step {result.step}; pipeline (EMA weights): {result.pipeline_dir}")
    return 0


def _proxy_fid(cfg):
    """The proxy-FID evaluator of ``--fid-every`` (its reference file is read now), or None after printing why not."""
    from ddpm.evaluation.proxy_fid import ProxyFID

    try:
        evaluator = ProxyFID(
            cfg.fid_ref_stats, num_samples=cfg.fid_num_samples, num_inference_steps=cfg.fid_num_inference_steps,
            sampler=cfg.fid_sampler, seed=cfg.sample_seed,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        print(f"ddpm train: error: {err}", file=sys.stderr)
        return None
    logging.getLogger(__name__).info("every %d steps: %s", cfg.fid_every, evaluator.describe())
    return evaluator
