"""Each optimisation of our own code, measured before and after in the same run (no Diffusers here).

Sampling rows use the bundled default model (Fashion-MNIST 28x28, 0.93M parameters) at batch 16, as ``ddpm sample``
runs it, with fewer steps (time per step is what changes); the batch-1 rows use the small 32x32 UNet of
``benchmarks.sampling``. Training rows time one optimisation step of the default model's preset at its batch (64).
Before and after are timed interleaved (medians), and the images of both are compared. Run::

    .venv/bin/python -m benchmarks.fast_paths --threads 1       # CPU; writes the "fast-paths-cpu" section

The compile row also gives the break-even point behind ``ddpm sample --compile auto``
(:data:`ddpm.cli.speed.COMPILE_PAYS_ON`): compilation seconds / seconds saved per image-step. Each "before" is the
pipeline's or the model's own ``FastPaths`` setting with one switch off (nothing global is changed).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks._report import command_line, time_pair, write_results


def _pipeline(kind: str):
    import ddpm

    if kind == "default":
        pipe = ddpm.DDPMPipeline.from_pretrained("ddpm/default")
    else:
        from benchmarks.sampling import SMALL

        torch.manual_seed(0)
        pipe = ddpm.DDPMPipeline(ddpm.UNet2DModel(**SMALL).eval(), ddpm.DDPMScheduler(variance_type="fixed_large"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _copy(pipe, **settings):
    """A private copy of ``pipe`` set up as the variant the settings name (``benchmarks.sampling.variant``);
    ``onednn=False`` turns the copy's single-image oneDNN route off."""
    from benchmarks.sampling import variant

    names = {"nchw": "nchw", "compile": "compiled", "dtype": "bfloat16"}
    out = variant(pipe, next((names[k] for k in settings if k in names), "ours"))
    if "onednn" in settings:
        out.set_fast_paths(onednn_single_image=settings["onednn"])
    return out


def _sampler(pipe, batch: int, steps: int):
    from ddpm.pipeline import image_generators

    def run():
        gens = image_generators(0, range(batch))
        return pipe(batch_size=batch, generator=gens, num_inference_steps=steps, output_type="pt").images

    return run


def _first_call(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def sampling_rows(args) -> list[dict]:
    rows = []
    for model, batch in (("default", 16), ("small", 1)):
        base = _pipeline(model)
        steps = args.steps
        what = f"sampling, {'default model' if model == 'default' else 'small UNet'}, batch {batch}, {steps} steps"
        cases = [
            ("oneDNN for single-image 3x3 convolutions (UNet default)", dict(onednn=False), {}),
            ("channels-last weights and activations (pipeline default on CPU)", dict(nchw=True), {}),
            ("torch.compile, frozen weights", {}, dict(compile=True)),
            ("bfloat16", {}, dict(dtype=torch.bfloat16)),
        ]
        for name, before_kw, after_kw in cases:
            if "onednn" in before_kw and batch > 1:
                continue  # the route only exists for single images
            before, after = _copy(base, **before_kw), _copy(base, **after_kw)
            run_before = _sampler(before, batch, steps)
            run_after = _sampler(after, batch, steps)
            _, ref = _first_call(run_before)
            first_after, out = _first_call(run_after)
            diff = float((out.float() - ref.float()).abs().max())
            t_before, t_after = time_pair(run_before, run_after, repeats=args.repeats, warmup=1)
            against = {"nchw": "eager NCHW", "onednn": "PyTorch's kernel choice"}
            row = _row(what, name, next((v for k, v in against.items() if k in before_kw), "defaults"), t_before,
                       t_after, diff)  # fmt: skip
            if after_kw.get("compile"):
                compile_s = max(first_after - t_after, 0.0)
                saved = (t_before - t_after) / (batch * steps)
                row["compile_s"] = compile_s
                row["break_even_image_steps"] = compile_s / saved if saved > 0 else None
            rows.append(row)
            print(_line(rows[-1]), flush=True)
        if model == "default":
            threads = torch.get_num_threads()
            if threads > 1:
                run = _sampler(_copy(base), batch, steps)

                def one_thread(run=run, threads=threads):
                    torch.set_num_threads(1)
                    try:
                        return run()
                    finally:
                        torch.set_num_threads(threads)

                t1, tn = time_pair(one_thread, run, repeats=args.repeats, warmup=1)
                rows.append(_row(what, f"{threads} torch threads", "1 thread", t1, tn, 0.0))
                print(_line(rows[-1]), flush=True)
            unet = _pipeline("default").unet
            x = torch.randn(batch, 1, 28, 28)
            t = torch.tensor(500)

            def no_grad(unet=unet, x=x, t=t):
                with torch.no_grad():
                    return unet(x, t).sample

            def inference(unet=unet, x=x, t=t):
                with torch.inference_mode():
                    return unet(x, t).sample

            t_before, t_after = time_pair(no_grad, inference, repeats=args.repeats * 3, warmup=2)
            rows.append(_row(f"UNet forward, default model, batch {batch}", "torch.inference_mode", "torch.no_grad",
                             t_before, t_after, 0.0))  # fmt: skip
            print(_line(rows[-1]), flush=True)
    return rows


def training_rows(args) -> list[dict]:
    from ddpm import DDPMScheduler, UNet2DModel
    from ddpm.training.config import resolve_config
    from ddpm.training.trainer import optimisation_step

    cfg = resolve_config("fashion-mnist-default")
    batch = args.train_batch or cfg.batch_size
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((batch, 1, 28, 28), generator=g) * 2 - 1
    scheduler = DDPMScheduler(**cfg.scheduler_config())

    def build(fused=False, compile=False, nchw=False, autocast=None):
        torch.manual_seed(0)
        model = UNet2DModel(**cfg.unet_config()).train()
        if nchw:
            model.set_fast_paths(channels_last=False)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, **({"fused": True} if fused else {"foreach": True}))
        fwd = torch.compile(model, dynamic=False) if compile else model

        def step():
            t = torch.randint(0, 1000, (batch,), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            optimisation_step(fwd, scheduler, opt, x0, noise, t, lr=cfg.lr, grad_clip=1.0, autocast_dtype=autocast)

        return step

    what = f"training step, default-model preset, batch {batch}"
    cases = [
        ("fused Adam (CPU)", {}, dict(fused=True)),
        ("channels-last activations (UNet default on CPU)", dict(nchw=True), {}),
        ("torch.compile (--compile)", {}, dict(compile=True)),
        ("bfloat16 autocast (--precision bf16)", {}, dict(autocast=torch.bfloat16)),
    ]
    rows = []
    for name, before_kw, after_kw in cases:
        before, after = build(**before_kw), build(**after_kw)
        before()
        first_after, _ = _first_call(after)
        t_before, t_after = time_pair(before, after, repeats=args.repeats, warmup=1)
        row = _row(what, name, "eager NCHW" if before_kw else "defaults", t_before, t_after, None)
        row["images_per_s_before"], row["images_per_s_after"] = batch / t_before, batch / t_after
        if after_kw.get("compile"):
            row["compile_s"] = max(first_after - t_after, 0.0)
        rows.append(row)
        print(_line(rows[-1]), flush=True)

    # Data loading: the trainer's loader on the real data set against what one training step consumes.
    from ddpm.data import open_dataset, to_model_range

    try:
        dataset = open_dataset("fashion-mnist", resolution=28, channels=1)
    except ValueError as err:
        print(f"skipping the data-loading row: {err}", file=sys.stderr)
        return rows
    index = torch.randperm(len(dataset), generator=g)
    n = 100

    def load():
        for i in range(n):
            to_model_range(dataset.images[index[i * batch : (i + 1) * batch]])

    t_load = min(_first_call(load)[0] for _ in range(3)) / n
    t_step = rows[0]["before_s"]
    rows.append({"what": f"data loading, Fashion-MNIST, batch {batch}", "after": "trainer's in-memory loader",
                 "before": "one training step", "before_s": t_step, "after_s": t_load, "speedup": t_step / t_load,
                 "max_abs_diff": None})  # fmt: skip
    print(_line(rows[-1]), flush=True)
    return rows


def _row(what, after, before, t_before, t_after, diff) -> dict:
    return {"what": what, "after": after, "before": before, "before_s": t_before, "after_s": t_after,
            "speedup": t_before / t_after, "max_abs_diff": diff}  # fmt: skip


def _line(row) -> str:
    diff = "" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.1e}"
    extra = f"compile {row['compile_s']:.0f} s" if "compile_s" in row else ""
    if row.get("break_even_image_steps"):
        extra += f", pays after {row['break_even_image_steps']:,.0f} image-steps"
    return (
        f"| {row['what']} | {row['after']} | {row['before']} | {row['before_s'] * 1e3:.3g} | "
        f"{row['after_s'] * 1e3:.3g} | **{row['speedup']:.2f}x** | {diff} | {extra} |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps of the sampling rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=None, help="default: the preset's batch (64)")
    parser.add_argument("--only", choices=("sampling", "training"), default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if args.only in (None, "sampling"):
        rows += sampling_rows(args)
    if args.only in (None, "training"):
        rows += training_rows(args)
    table = (
        "| what | optimisation (after) | against (before) | before (ms) | after (ms) | speedup | max abs diff | |\n"
        "|---|---|---|---|---|---|---|---|\n" + "\n".join(_line(r) for r in rows)
    )
    notes = (
        f"Medians of {args.repeats} interleaved repetitions, {torch.get_num_threads()} torch thread(s) unless the row "
        "says otherwise; times are per call (a whole sampling run, one training step, or 100 loaded batches / 100). "
        "Max abs diff: largest difference of the images in [0, 1] between before and after. Compile rows: the "
        "compilation is untimed in the medians and given separately; 'pays after' = compile seconds / seconds saved "
        "per image-step. The data-loading row compares the time to produce one batch with one training step."
    )
    print(table)
    if not args.no_write:
        command = command_line("python -m benchmarks.fast_paths", argv if argv is not None else sys.argv[1:])
        write_results("fast-paths-cpu", "Fast paths, each measured before and after (CPU)", table, rows, command,
                      notes)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
