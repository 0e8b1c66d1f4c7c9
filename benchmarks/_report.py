"""Shared helpers for the side-by-side benchmarks: timing, peak memory, machine description, writing results.

Each benchmark module has a ``collect(args) -> Section`` that does the measuring and returns its rows, table and
notes; its own ``main`` writes ``<out>/benchmarks/<name>.json`` (machine, versions, date, raw medians) and replaces
its own section of ``<out>/benchmarks.md``, delimited by ``<!-- BEGIN name -->`` / ``<!-- END name -->``, so that
benchmarks can be run one at a time without clobbering each other's results. ``python -m benchmarks`` runs them all
and writes the same sections plus one combined ``<out>/benchmarks/suite-<device>.json`` (:func:`write_suite`).
``<out>`` is ``docs/`` unless an output directory is given.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MIB = 1024 * 1024

MD_HEADER = (
    "# Benchmarks\n\nOurs against Hugging Face Diffusers, measured in the same run with the same weights and "
    "inputs; medians of several repetitions. Ratio = Diffusers time / our time (> 1: we are faster).\n\n"
)


@dataclass
class Section:
    """One benchmark's results: what ``collect`` returns and what the writers consume.

    ``rows`` are plain dicts; every row has ``case`` (unique within the section), ``ours_s`` and ``diffusers_s``
    (median seconds per call) and ``ratio`` (= diffusers_s / ours_s), plus whatever the benchmark adds.
    """

    name: str  # file stem and md section marker, e.g. "sampling-cpu"
    title: str
    table: str  # markdown table
    rows: list[dict] = field(default_factory=list)
    notes: str = ""
    command: str = ""


def versions() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("diffusers", "ddpm"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    return info


def machine() -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **versions(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def command_line(program: str, argv: Iterable[str]) -> str:
    """The command as a reader would type it, e.g. ``python -m benchmarks.sampling --threads 1``."""
    return " ".join([program, shlex.join(list(argv))]).strip()


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


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap pages back to the OS, so RSS counts live memory only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory(fn: Callable[[], object], device="cpu") -> int | None:
    """Peak memory one call of ``fn`` needs above what was in use before it, in bytes.

    CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory allocated
    before the call. CPU (Linux): the resident set's high-water mark (VmHWM, reset by writing 5 to
    ``/proc/self/clear_refs``) minus VmRSS before the call; it also counts buffers allocated but not freed by the call.
    None where that is not available (not Linux, or /proc not writable). Call it after a warm-up, one side at a time.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        gc.collect()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return max(0, torch.cuda.max_memory_allocated(dev) - before)
    _release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS")
    except (OSError, KeyError):
        return None
    fn()
    return max(0, _status_kib("VmHWM") - before) * 1024


def memory_method(device) -> str:
    if torch.device(device).type == "cuda":
        return "torch.cuda.max_memory_allocated above the allocation before the call"
    return "peak RSS (VmHWM after clear_refs) above VmRSS before the call"


def mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / MIB


def fmt_mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / MIB:.0f}"


def machine_line(info: dict) -> str:
    hw = info.get("gpu") or f"CPU ({info['cpu']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads)"
    return f"{hw}; torch {info['torch']}, diffusers {info['diffusers']}, Python {info['python']}; {info['date']}"


def section_markdown(section: Section, info: dict) -> str:
    return (
        f"<!-- BEGIN {section.name} -->\n## {section.title}\n\n"
        f"Measured on: {machine_line(info)}.  \nCommand: `{section.command}`\n\n{section.table.strip()}\n"
        + (f"\n{section.notes.strip()}\n" if section.notes else "")
        + f"<!-- END {section.name} -->"
    )


def replace_sections(md: Path, sections: Iterable[tuple[str, str]]) -> None:
    """Replace (or append) each ``(name, text)`` section of the markdown file ``md``, creating it if needed."""
    text = md.read_text() if md.exists() else MD_HEADER
    for name, section in sections:
        pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _, s=section: s, text)
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)


def write_results(
    name: str,
    title: str,
    table_md: str,
    raw,
    command: str,
    notes: str = "",
    out_dir: str | Path | None = None,
) -> None:
    """Write <out_dir>/benchmarks/<name>.json and replace the <name> section of <out_dir>/benchmarks.md.

    ``out_dir`` defaults to the repository's docs/.
    """
    out = Path(out_dir) if out_dir is not None else DOCS
    info = machine()
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    payload = {"name": name, "machine": info, "command": command, "results": raw}
    (out / "benchmarks" / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    section = Section(name, title, table_md, notes=notes, command=command)
    replace_sections(out / "benchmarks.md", [(name, section_markdown(section, info))])


def write_section(section: Section, out_dir: str | Path | None = None) -> None:
    """:func:`write_results` for a :class:`Section` (what a benchmark's own ``main`` writes)."""
    write_results(section.name, section.title, section.table, section.rows, section.command, section.notes, out_dir)


def suite_payload(sections: list[Section], device: str, command: str, quick: bool, runs: list[dict]) -> dict:
    """The combined JSON of a suite run: machine, versions, date, command, one entry per benchmark run, every row.

    ``runs`` describes each benchmark run (name, its own arguments, seconds, error if it failed).
    """
    info = machine()
    vers = {key: info.pop(key) for key in ("python", "torch", "diffusers", "ddpm")}
    date = info.pop("date")
    return {
        "suite": "ddpm against diffusers, side by side",
        "device": device,
        "machine": info,
        "versions": vers,
        "date": date,
        "command": command,
        "quick": quick,
        "benchmarks": runs,
        "rows": [{"benchmark": s.name, **row} for s in sections for row in s.rows],
    }


def write_suite(payload: dict, sections: list[Section], out_dir: str | Path | None = None) -> Path:
    """Write <out_dir>/benchmarks/suite-<device>.json and every section of <out_dir>/benchmarks.md; the JSON path."""
    out = Path(out_dir) if out_dir is not None else DOCS
    (out / "benchmarks").mkdir(parents=True, exist_ok=True)
    path = out / "benchmarks" / f"suite-{payload['device']}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    info = {"date": payload["date"], **payload["versions"], **payload["machine"]}
    replace_sections(out / "benchmarks.md", [(s.name, section_markdown(s, info)) for s in sections])
    return path
