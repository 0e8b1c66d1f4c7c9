"""Threads on a busy machine: sampling and a training step with each thread setting, idle and beside busy processes.

    python -m benchmarks.threads_load [--busy 0,1] [--repeats 3]

For each load (0, 1, ... other processes spinning on a core each) and each thread setting, a fresh process times
(median of ``--repeats``, after one warm-up):

* sampling: 16 images of the bundled model, DDIM, 10 steps (one ``pipe(...)`` call);
* training: one forward + backward + Adam step of the bundled UNet on a batch of 16.

Thread settings: ``1``; ``torch`` (torch's own default, one per core); ``torch+passive`` (the same with
``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP threads sleep instead of spinning); ``auto``
(:func:`ddpm.threads.auto_threads`, the commands' default). The table goes into ``docs/benchmarks.md`` between
``<!-- BEGIN threads -->`` markers and the rows into ``docs/benchmarks/threads_load.json``. Run it on an otherwise
idle machine: it makes the load itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks._report import DOCS, machine, machine_line

SETTINGS = ("1", "torch", "torch+passive", "auto")

WORKER = r"""
import json, os, sys, time
import torch
setting = sys.argv[1]
repeats = int(sys.argv[2])
from ddpm.threads import set_threads
if setting == "1":
    set_threads(1)
elif setting == "auto":
    set_threads(None)
chosen = torch.get_num_threads()
from ddpm import DDPMPipeline
pipe = DDPMPipeline.from_pretrained("ddpm/default")
pipe.set_progress_bar_config(disable=True)
pipe.set_sampler("ddim")
def sample():
    pipe(batch_size=16, generator=torch.Generator().manual_seed(0), num_inference_steps=10, output_type="pt")
from ddpm import UNet2DModel
from ddpm.io import bundled_model_path
unet = UNet2DModel.from_pretrained(bundled_model_path(), subfolder="unet")
unet.train()
opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
c, s = unet.config.in_channels, unet.config.sample_size
x = torch.randn(16, c, s, s)
t = torch.randint(0, 1000, (16,))
def train():
    opt.zero_grad(set_to_none=True)
    loss = (unet(x, t).sample - x).square().mean()
    loss.backward()
    opt.step()
out = {"threads": chosen}
for name, fn in (("sample_s", sample), ("train_step_s", train)):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    out[name] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def _measure(setting: str, repeats: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    if setting == "torch+passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    key = "torch" if setting.startswith("torch") else setting
    done = subprocess.run(
        [sys.executable, "-c", WORKER, key, str(repeats)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", default="0,1", help="numbers of busy processes to run beside, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args(argv)
    rows = []
    for busy in [int(b) for b in args.busy.split(",") if b]:
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)
            for setting in [s for s in args.settings.split(",") if s]:
                row = {"busy_processes": busy, "setting": setting, **_measure(setting, args.repeats)}
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    _write(rows, argv)


def _write(rows: list[dict], argv: list[str] | None) -> None:
    command = "python -m benchmarks.threads_load " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine()
    (DOCS / "benchmarks").mkdir(parents=True, exist_ok=True)
    (DOCS / "benchmarks" / "threads_load.json").write_text(
        json.dumps({"machine": info, "command": command.strip(), "rows": rows}, indent=2) + "\n"
    )
    base = {r["busy_processes"]: r for r in rows if r["setting"] == "1"}
    lines = [
        "| busy processes | threads setting | torch threads | sample 16 images, DDIM 10 steps (s) | x vs 1 thread "
        "| training step, batch 16 (s) | x vs 1 thread |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref = base.get(r["busy_processes"])
        ratio_s = f"{r['sample_s'] / ref['sample_s']:.2f}" if ref else ""
        ratio_t = f"{r['train_step_s'] / ref['train_step_s']:.2f}" if ref else ""
        lines.append(
            f"| {r['busy_processes']} | {r['setting']} | {r['threads']} | {r['sample_s']:.3f} | {ratio_s} "
            f"| {r['train_step_s']:.3f} | {ratio_t} |"
        )
    section = (
        f"Measured on: {machine_line(info)} (torch threads: per row).  \nCommand: `{command.strip()}`\n\n"
        + "\n".join(lines)
        + "\n"
    )
    doc = DOCS / "benchmarks.md"
    text = doc.read_text()
    begin, end = "<!-- BEGIN threads -->", "<!-- END threads -->"
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + section + text[text.index(end) :]
    else:
        text += f"\n## Threads on a busy machine\n\n{begin}\n{section}{end}\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
