"""Shared helpers for the side-by-side benchmarks: timing, machine description, writing results.

Each benchmark writes ``docs/benchmarks/<name>.json`` (machine, versions, date, raw medians) and replaces its own
section of ``docs/benchmarks.md``, delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``, so that benchmarks
can be run one at a time without clobbering each other's results.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def machine() -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeats: int = 7, warmup: int = 2, inner: int = 1, device="cpu") -> float:
    """Median seconds of ``inner`` calls of ``fn`` over ``repeats`` measurements, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def time_pair(
    ours: Callable[[], object],
    peer: Callable[[], object],
    repeats: int = 7,
    warmup: int = 2,
    inner: int = 1,
    device="cpu",
) -> tuple[float, float]:
    """Median seconds of ours and of the peer, measured interleaved (ABAB...) so that drift hits both alike."""
    for _ in range(warmup):
        ours()
        peer()
    _sync(device)
    a, b = [], []
    for _ in range(repeats):
        for fn, out in ((ours, a), (peer, b)):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            _sync(device)
            out.append((time.perf_counter() - t0) / inner)
    return statistics.median(a), statistics.median(b)


def machine_line(info: dict) -> str:
    hw = info.get("gpu") or f"CPU ({info['cpu']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads)"
    return f"{hw}; torch {info['torch']}, diffusers {info['diffusers']}, Python {info['python']}; {info['date']}"


def write_results(name: str, title: str, table_md: str, raw: dict, command: str, notes: str = "") -> None:
    """Write docs/benchmarks/<name>.json and replace the <name> section of docs/benchmarks.md."""
    info = machine()
    (DOCS / "benchmarks").mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "machine": info, "command": command, "results": raw}
    (DOCS / "benchmarks" / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    section = (
        f"<!-- BEGIN {name} -->\n## {title}\n\n"
        f"Measured on: {machine_line(info)}.  \nCommand: `{command}`\n\n{table_md.strip()}\n"
        + (f"\n{notes.strip()}\n" if notes else "")
        + f"<!-- END {name} -->"
    )
    md = DOCS / "benchmarks.md"
    text = (
        md.read_text()
        if md.exists()
        else (
            "# Benchmarks\n\nOurs against Hugging Face Diffusers, measured in the same run with the same weights and "
            "inputs; medians of several repetitions. Ratio = Diffusers time / our time (> 1: we are faster).\n\n"
        )
    )
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    md.write_text(text)
