"""``ddpm analytic-dpm``: estimate a model's Analytic-DPM moment table from training images and store it in the model
folder (``analytic_dpm.json`` beside ``model_index.json``; Diffusers ignores it).

The table (:class:`ddpm.schedulers.analytic.AnalyticMoments`) holds Γ_t = E||ε̂(x_t, t)||²/d for every training
timestep, with its Monte Carlo standard errors and the fingerprints of the schedule and weights it belongs to.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter

    p = subparsers.add_parser(
        "analytic-dpm",
        help="compute a model's Analytic-DPM moment table",
        description=(
            "Estimate the Analytic-DPM moments (Bao et al. 2022) of a model, Gamma_t = E||eps_model(x_t, t)||^2 / d "
            "for every training timestep t, by Monte Carlo over training images, and write them into the model "
            "folder as analytic_dpm.json (written atomically; Diffusers ignores the file). Sampling with "
            "analytic-ddpm or analytic-ddim needs it."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="FOLDER",
        help="pipeline folder (model_index.json, unet/, scheduler/) to compute the table for and write it into; "
        "ddpm/default: the bundled model's folder",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="training images: an image folder, an idx or .npz file, or a named set (fashion-mnist, cifar10[:PATH])",
    )
    p.add_argument(
        "--num-samples-per-timestep",
        type=int,
        default=100,
        metavar="N",
        help="Monte Carlo draws (x_0, noise) per timestep; the standard error falls as 1/sqrt(N). The estimate "
        "costs N x T UNet evaluations (T: the model's training timesteps) and keeps about "
        f"{BYTES_PER_DRAW} bytes per draw in memory: more than this machine's memory is refused",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=500,
        metavar="B",
        help="draws per UNet call (mixing timesteps); one above N x T is clamped to it (a batch that cannot fit "
        "memory is refused)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the image order and the noise, 0 <= seed < 2**63"
    )
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    p.set_defaults(func=run)


class _UsageError(Exception):
    pass


#: Memory the estimate keeps per draw (N x T of them): which image (int64, and once more while the permutations are
#: joined), its timestep (int64) and its value (float64), and the timestep table repeated (int64).
BYTES_PER_DRAW = 40


def _check_cost(N: int, T: int, batch_size: int) -> None:
    """Before any work: the N x T draws' bookkeeping fits this machine's memory (else :class:`_UsageError` naming
    the number of UNet evaluations)."""
    from ddpm.cli.options import human_bytes, memory_bytes

    draws = N * T
    have = memory_bytes()
    if have is not None and draws * BYTES_PER_DRAW > have:
        raise _UsageError(
            f"--num-samples-per-timestep {N}: {N} x {T} timesteps = {draws:,} UNet evaluations "
            f"({-(-draws // batch_size):,} calls of --batch-size {batch_size}), whose bookkeeping alone takes "
            f"{human_bytes(draws * BYTES_PER_DRAW)}, more than the {human_bytes(have)} of this machine's memory; "
            "allowed: a smaller value (the paper uses about 100)"
        )


def _check_args(args: argparse.Namespace) -> Path:
    if args.num_samples_per_timestep < 2:
        raise _UsageError(
            f"--num-samples-per-timestep must be >= 2 (a standard error needs two draws), got "
            f"{args.num_samples_per_timestep}"
        )
    if args.batch_size < 1:
        raise _UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    from ddpm.cli import UsageError
    from ddpm.cli.options import check_seed

    try:
        check_seed(args.seed)
    except UsageError as err:
        raise _UsageError(str(err)) from None
    if args.model == "ddpm/default":
        from ddpm.pipeline import bundled_model_path

        return bundled_model_path()
    folder = Path(args.model)
    if not (folder / "model_index.json").is_file():
        raise _UsageError(
            f"--model must be a local pipeline folder holding model_index.json (the table is written into it), "
            f"got {args.model}"
        )
    return folder


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except _UsageError as err:
        print(f"ddpm analytic-dpm: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"ddpm analytic-dpm: error: {message}", file=sys.stderr)
        return 1


def _check_batch(pipe, device, batch_size: int, draws: int) -> None:
    """A batch above the number of draws is clamped to it; what is left must fit (:func:`check_batch_fits`)."""
    from ddpm.cli import UsageError
    from ddpm.cli.options import check_batch_fits

    try:
        check_batch_fits("--batch-size", min(batch_size, draws), pipe, device)
    except UsageError as err:
        raise _UsageError(str(err)) from None


def _training_images(spec: str, unet_config, needed: int, generator):
    """uint8 [N, C, H, W] training images of the UNet's size: the whole set when it is held in memory, else
    ``needed`` of its images chosen at random."""
    import torch

    from ddpm import data as ddpm_data

    size = unet_config.sample_size
    resolution = size if isinstance(size, int) else size[0]
    try:
        dataset = ddpm_data.open_dataset(spec, resolution=resolution, channels=unet_config.in_channels, split="train")
    except ddpm_data.DataError as err:
        raise _UsageError(f"--data {spec}: {err}") from None
    if isinstance(dataset, ddpm_data.ArrayImageDataset):
        return dataset.images, dataset.name
    chosen = torch.randperm(len(dataset), generator=generator)[: min(needed, len(dataset))]
    return torch.stack([dataset[int(i)] for i in chosen]), dataset.name


def _run(args: argparse.Namespace) -> int:
    folder = _check_args(args)
    device = _resolve_device(args.device)

    import torch
    from tqdm.auto import tqdm

    from ddpm import __version__
    from ddpm.cli.options import check_finite_weights
    from ddpm.pipeline import DDPMPipeline
    from ddpm.schedulers.analytic import MOMENTS_FILE_NAME, estimate_moments

    pipe = DDPMPipeline.from_pretrained(folder)
    _check_cost(args.num_samples_per_timestep, pipe.scheduler.config.num_train_timesteps, args.batch_size)
    check_finite_weights(pipe.unet, args.model)
    _check_batch(
        pipe, device, args.batch_size, args.num_samples_per_timestep * pipe.scheduler.config.num_train_timesteps
    )
    unet, scheduler = pipe.unet.to(device), pipe.scheduler
    if device.type == "cpu":
        unet.to(memory_format=torch.channels_last)  # measured faster on CPU (docs/benchmarks.md)
    T = scheduler.config.num_train_timesteps
    N = args.num_samples_per_timestep
    generator = torch.Generator().manual_seed(args.seed)
    images, data_name = _training_images(args.data, unet.config, T * N, generator)
    if not args.no_progress:
        print(
            f"ddpm analytic-dpm: {N} x {T} timesteps = {T * N:,} UNet evaluations in batches of {args.batch_size}",
            file=sys.stderr,
        )

    bar = tqdm(total=T * N, unit="draw", desc="Analytic-DPM moments", disable=args.no_progress, file=sys.stderr)

    def advance(done: int, total: int) -> None:
        bar.update(done - bar.n)

    command = [
        "ddpm analytic-dpm",
        f"--model {shlex.quote(args.model)}",
        f"--data {shlex.quote(args.data)}",
        f"--num-samples-per-timestep {N}",
        f"--batch-size {args.batch_size}",
        f"--seed {args.seed}",
    ]
    metadata = {
        "data": args.data,
        "data_set": data_name,
        "num_training_images": int(images.shape[0]),
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": device.type,
        "command": " ".join(command),
        "ddpm_version": __version__,
        "torch_version": torch.__version__,
    }
    try:
        table = estimate_moments(
            unet,
            scheduler,
            images,
            num_samples_per_timestep=N,
            batch_size=args.batch_size,
            generator=generator,
            progress=advance,
            metadata=metadata,
        )
    finally:
        bar.close()
    path = table.save(folder / MOMENTS_FILE_NAME)
    import numpy as np

    print(
        f"wrote {path}: Gamma_t for {T} timesteps, {N} Monte Carlo samples per timestep ({T * N} UNet evaluations "
        f"on {images.shape[0]} training images of {data_name}), mean standard error {table.mean_standard_error:.2e} "
        f"(max {np.nanmax(table.standard_errors):.2e})",
        file=sys.stderr,
    )
    return 0
