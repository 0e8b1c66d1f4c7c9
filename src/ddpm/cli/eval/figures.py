"""The paper's figures: ``ddpm eval progressive`` (Fig. 6), ``shared-latent`` (Fig. 7), ``interpolate`` (Fig. 8)
and ``rate-distortion`` (Fig. 5). The figures themselves are :mod:`ddpm.evaluation.figures`."""

from __future__ import annotations

import math

from .common import (
    STEPS_RECOMMENDED,
    HelpFormatter,
    UsageError,
    add_model_options,
    command,
    float_list,
    int_list,
    load_model,
    need,
)
from .nll import BOUND_BATCH, add_bound_options, bound_of_data, bound_work_dir, check_bound_options


def _check_out(path: str, kind: str = "file") -> None:
    from ddpm.cli.options import check_output

    check_output("--out", path, kind)


def _check_png(path: str) -> None:
    """A figure is written as one PNG: ``--out`` must end in .png (a PNG under another name misleads)."""
    _check_out(path)
    need(str(path).lower().endswith(".png"), "--out", path, "a path ending in .png")


def _check_figure(option: str, value, rows: int, cols: int, pipeline, args, batch: int) -> None:
    """Before sampling: the figure (held whole in memory, one PNG) and its sampling batch fit."""
    from ddpm.cli.options import check_figure

    check_figure(option, value, rows, cols, pipeline, _picture(args, {})["scale"], pipeline.device, batch)


def _check_timesteps(option: str, timesteps, T: int) -> None:
    bad = [t for t in timesteps if not 0 <= t < T]
    need(not bad, option, ",".join(map(str, timesteps)), f"timesteps of this model, in [0, {T - 1}]")


def _add_picture_options(p) -> None:
    p.add_argument(
        "--scale",
        default="auto",
        metavar="N",
        help="enlarge the PNG N times (nearest neighbour; 1: raw pixels); auto: long side >= 512 px, tiles >= 64 px",
    )
    p.add_argument("--no-labels", action="store_true", help="no labels (t, lambda, rows, title) around the images")


def _picture(args, labels: dict) -> dict:
    """The keyword arguments of ``save_rows`` for these options: the scale, and the labels unless --no-labels."""
    from ddpm.images import MAX_SCALE, check_scale

    try:
        scale = check_scale(args.scale)
    except ValueError:
        raise UsageError(f"--scale must be 'auto' or an integer in 1..{MAX_SCALE}, got {args.scale}") from None
    return {"scale": scale, **({} if args.no_labels else labels)}


def add_progressive(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="Fig. 6: predicted x_0 every k reverse steps",
        description="Sample images and show the predicted x_0 (eq. 15) after every --every reverse steps; one "
        "row per image, from the first step (left) to the final sample (right).",
    )
    from ddpm.cli.options import add_num_samples

    add_model_options(p, steps_default=STEPS_RECOMMENDED, sampler=True)
    add_num_samples(p, 4, "rows (images)")
    p.add_argument("--every", type=int, default=100, help="reverse steps between columns")
    p.add_argument("--out", default="progressive.png", help="output PNG (*.png)")
    _add_picture_options(p)
    p.set_defaults(func=command(name, run_progressive))


def run_progressive(args) -> int:
    from ddpm.evaluation.figure_rows import progressive_labels
    from ddpm.evaluation.figures import progressive_generation, save_rows

    need(args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1")
    need(args.every >= 1, "--every", args.every, ">= 1")
    _check_png(args.out)
    _picture(args, {})
    pipeline = load_model(args)
    steps = args.num_inference_steps or pipeline.scheduler.config.num_train_timesteps
    columns = -(-steps // args.every) + 1  # steps 0, every, 2 every, ... and the last (at most)
    _check_figure("--num-samples", args.num_samples, args.num_samples, columns, pipeline, args, args.num_samples)
    frames, timesteps = progressive_generation(
        pipeline, args.num_samples, every=args.every, seed=args.seed, num_inference_steps=args.num_inference_steps
    )
    save_rows(list(frames), args.out, **_picture(args, progressive_labels(timesteps)))
    print(f"wrote {args.out}: {args.num_samples} rows x {len(timesteps)} columns (timesteps {timesteps})")
    return 0


def add_shared_latent(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="Fig. 7: samples from one shared x_t, for several t",
        description="For each t, one x_t (first column) and samples of p(x_0 | x_t) from it. x_t comes from one "
        "reverse-process run from noise, or from q(x_t | x_0) of a real image with --data. Timesteps are ours "
        "(0..T-1): the paper's t = 1000, 750, 500, 250 are 999, 749, 499, 249 (the default, scaled to the model's T).",
    )
    add_model_options(p)
    p.add_argument("--timesteps", type=int_list, default=None, help="comma-separated timesteps (ours, 0..T-1)")
    p.add_argument("--num-samples", type=int, default=3, help="samples per row")
    p.add_argument("--data", default=None, help="encode a real image instead (a data source; see --index)")
    p.add_argument("--index", type=int, default=0, help="which image of --data")
    p.add_argument("--out", default="shared_latent.png", help="output PNG (*.png)")
    _add_picture_options(p)
    p.set_defaults(func=command(name, run_shared_latent))


def run_shared_latent(args) -> int:
    from ddpm.evaluation.figure_rows import paper_timesteps, shared_latent_labels, shared_latent_rows
    from ddpm.evaluation.figures import save_rows, shared_latent_samples
    from ddpm.evaluation.nll import to_model_space
    from ddpm.evaluation.sources import model_images

    need(args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1")
    need(args.index >= 0, "--index", args.index, ">= 0")
    _check_png(args.out)
    _picture(args, {})
    pipeline = load_model(args)
    T = pipeline.scheduler.config.num_train_timesteps
    timesteps = args.timesteps or paper_timesteps(T)
    _check_timesteps("--timesteps", timesteps, T)
    n = args.num_samples
    _check_figure("--num-samples", n, len(timesteps), n + 1, pipeline, args, n)
    x0 = None
    if args.data:
        x0 = to_model_space(model_images(args.data, pipeline.unet, indices=[args.index]))
    rows = shared_latent_samples(
        pipeline.unet, pipeline.scheduler, timesteps, num_samples=args.num_samples, seed=args.seed, x0=x0
    )
    labels = shared_latent_labels([t for t, _, _ in rows], args.num_samples)
    save_rows(shared_latent_rows(rows), args.out, **_picture(args, labels))
    print(f"wrote {args.out}: rows for t = {[t for t, _, _ in rows]} (first column x_t)")
    return 0


def add_interpolate(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="Fig. 8: interpolation of two real images through x_t",
        description="Encode two images with q(x_t | x_0) using the same noise, mix (1 - λ) x_t + λ x'_t and run "
        "the reverse process with the same reverse noise for every λ. Row: source A, λ = 0 ... 1, source B. "
        "--t is ours (0..T-1); the default is the paper's t = 500 scaled to the model's T.",
    )
    add_model_options(p)
    p.add_argument("--data", required=True, help="data source of the two images (e.g. cifar10@test)")
    p.add_argument("--pairs", default="0,1", help="image indices, two per row: 0,1[,2,3 ...]")
    p.add_argument("--t", type=int, default=None, help="timestep of the mix (ours)")
    p.add_argument(
        "--lambdas", type=float_list, default=None, help="comma-separated λ in [0, 1]; default 0, 0.1, ..., 1"
    )
    p.add_argument("--out", default="interpolate.png", help="output PNG (*.png)")
    _add_picture_options(p)
    p.set_defaults(func=command(name, run_interpolate))


def run_interpolate(args) -> int:
    from ddpm.evaluation.figure_rows import (
        PAPER_INTERPOLATION_T,
        interpolation_labels,
        interpolation_rows,
        paper_timesteps,
    )
    from ddpm.evaluation.figures import PAPER_LAMBDAS, save_rows
    from ddpm.evaluation.sources import model_images

    try:
        indices = int_list(args.pairs)
    except ValueError:
        raise UsageError(f"--pairs must be comma-separated image indices, got {args.pairs}") from None
    need(len(indices) >= 2 and len(indices) % 2 == 0, "--pairs", args.pairs, "an even number of indices")
    need(min(indices) >= 0, "--pairs", args.pairs, "indices >= 0")
    lambdas = args.lambdas or PAPER_LAMBDAS
    good = all(math.isfinite(v) and 0 <= v <= 1 for v in lambdas)
    need(good, "--lambdas", ",".join(map(str, lambdas)), "finite numbers in [0, 1]")
    _check_png(args.out)
    _picture(args, {})
    pipeline = load_model(args)
    T = pipeline.scheduler.config.num_train_timesteps
    t = args.t if args.t is not None else paper_timesteps(T, (PAPER_INTERPOLATION_T,))[0]
    _check_timesteps("--t", [t], T)
    rows = len(indices) // 2
    what = f"({rows} pair(s), {len(lambdas)} λ)"
    _check_figure("--pairs/--lambdas", what, rows, len(lambdas) + 2, pipeline, args, len(lambdas))
    images = model_images(args.data, pipeline.unet, indices=indices)
    rows = interpolation_rows(pipeline.unet, pipeline.scheduler, images, t=t, lambdas=lambdas, seed=args.seed)
    save_rows(rows, args.out, **_picture(args, interpolation_labels(t, lambdas, indices)))
    print(f"wrote {args.out}: {len(rows)} row(s), t = {t}")
    return 0


def add_rate_distortion(sub, name: str) -> None:
    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="Fig. 5: rate and distortion against reverse steps",
        description="Progressive lossy compression (section 4.3, Table 4) from the terms of the bound: rate "
        "(bits/dim received) and distortion (RMSE on [0, 255]) after each number of reverse steps. Computes the "
        "bound (as `ddpm eval nll`) or reads a saved one (--from). Writes OUT.png (PIL plot), OUT.csv and OUT.json.",
    )
    p.add_argument("--from", dest="from_npz", default=None, help="an .npz written by `ddpm eval nll --out`")
    add_model_options(p, model="optional", when="when not --from", batch=BOUND_BATCH)
    p.add_argument("--data", default=None, help="images to score (when not --from)")
    add_bound_options(p)
    p.add_argument("--out", default="rate_distortion", help="output prefix (.png/.csv/.json are added)")
    p.set_defaults(func=command(name, run_rate_distortion), no_clip=False, decoder_cdf="exact")


def run_rate_distortion(args) -> int:
    from ddpm.cli.options import check_input_file
    from ddpm.evaluation.figures import rate_distortion, write_rate_distortion
    from ddpm.evaluation.nll_runs import RATE_DISTORTION_KEYS, load_bound_terms

    check_bound_options(args)
    if not args.from_npz and not (args.model and args.data):
        raise UsageError("give --from NPZ, or --model and --data")
    for suffix in (".png", ".csv", ".json"):
        _check_out(args.out + suffix)
    work = None
    if args.from_npz:
        check_input_file("--from", args.from_npz)
        terms, mse, prior = load_bound_terms(args.from_npz)
    else:
        work = bound_work_dir(args, args.out)
        results = bound_of_data(args, work)
        terms, mse, prior = (results[k].numpy() for k in RATE_DISTORTION_KEYS)
    rd = rate_distortion(terms, mse, prior)
    paths = write_rate_distortion(rd, args.out)
    if work is not None:
        from .common import finish_work_dir

        finish_work_dir(work)
    T = len(rd["reverse_steps"])
    print(
        f"wrote {', '.join(str(p) for p in paths)}: after all {T} steps rate {rd['rate_bpd'][-1]:.4f} bits/dim, "
        f"RMSE {rd['distortion_rmse'][-1]:.3f}"
    )
    return 0
