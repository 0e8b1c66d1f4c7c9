"""``ddpm train``: train a DDPM with the paper's recipes, resume exactly, run on many GPUs through torchrun.

Precedence of the settings, lowest first: built-in defaults (the paper's CIFAR-10 recipe), ``--config`` (a preset),
``--model-config`` (a UNet config.json), then the options given on the command line. With ``--resume`` the run's own
``<output-dir>/config.json`` takes the place of the defaults, so ``ddpm train --output-dir RUN --resume`` continues a
run with nothing else repeated (if config.json was deleted, the newest checkpoint's copy is used).

Bad values are refused before anything starts, in one line ``ddpm train: error: --option: ...; allowed: ...`` with exit
code 2. SIGINT / SIGTERM save a checkpoint of the current step, print the command that continues the run and exit with
130 / 143. Old spellings ``--sample-steps`` and ``--quiet`` still work, with a notice.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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


class _DeprecatedFlag(argparse.Action):
    """An older spelling of a flag (no value), with a one-line notice on stderr."""

    def __init__(self, option_strings, dest, new_name: str = "", **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, True)


class _Deprecated(_Store):
    """An older spelling: stores into the new option's destination, with a one-line notice on stderr."""

    def __init__(self, option_strings, dest, new_name: str = "", **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


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
    ("ema_decay", float, "decay of the exponential moving average of the weights (its limit, with --ema-warmup)"),
    ("ema_inv_gamma", float, "EMA warm-up: decay = min(ema_decay, 1 - (1 + step/inv_gamma)^-power)"),
    ("ema_power", float, "EMA warm-up power (Diffusers' default 2/3; 3/4 reaches the limit sooner)"),
    ("grid_weights", str, "weights of the sample grids: ema (step-N.png), raw (step-N-raw.png) or both"),
    ("dropout", float, "UNet dropout"),
    ("max_steps", int, "train until this many optimiser steps"),
    ("checkpoint_every", int, "write a checkpoint and re-export pipeline/ every N steps"),
    ("sample_every", int, "write a sample grid every N steps (0: never)"),
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
    ("threads", int, "CPU threads of this process (1 .. 4 x the CPU count; 0: PyTorch's default); recorded for resume"),
]
# options stored elsewhere than under their own name: dest -> TrainConfig field
_RENAMED = {"num_inference_steps": "sample_steps"}


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter
    from ddpm.training.config import GRID_WEIGHTS, LR_SCHEDULES, PRECISIONS, TrainConfig, preset_names

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
        help=f"preset: a name ({', '.join(preset_names())}) or a JSON file",
    )
    p.add_argument("--model-config", action=_Store, default=None, metavar="FILE", help="UNet config.json (Diffusers)")
    p.add_argument("--output-dir", action=_Store, default=defaults.output_dir, help="run folder")
    for dest, typ, text in _OPTIONS:
        choices = {"precision": PRECISIONS, "lr_schedule": LR_SCHEDULES, "grid_weights": GRID_WEIGHTS}
        kwargs = {"choices": choices[dest]} if dest in choices else {}
        p.add_argument(
            "--" + dest.replace("_", "-"), dest=dest, action=_Store, type=typ, default=getattr(defaults, dest),
            help=text, **kwargs,
        )  # fmt: skip
    p.add_argument(
        "--num-inference-steps", dest="num_inference_steps", action=_Store, type=int, default=defaults.sample_steps,
        metavar="N", help="denoising steps of the sample grids drawn during training (strided; 1000 = full chain)",
    )  # fmt: skip
    p.add_argument(
        "--sample-steps", dest="num_inference_steps", action=_Deprecated, type=int, new_name="--num-inference-steps",
        help=argparse.SUPPRESS,
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
    p.add_argument(
        "--ema-warmup",
        action=_Bool,
        default=defaults.ema_warmup,
        help="Diffusers' EMA warm-up (off in the paper presets)",
    )
    p.add_argument(
        "--gradient-checkpointing", action=_Bool, default=defaults.gradient_checkpointing, help="save memory"
    )
    p.add_argument(
        "--compile", action=_Bool, default=defaults.compile,
        help="torch.compile the UNet for training (a one-off compilation; see docs/benchmarks.md for what it pays)",
    )  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in --output-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--quiet", dest="no_progress", action=_DeprecatedFlag, nargs=0, new_name="--no-progress", help=argparse.SUPPRESS
    )
    p.set_defaults(func=run)


def resolve_from_args(args):
    from ddpm.training.config import TrainConfig, load_json_object, resolve_config

    given = set(getattr(args, "_explicit", set()))
    overrides = {dest: getattr(args, dest) for dest, _, _ in _OPTIONS if dest in given}
    for dest, field_name in _RENAMED.items():
        if dest in given:
            overrides[field_name] = getattr(args, dest)
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
    elif args.resume:
        base = _config_from_checkpoint(Path(args.output_dir))
    cfg = resolve_config(preset=args.config, model_config=args.model_config, base=base, **overrides)
    if scheduler:
        cfg.scheduler.update(scheduler)
        cfg.validate()
    return cfg


def _config_from_checkpoint(run: Path):
    """The run's config from its newest intact checkpoint (config.json was deleted), or None without checkpoints."""
    from ddpm.training import checkpoint as ckpt
    from ddpm.training.config import ConfigError, TrainConfig

    try:
        found = ckpt.load_latest_checkpoint(run / "checkpoints")
    except ckpt.CheckpointError as err:
        raise ConfigError(f"--resume: {run / 'config.json'} is missing and {err}") from None
    if found is None:
        return None
    payload, path = found
    print(f"ddpm train: {run / 'config.json'} is missing; using the config stored in {path}", file=sys.stderr)
    return TrainConfig.from_dict(json.loads(payload["config"]), source=str(path))


# TrainConfig field -> the option that sets it, for error lines; fields without an option are named as keys of --config
_FIELD_OPTIONS = {
    "sample_steps": "--num-inference-steps",
    "model": "--model-config",
    "output_dir": "--output-dir",
    "preset": "--config",
    "model_config": "--model-config",
    **{dest: "--" + dest.replace("_", "-") for dest, _, _ in _OPTIONS},
    **{dest: "--" + dest.replace("_", "-") for dest in ("hflip", "ema_warmup", "gradient_checkpointing", "compile")},
}


def _config_error(err) -> str:
    """``ddpm train: error: --option: what was wrong; allowed: ...`` for a ConfigError naming one option."""
    key = getattr(err, "key", None)
    if key is None:
        return f"ddpm train: error: {err}"
    option = _FIELD_OPTIONS.get(key, f"--config ({key})")
    if getattr(err, "reason", ""):  # the error says what was wrong without the value: --option: value: reason
        value = "" if err.value is None else f"{err.value!r}: "
        allowed = f"; allowed: {err.allowed}" if err.allowed else ""
        return f"ddpm train: error: {option}: {value}{err.reason}{allowed}"
    text = str(err)
    detail = text.split(": ", 1)[1] if text.startswith("invalid ") and ": " in text else text
    if err.allowed is None:
        return f"ddpm train: error: {option}: {detail}"
    if detail.startswith("must be"):
        detail = "invalid value"
    value = f"{err.value!r}: " if err.value is not None and not text.startswith("model:") else ""
    return f"ddpm train: error: {option}: {value}{detail}; allowed: {err.allowed}"


def _default_threads(cfg, args) -> None:
    """A new run without ``--threads`` takes the cores other processes leave idle (:mod:`ddpm.threads`; torch's
    one-per-core default ran 25-30x slower beside one busy process on 2 cores). The count goes into the run's config,
    so ``--resume`` uses it again and stays exact. Left alone: resumed runs (they keep what they started with),
    torchrun (its processes share the machine by design) and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``."""
    import os

    if cfg.threads or args.resume or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return
    if str(cfg.device).startswith(("cuda", "mps")):
        return
    import torch

    if cfg.device == "auto" and torch.cuda.is_available():
        return
    from ddpm.threads import auto_threads, usable_cores

    cfg.threads = auto_threads()
    if cfg.threads < usable_cores():
        print(
            f"ddpm train: {cfg.threads} CPU thread(s): other processes keep the other cores busy "
            "(--threads N to choose)",
            file=sys.stderr,
        )


def run(args) -> int:
    from ddpm.data import DataError
    from ddpm.training import run_folder
    from ddpm.training.checkpoint import CheckpointError
    from ddpm.training.config import ConfigError
    from ddpm.training.trainer import Trainer, TrainingError, TrainingInterrupted

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = resolve_from_args(args)
        if not args.dry_run:
            run_folder.check_output_dir(cfg.output_dir)
            run_folder.check_device(cfg.device)
            _check_memory(cfg)
    except ConfigError as err:
        print(_config_error(err), file=sys.stderr)
        return 2
    if args.dry_run:
        sys.stdout.write(cfg.to_json())
        return 0
    _default_threads(cfg, args)
    if cfg.fid_every:  # the proxy FID is handed to the Trainer from here: training does not import evaluation
        from functools import partial

        evaluator = _proxy_fid(cfg)
        if evaluator is None:
            return 2
        Trainer = partial(Trainer, evaluator=evaluator)
    try:
        result = Trainer(cfg, resume=args.resume, progress=False if args.no_progress else None).run()
    except ConfigError as err:
        print(_config_error(err), file=sys.stderr)
        return 2
    except (DataError, run_folder.RunFolderLockedError) as err:
        print(f"ddpm train: error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, from rank 0
            print(f"ddpm train: {err}", file=sys.stderr)
            print(err.resume_command)
        return err.exit_code
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
        print(_proxy_fid_error(err), file=sys.stderr)
        return None
    logging.getLogger(__name__).info("every %d steps: %s", cfg.fid_every, evaluator.describe())
    return evaluator


def _proxy_fid_error(err: Exception) -> str:
    """``--fid-ref-stats: 'X': reason; allowed: ...`` for the proxy FID's ``fid_ref_stats='X': reason`` errors."""
    text = str(err)
    field, sep, rest = text.partition("=")
    if sep and field in _FIELD_OPTIONS and ": " in rest:
        value, reason = rest.split(": ", 1)
        allowed = "statistics made by ddpm eval fid SOURCE REFERENCE --ref-stats FILE"
        return f"ddpm train: error: {_FIELD_OPTIONS[field]}: {value}: {reason}; allowed: {allowed}"
    return f"ddpm train: error: {text}"


def _check_memory(cfg) -> None:
    """Refuse, before anything starts, a batch (or model) whose lower bound of one step's memory exceeds this
    process's device: :func:`ddpm.training.config.check_step_fits` (a batch of 10^9 images is otherwise minutes of
    set-up before an out-of-memory error, or an endless loop over a small data set)."""
    import torch

    from ddpm.training.config import check_step_fits

    world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    device = str(cfg.device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    have, where = None, "this machine's memory"
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.partition(":")[2] or os.environ.get("LOCAL_RANK", "0") or 0)
        if index < torch.cuda.device_count():
            have, where = torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}'s memory"
    elif device == "cpu":
        try:
            have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):  # pragma: no cover - platforms without sysconf
            have = None
    check_step_fits(cfg, have, where, world)
