"""Few-step samplers on one model: FID against steps for every sampler, and seconds per 16 images.

Every row samples the same image indices with the same seeds (image ``i`` from ``(seed, i)``, whatever the batch), so
rows differ only by the sampler and the number of steps. FID is computed on the real FID Inception network against
reference statistics (e.g. the 10,000 Fashion-MNIST test images: ``ddpm eval fid ... --ref-stats``).

    python -m benchmarks.sampler_quality fid --ref-stats fmnist_test_stats.npz --num-samples 2000 \\
        --samplers ddpm,ddim,dpm-solver++,analytic-ddpm,analytic-ddim --steps 10,25,50,100,250 --work-dir runs/q
    python -m benchmarks.sampler_quality time --samplers ... --steps ...    # seconds per 16 images (idle machine!)
    python -m benchmarks.sampler_quality report --work-dir runs/q          # docs/samplers.md table + plot

Work is kept per row in ``--work-dir`` (samples ``.npz``, then ``.json`` with the FID): a killed run loses at most the
row in progress, and a rerun skips the rows already done. ``report`` gathers the rows into
``docs/samplers/quality.json``, the plot ``docs/samplers/fid-vs-steps.png`` and the table in ``docs/samplers.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._report import DOCS, machine
from ddpm.io import atomic_save

SAMPLERS = ("ddpm", "ddim", "dpm-solver++", "analytic-ddpm", "analytic-ddim")
STEPS = (10, 25, 50, 100, 250)
COLOURS = {
    "ddpm": (0, 0, 0),
    "ddim": (31, 119, 180),
    "dpm-solver++": (214, 39, 40),
    "analytic-ddpm": (44, 160, 44),
    "analytic-ddim": (255, 127, 14),
}


def _row_name(sampler: str, steps: int, n: int, seed: int) -> str:
    return f"{sampler}-{steps}steps-n{n}-seed{seed}"


def _load(model: str, sampler: str, device: str = "cpu"):
    from ddpm import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(model).to(device)
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    pipe.set_sampler(sampler)
    return pipe


def run_fid(args) -> None:
    """Sample each row's images (kept as ``.npz``), then their Inception features (kept as ``.features.npy``), then
    the FID of the first n images for every n of ``--fid-n`` (so n = 500 rows compare with earlier n = 500 numbers
    without sampling again)."""
    from ddpm.evaluation.fid import FeatureStatistics, compute_statistics, fid_from_statistics
    from ddpm.evaluation.generate import generate_to_npz
    from ddpm.evaluation.inception import InceptionFeatureExtractor

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    reference = None
    extractor = None
    for steps in args.steps:
        for sampler in args.samplers:
            name = _row_name(sampler, steps, args.num_samples, args.seed)
            npz = work / f"{name}.npz"
            start = time.perf_counter()
            smaller = _largest_smaller_row(work, sampler, steps, args.num_samples, args.seed)
            if not npz.is_file():
                pipe = _load(args.model, sampler)
                if smaller is None:
                    generate_to_npz(
                        pipe,
                        args.num_samples,
                        npz,
                        seed=args.seed,
                        batch_size=args.batch_size,
                        num_inference_steps=steps,
                    )
                else:
                    _extend_npz(pipe, smaller[1], npz, args.num_samples, args.seed, args.batch_size, steps)
                print(f"{name}: sampled ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
            if args.generate_only:
                continue
            features_file = work / f"{name}.features.npy"
            if not features_file.is_file():
                extractor = extractor or InceptionFeatureExtractor()
                with np.load(npz) as data:
                    images = data["images"]
                known = np.zeros((0, 2048), np.float32)
                if smaller is not None and smaller[2].is_file():
                    known = np.load(smaller[2])
                features = np.concatenate([known, extractor(images[len(known) :], batch_size=50)])
                atomic_save(features_file, lambda f, a=features: np.save(f, a))
                print(f"{name}: features ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
            features = np.load(features_file)
            reference = reference or FeatureStatistics.load(args.ref_stats)
            for n in [n for n in args.fid_n if n <= len(features)]:
                fid = fid_from_statistics(compute_statistics(features[:n]), reference)
                row = {
                    "sampler": sampler,
                    "steps": steps,
                    "num_samples": n,
                    "seed": args.seed,
                    "fid": fid,
                    "reference": str(reference.source),
                    "reference_n": int(reference.n),
                    "model": args.model,
                    "command": _portable(" ".join(sys.argv)),
                }
                (work / f"{_row_name(sampler, steps, n, args.seed)}.json").write_text(json.dumps(row, indent=2) + "\n")
                print(f"{sampler} {steps} steps, n = {n}: FID {fid:.2f}", file=sys.stderr)


def _largest_smaller_row(work: Path, sampler: str, steps: int, n: int, seed: int):
    """``(n_small, npz, features)`` of the largest row of this sampler, steps and seed with fewer than ``n`` images
    already sampled, or None. Image ``i`` depends on ``(seed, i)`` only, so its images are the first ``n_small`` of
    the bigger row, and so are their Inception features."""
    found = []
    for path in work.glob(f"{sampler}-{steps}steps-n*-seed{seed}.npz"):
        tail = path.name[len(f"{sampler}-{steps}steps-n") :]
        count = tail.split("-", 1)[0]
        if count.isdigit() and int(count) < n:
            found.append((int(count), path, path.with_name(path.name[: -len(".npz")] + ".features.npy")))
    return max(found, key=lambda row: row[0]) if found else None


def _extend_npz(pipe, small: Path, out: Path, n: int, seed: int, batch_size: int, steps: int) -> None:
    """Write ``out`` with images ``0 .. n-1``: those of ``small`` and the rest sampled now (same seeds per index)."""
    from ddpm.evaluation.generate import generate_images

    with np.load(small) as data:
        first = data["images"]
        if int(data["seed"]) != seed or int(data["num_inference_steps"]) != steps:
            raise ValueError(f"{small}: seed/steps differ from the row being extended")
    rest = generate_images(
        pipe, n - len(first), seed=seed, batch_size=batch_size, num_inference_steps=steps, start=len(first)
    )
    images = np.concatenate([first, rest])
    meta = {"seed": np.int64(seed), "num_inference_steps": np.int64(steps), "indices": np.arange(n)}
    atomic_save(out, lambda f: np.savez(f, images=images, **meta))


def run_time(args) -> None:
    """Seconds per 16 images (the whole sampling call, batch 16), median of ``--repeats``; one row per sampler and
    step count, plus Diffusers' DDPMPipeline at its default 1000 steps with the same UNet weights."""
    from ddpm.pipeline import image_generators

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for sampler in args.samplers:
        pipe = _load(args.model, sampler, args.device)
        for steps in args.steps:
            times = []
            for r in range(args.repeats + 1):
                _sync(args.device)
                start = time.perf_counter()
                pipe(batch_size=16, generator=image_generators(0, range(16)), num_inference_steps=steps, progress=False)
                _sync(args.device)
                if r:  # the first call warms up
                    times.append(time.perf_counter() - start)
            rows.append({"sampler": sampler, "steps": steps, "seconds_per_16": statistics.median(times)})
            print(f"{sampler} {steps} steps: {rows[-1]['seconds_per_16']:.2f} s / 16 images", file=sys.stderr)
    if args.diffusers:
        rows.append(_time_diffusers(args))
    data = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "command": _portable(" ".join(sys.argv)),
    }
    (work / "timing.json").write_text(json.dumps(data, indent=2) + "\n")


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time_diffusers(args) -> dict:
    import diffusers

    from ddpm import DDPMPipeline as Ours

    ours = Ours.from_pretrained(args.model)
    with torch.no_grad():
        unet = diffusers.UNet2DModel.from_config(dict(ours.unet.config))
        unet.load_state_dict(ours.unet.state_dict())
    theirs = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler.from_config(ours.scheduler.config))
    theirs.to(args.device)
    theirs.set_progress_bar_config(disable=True)
    times = []
    for r in range(args.repeats + 1):
        _sync(args.device)
        start = time.perf_counter()
        theirs(batch_size=16, generator=torch.Generator(args.device).manual_seed(0), num_inference_steps=1000)
        _sync(args.device)
        if r:
            times.append(time.perf_counter() - start)
    row = {"sampler": "diffusers-ddpm", "steps": 1000, "seconds_per_16": statistics.median(times)}
    print(f"Diffusers DDPMPipeline 1000 steps: {row['seconds_per_16']:.2f} s / 16 images", file=sys.stderr)
    return row


# ---------------------------------------------------------------------------------------------------------------
# Report: JSON, plot, markdown
# ---------------------------------------------------------------------------------------------------------------
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def plot(rows: list[dict], path: Path, title: str) -> None:
    """FID against steps (both log scales), one line per sampler, with labelled axes and a legend."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 900, 580, 90, 190, 75, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(18), _font(15)
    steps = sorted({r["steps"] for r in rows})
    fids = [r["fid"] for r in rows]
    x_lo, x_hi = math.log(min(steps) * 0.85), math.log(max(steps) * 1.15)
    y_lo, y_hi = math.log(min(fids) * 0.85), math.log(max(fids) * 1.15)

    def xy(s, f):
        x = left + (math.log(s) - x_lo) / (x_hi - x_lo) * (width - left - right)
        y = height - bottom - (math.log(f) - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return x, y

    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for s in steps:
        x, _ = xy(s, math.exp(y_lo))
        draw.line([x, height - bottom, x, height - bottom + 6], fill=(0, 0, 0))
        draw.text((x, height - bottom + 10), str(s), fill=(0, 0, 0), font=small, anchor="mt")
    candidates = (5, 10, 20, 30, 50, 100, 200, 300, 500)
    if sum(y_lo <= math.log(t) <= y_hi for t in candidates) < 5:  # a narrow range: more ticks, still round
        candidates = (5, 6, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 100, 150, 200, 300, 400, 500)
    for tick in candidates:
        if y_lo <= math.log(tick) <= y_hi:
            _, y = xy(steps[0], tick)
            draw.line([left - 6, y, left, y], fill=(0, 0, 0))
            draw.line([left, y, width - right, y], fill=(225, 225, 225))
            draw.text((left - 10, y), str(tick), fill=(0, 0, 0), font=small, anchor="rm")
    draw.text(
        ((left + width - right) / 2, height - 25),
        "sampling steps (network calls), log scale",
        fill=(0, 0, 0),
        font=font,
        anchor="mm",
    )
    draw.text((20, top - 28), "FID (log scale; lower is better)", fill=(0, 0, 0), font=font)
    draw.text(((left + width - right) / 2, 18), title, fill=(0, 0, 0), font=font, anchor="mm")
    for k, sampler in enumerate(s for s in SAMPLERS if any(r["sampler"] == s for r in rows)):
        colour = COLOURS[sampler]
        points = [xy(r["steps"], r["fid"]) for r in sorted(rows, key=lambda r: r["steps"]) if r["sampler"] == sampler]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        ly = top + 10 + 28 * k
        draw.line([width - right + 15, ly, width - right + 45, ly], fill=colour, width=3)
        draw.text((width - right + 52, ly), sampler, fill=(0, 0, 0), font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _portable(command: str) -> str:
    """``command`` as a reader would type it: the module, not this machine's script path, and the value of every
    path option as its file name (``--work-dir W``, ``--ref-stats fmnist_test_stats.npz``)."""
    words = command.split()
    if words and words[0].endswith("sampler_quality.py"):
        words[0] = "python -m benchmarks.sampler_quality"
    for i, word in enumerate(words[:-1]):
        if word in ("--work-dir", "--ref-stats", "--model") and words[i + 1].startswith("/"):
            words[i + 1] = "W" if word == "--work-dir" else Path(words[i + 1]).name
    return " ".join(words)


def run_report(args) -> None:
    work = Path(args.work_dir)
    rows = [json.loads(p.read_text()) for p in sorted(work.glob("*steps-n*-seed*.json"))]
    for row in rows:
        row["command"] = _portable(row.get("command", ""))
    if not rows:
        raise SystemExit(f"no results in {work}")
    timing = {}
    timing_file = work / "timing.json"
    timing_data = json.loads(timing_file.read_text()) if timing_file.is_file() else None
    if timing_data:
        timing_data["command"] = _portable(timing_data.get("command", ""))
        timing = {(r["sampler"], r["steps"]): r["seconds_per_16"] for r in timing_data["rows"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"rows": rows, "timing": timing_data}, indent=2) + "\n")
    for n in sorted({r["num_samples"] for r in rows}):
        subset = [r for r in rows if r["num_samples"] == n]
        if len({r["steps"] for r in subset}) < 2:
            continue  # a plot needs two step counts
        plot(subset, out / f"fid-vs-steps-n{n}.png", f"bundled model: FID ({n} samples) against steps")
    lines = []
    for n in sorted({r["num_samples"] for r in rows}, reverse=True):
        subset = {(r["sampler"], r["steps"]): r["fid"] for r in rows if r["num_samples"] == n}
        steps = sorted({s for _, s in subset})
        lines.append(f"FID, {n} samples (seed {rows[0]['seed']}) against {rows[0]['reference']}:\n")
        lines.append("| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |")
        lines.append("|---|" + "---:|" * len(steps))
        for sampler in SAMPLERS:
            cells = [f"{subset[(sampler, s)]:.2f}" if (sampler, s) in subset else "" for s in steps]
            if any(cells):
                lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
        lines.append("")
    if timing:
        steps = sorted({s for (sampler, s) in timing if sampler != "diffusers-ddpm"})
        lines.append(
            f"Seconds per 16 images (whole sampling call, batch 16, median of several runs; "
            f"{timing_data['machine'].get('cpu', 'CPU')}, {timing_data['threads']} thread(s)):\n"
        )
        lines.append("| sampler | " + " | ".join(f"{s} steps" for s in steps) + " |")
        lines.append("|---|" + "---:|" * len(steps))
        for sampler in SAMPLERS:
            cells = [f"{timing[(sampler, s)]:.2f}" if (sampler, s) in timing else "" for s in steps]
            if any(cells):
                lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
        if ("diffusers-ddpm", 1000) in timing:
            lines.append(
                f"\nDiffusers' DDPMPipeline at its default 1000 steps: {timing[('diffusers-ddpm', 1000)]:.2f} s."
            )
        lines.append("")
    table = "\n".join(lines)
    doc = Path(args.doc)
    text = (
        doc.read_text(encoding="utf-8")
        if doc.is_file()
        else "# Samplers\n\n<!-- BEGIN quality -->\n<!-- END quality -->\n"
    )
    begin, end = "<!-- BEGIN quality -->", "<!-- END quality -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    doc.write_text(f"{head}{begin}\n{table}\n{end}{tail}", encoding="utf-8")
    print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("fid", "time", "report"):
        p = sub.add_parser(name)
        p.add_argument("--work-dir", required=True)
        if name == "report":
            p.add_argument("--out", default=str(DOCS / "samplers"))
            p.add_argument("--doc", default=str(DOCS / "samplers.md"))
            continue
        p.add_argument("--model", default="ddpm/default")
        p.add_argument("--samplers", default=",".join(SAMPLERS))
        p.add_argument("--steps", default=",".join(map(str, STEPS)))
        p.add_argument("--threads", type=int, default=None)
        if name == "fid":
            p.add_argument(
                "--ref-stats", default=None, help="reference FID statistics (.npz); needed unless --generate-only"
            )
            p.add_argument("--generate-only", action="store_true", help="sample the rows' images, score nothing")
            p.add_argument("--num-samples", type=int, default=2000, help="images sampled per row")
            p.add_argument("--fid-n", default="500,1000,2000", help="FID of the first n images, for each n")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--batch-size", type=int, default=250)
        else:
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--device", default="cpu", help="cpu or cuda")
            p.add_argument("--diffusers", action="store_true", help="also time Diffusers' DDPMPipeline, 1000 steps")
    args = parser.parse_args(argv)
    if args.command == "fid" and not args.generate_only and not args.ref_stats:
        parser.error("fid: --ref-stats is needed (or --generate-only)")
    if args.command != "report":
        args.samplers = [s for s in args.samplers.split(",") if s]
        unknown = sorted(set(args.samplers) - set(SAMPLERS))
        if unknown:
            parser.error(f"--samplers: unknown {unknown}; allowed: {', '.join(SAMPLERS)}")
        args.steps = [int(s) for s in args.steps.split(",") if s]
        if args.command == "fid":
            args.fid_n = [int(n) for n in args.fid_n.split(",") if n]
        if args.threads:
            torch.set_num_threads(args.threads)
    {"fid": run_fid, "time": run_time, "report": run_report}[args.command](args)


if __name__ == "__main__":
    main()
