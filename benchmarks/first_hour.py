"""A new user's first hour, as commands: sample, train 300 steps on 2,000 of their own images, Ctrl-C and resume,
sample the result, FID, export to Diffusers. Each step's wall time and CPU time (of the commands it runs) go into
``docs/first-hour.md`` between ``<!-- BEGIN journey -->`` markers, and the pictures the user sees into
``docs/first-hour/``.

    python -m benchmarks.first_hour --data cifar10-jpeg.tar.gz --work-dir /tmp/first-hour [--threads 1]

``--data``: the CIFAR-10 JPEG archive (``train/<class>/<n>.jpg``); the first 2,000 training images by name become
the user's own folder. Every command runs with ``OMP_NUM_THREADS=--threads`` so the CPU times compare across
machines and loads; the wall times are only meaningful on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from benchmarks._report import DOCS, machine, machine_line


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Journey:
    def __init__(self, work: Path, threads: int):
        self.work = work
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        self.rows: list[dict] = []

    def step(self, what: str, commands: list[list[str]], interrupt_when=None) -> list[subprocess.CompletedProcess]:
        wall, cpu = time.perf_counter(), _children_cpu()
        done = []
        for argv in commands:
            if interrupt_when is None:
                done.append(subprocess.run(argv, cwd=self.work, env=self.env, capture_output=True, text=True))
            else:
                proc = subprocess.Popen(
                    argv, cwd=self.work, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
                while proc.poll() is None and not interrupt_when():
                    time.sleep(0.5)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                out, err = proc.communicate()
                done.append(subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode()))
        row = {
            "step": what,
            "commands": [" ".join(a[a.index("ddpm") :] if "ddpm" in a else ["python", *a[1:]]) for a in commands],
            "exit_codes": [d.returncode for d in done],
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(_children_cpu() - cpu, 1),
            "last_lines": [(d.stdout + d.stderr).strip().splitlines()[-3:] for d in done],
        }
        print(json.dumps(row), file=sys.stderr)
        self.rows.append(row)
        return done


def _user_folder(archive: Path, folder: Path, n: int) -> None:
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.startswith("train/")), key=lambda m: m.name
        )
        for i, member in enumerate(members[:n]):
            (folder / f"{i:05d}.jpg").write_bytes(tar.extractfile(member).read())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the CIFAR-10 JPEG archive")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-images", type=int, default=2000)
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    _user_folder(Path(args.data), work / "my-images", args.num_images)
    ddpm = [sys.executable, "-m", "ddpm"]
    j = Journey(work, args.threads)
    j.step("sample with the bundled model", [[*ddpm, "sample", "--out", "samples.png"]])
    train = [*ddpm, "train", "--config", "cifar10-small", "--data", "my-images", "--output-dir", "run"]
    train += ["--batch-size", "32", "--max-steps", "300", "--checkpoint-every", "100", "--sample-every", "100"]
    train += ["--num-workers", "0"]
    first = j.step(
        "train 300 steps on 2,000 own images; Ctrl-C after step 100's checkpoint",
        [train],
        interrupt_when=lambda: any((work / "run" / "checkpoints").glob("checkpoint-*100.pt")),
    )[0]
    j.step("resume to step 300", [[*ddpm, "train", "--output-dir", "run", "--resume"]])
    j.step(
        "sample the trained model (its ddpm.json) and its raw weights",
        [
            [*ddpm, "sample", "--model", "run/pipeline", "--out", "run-ema.png"],
            [*ddpm, "sample", "--model", "run", "--weights", "raw", "--out", "run-raw.png"],
        ],
    )
    j.step(
        "FID of 256 samples against 256 of the training images (warns: < 2,048)",
        [
            [*ddpm, "eval", "generate", "--model", "run/pipeline", "--num-samples", "256", "--out", "gen.npz"],
            [*ddpm, "eval", "fid", "gen.npz", "my-images", "--num-samples", "256", "--json", "fid.json"],
        ],
    )
    check = (
        "import diffusers, torch; p = diffusers.DDPMPipeline.from_pretrained('exported'); "
        "p.set_progress_bar_config(disable=True); "
        "print(p(batch_size=1, num_inference_steps=10, generator=torch.Generator().manual_seed(0)).images[0].size)"
    )
    j.step(
        "export the raw weights to a Diffusers pipeline and load it in Diffusers",
        [
            [*ddpm, "export", "--checkpoint", "run", "--weights", "raw", "--out", "exported"],
            [sys.executable, "-c", check],
        ],
    )
    pictures = DOCS / "first-hour"
    pictures.mkdir(parents=True, exist_ok=True)
    for name in ("samples.png", "run-ema.png", "run-raw.png", "run/loss.png"):
        if (work / name).is_file():
            shutil.copy(work / name, pictures / Path(name).name)
    for grid in sorted((work / "run" / "samples").glob("*.png")):
        shutil.copy(grid, pictures / f"grid-{grid.name}")
    _write(j.rows, first, work, args)


def _write(rows, first, work: Path, args) -> None:
    info = machine()
    (DOCS / "first-hour").mkdir(parents=True, exist_ok=True)
    (DOCS / "first-hour" / "journey.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    lines = ["| step | commands | exit | wall (s) | CPU (s) |", "|---|---|---|---:|---:|"]
    for r in rows:
        cmds = "<br>".join(f"`{c}`" for c in r["commands"])
        lines.append(
            f"| {r['step']} | {cmds} | {', '.join(map(str, r['exit_codes']))} | {r['wall_s']} | {r['cpu_s']} |"
        )
    fid = json.loads((work / "fid.json").read_text()) if (work / "fid.json").is_file() else {}
    text = (
        f"Measured on: {machine_line(info)}; every command with OMP_NUM_THREADS={args.threads}.  \n"
        f"Command: `python -m benchmarks.first_hour --data cifar10-jpeg.tar.gz --work-dir DIR "
        f"--threads {args.threads}`\n\n" + "\n".join(lines) + "\n\n"
        f"The Ctrl-C ended the first training command with exit code {first.returncode}; its last lines:\n\n```\n"
        + "\n".join(first.stdout.strip().splitlines()[-2:] + first.stderr.strip().splitlines()[-2:])
        + "\n```\n\n"
        + (f"FID (n = {fid.get('n_a')} / {fid.get('n_b')}): {fid.get('fid', float('nan')):.1f}; warnings: "
           f"{'; '.join(fid.get('warnings', [])) or 'none'}\n" if fid else "")
    )  # fmt: skip
    doc = DOCS / "first-hour.md"
    current = (
        doc.read_text()
        if doc.is_file()
        else "# A new user's first hour\n\n<!-- BEGIN journey -->\n<!-- END journey -->\n"
    )
    begin, end = "<!-- BEGIN journey -->", "<!-- END journey -->"
    current = current[: current.index(begin) + len(begin)] + "\n" + text + current[current.index(end) :]
    doc.write_text(current)


if __name__ == "__main__":
    main()
