"""``ddpm eval nll``: the variational bound in bits/dim over a data set (paper Table 1; docs/evaluation.md).

Crash-safe: the terms of every finished batch are kept in a work folder (``OUT.partial`` beside ``--out``, else
beside ``--json``, else ``ddpm-nll-HASH.partial`` here; or ``--work-dir``), and a rerun of the same command scores
only the images it had not finished."""

from __future__ import annotations

import math
import time
from pathlib import Path

from .common import (
    SOURCE_HELP,
    HelpFormatter,
    add_model_options,
    add_work_dir,
    command,
    finish_work_dir,
    load_model,
    need,
    work_dir,
    write_json,
)

#: The options of computing the bound over a data set (shared with ``rate-distortion``).
BOUND_BATCH = (
    "--batch-size",
    8,
    "images per model call; one above the number of images is clamped to it (a batch that cannot fit the device's "
    "memory is refused)",
)


def add_bound_options(p) -> None:
    """--num-samples (old spelling --num-images), --t-batch and --work-dir (the batch size comes with the model
    options, :data:`BOUND_BATCH`)."""
    from ddpm.cli.options import add_num_samples

    add_num_samples(p, 16, "the first N images of the set, or all", allow_all=True)
    p.add_argument("--t-batch", type=int, default=1, help="timesteps per model call")
    add_work_dir(p, "OUT.partial beside the output, else ddpm-nll-HASH.partial in the current folder")


def check_bound_options(args) -> None:
    need(args.num_samples is None or args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1 or all")
    need(args.t_batch >= 1, "--t-batch", args.t_batch, ">= 1")


def bound_work_dir(args, out: str | None) -> str:
    key = {
        "model": str(Path(args.model).absolute()) if Path(args.model).exists() else args.model,
        "data": args.data,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "clip": not args.no_clip,
        "decoder_cdf": args.decoder_cdf,
    }
    return work_dir(args, out, "nll", key)


def bound_of_data(args, work: str | None = None):
    """The bound of the first --num-samples images of --data under --model, with the command's settings; finished
    batches are kept in ``work`` (kept at the end: the caller removes it once its outputs are written)."""
    from ddpm.cli.options import check_batch_fits
    from ddpm.evaluation.nll_runs import bound_over_images
    from ddpm.evaluation.sources import model_images

    pipeline = load_model(args)
    x = model_images(args.data, pipeline.unet, args.num_samples)
    # a batch above the number of images is clamped to it; what is left must fit the device
    T = pipeline.scheduler.config.num_train_timesteps
    images_per_call = min(args.model_batch_size, max(1, len(x))) * min(args.t_batch, T)
    check_batch_fits(args.model_batch_flag, images_per_call, pipeline, pipeline.device)
    results = bound_over_images(
        pipeline.unet,
        pipeline.scheduler,
        x,
        seed=args.seed,
        batch_size=args.model_batch_size,
        t_batch=args.t_batch,
        clip_denoised=not args.no_clip,
        decoder_cdf=args.decoder_cdf,
        progress=not args.no_progress,
        work_dir=work,
        keep_work_dir=True,
    )
    check_finite_bound(results, args.model)
    return results


def check_finite_bound(results, model) -> None:
    """``RuntimeError`` (exit code 1) naming the terms of the bound that are not finite and how many images they
    touch: a NaN or infinite bound is never printed as a result."""
    import torch

    bad = {}
    for key, value in results.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            rows = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(1) if value.dim() else None
            bad[key] = int(rows.sum()) if rows is not None else 1
    if bad:
        terms = ", ".join(f"{k} ({n} image(s))" for k, n in bad.items())
        raise RuntimeError(f"the bound of {model} is not finite: {terms} hold NaN or infinity; no result written")


def add_nll(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="the variational bound on the NLL in bits/dim (paper Table 1)",
        description="Full-chain variational bound (L_T + sum L_t + L_0) of each image, in bits/dim, with one "
        "x_t ~ q(x_t | x_0) per timestep drawn from a generator seeded from (seed, image index): T model "
        "evaluations per image. Prints the mean; --out keeps every term (for the rate-distortion figure). "
        "The terms of finished batches are kept in a work folder: a killed run continues when rerun.",
    )
    add_model_options(p, batch=BOUND_BATCH)
    p.add_argument("--data", required=True, help="images to score: " + SOURCE_HELP.split(", or a pipeline")[0])
    add_bound_options(p)
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x_0 to [-1, 1]")
    p.add_argument(
        "--decoder-cdf",
        choices=("exact", "tanh"),
        default="exact",
        help="decoder bins: exact Gaussian, or the paper code's tanh approximation",
    )
    p.add_argument("--out", default=None, help=".npz for the per-image terms (terms_bpd, mse, prior_bpd, ...)")
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    p.set_defaults(func=command(name, run_nll))


def run_nll(args) -> int:
    from ddpm.cli.options import check_output
    from ddpm.evaluation.nll import summarize
    from ddpm.evaluation.nll_runs import save_bound

    check_bound_options(args)
    for option in ("--out", "--json"):
        if (path := getattr(args, option[2:])) is not None:
            check_output(option, path)
    work = bound_work_dir(args, args.out or args.json)
    check_output("--work-dir", work, "folder")
    start = time.perf_counter()
    results = bound_of_data(args, work)
    summary = summarize(results)
    summary.update(model=str(args.model), data=args.data, seed=args.seed, seconds=round(time.perf_counter() - start, 1))
    error = summary["total_bpd_std_error"]  # NaN for one image: no standard error to print
    spread = f" ± {error:.4f}" if math.isfinite(error) else " (one image: no standard error)"
    print(
        f"NLL bound {summary['total_bpd']:.4f}{spread} bits/dim over "
        f"{summary['num_images']} images (prior {summary['prior_bpd']:.2e}, decoder {summary['decoder_bpd']:.4f}, "
        f"rate {summary['rate_bpd']:.4f}; {summary['seconds']} s)"
    )
    if args.out:
        save_bound(args.out, results, summary)
    if args.json:
        write_json(args.json, summary)
    finish_work_dir(work)
    return 0
