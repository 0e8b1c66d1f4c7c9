"""Runs a list of attempts (in parallel, the timing-sensitive ones alone afterwards) and reports the counts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .core import OUTCOMES, REPO_ROOT, Attempt, Record, run_attempt
from .fixtures import TRAIN_TINY, Fixtures
from .table import _TINY_UNET

#: The shared options of the tiny training runs, shortened to TINY in the Markdown table.
TINY_TEXT = " ".join(TRAIN_TINY)
TINY_UNET_TEXT = " ".join(_TINY_UNET.split())


def run_campaign(
    attempts: list[Attempt],
    jobs: int = 2,
    root: str | os.PathLike | None = None,
    keep: bool = False,
    json_path: str | None = None,
    markdown_path: str | None = None,
    quiet: bool = False,
    fork: bool = True,
    doc_path: str | None = None,
) -> list[Record]:
    from . import core

    core.USE_FORK = fork
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # before the fork server imports torch
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="ddpm-campaign-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)  # attempts that run as `nobody` read the fixtures
    start = time.monotonic()
    fx = Fixtures(base).build()
    for p in [fx.dir, *fx.dir.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    runs = base / "attempts"
    runs.mkdir(exist_ok=True)
    runs.chmod(0o755)
    say = (lambda *a: None) if quiet else (lambda text: print(text, flush=True))
    say(f"campaign: {len(attempts)} attempts, fixtures in {base} ({time.monotonic() - start:.0f} s)")

    records: list[Record] = []
    total = len(attempts)

    def report(rec: Record) -> None:
        records.append(rec)
        mark = "  " if rec.outcome == "ok" else "!!"
        say(f"{mark} [{len(records)}/{total}] {rec.outcome:<12} {rec.id} ({rec.seconds:.0f} s): {rec.evidence[:160]}")

    parallel = [a for a in attempts if not a.exclusive]
    alone = [a for a in attempts if a.exclusive]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_attempt, a, fx, runs, keep) for a in parallel]
        for fut in as_completed(futures):
            report(fut.result())
    for a in alone:
        report(run_attempt(a, fx, runs, keep))

    order = {a.id: i for i, a in enumerate(attempts)}
    records.sort(key=lambda r: order[r.id])
    elapsed = time.monotonic() - start
    say("\n" + markdown(records, elapsed))
    write_reports(records, elapsed, json_path, markdown_path, doc_path)
    if not keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return records


def write_reports(
    records: list[Record], elapsed: float, json_path: str | None, markdown_path: str | None, doc_path: str | None = None
) -> None:
    if json_path:
        payload = {"meta": _meta(elapsed), "counts": summarize(records), "attempts": [r.as_dict() for r in records]}
        Path(json_path).write_text(json.dumps(payload, indent=1) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(markdown(records, elapsed))
    if doc_path:
        replace_section(doc_path, markdown(records, elapsed))


BEGIN, END = "<!-- BEGIN after -->", "<!-- END after -->"


def section_parts(doc_path: str | os.PathLike) -> tuple[str, str, str]:
    """The text before ``<!-- BEGIN after -->``, between the markers and after ``<!-- END after -->``; a ValueError
    when the file lacks exactly one such section (checked before a campaign starts)."""
    path = Path(doc_path)
    doc = path.read_text()
    lines = doc.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]  # markers on lines of their own
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1 or begins[0] > ends[0]:
        raise ValueError(f"{path}: needs exactly one {BEGIN} ... {END} section (each marker on a line of its own)")
    b, e = begins[0], ends[0]
    return "".join(lines[:b]), "".join(lines[b + 1 : e]), "".join(lines[e + 1 :])


def replace_section(doc_path: str | os.PathLike, text: str, meta: dict | None = None) -> None:
    """Put ``text`` (the tables of a run) between the markers ``<!-- BEGIN after -->`` and ``<!-- END after -->`` of
    the Markdown file ``doc_path`` (docs/hardening.md), replacing what was there; the rest of the file is kept.
    ``meta`` (a ``--json`` file's): a first line saying which commit and when."""
    path = Path(doc_path)
    head, _, tail = section_parts(path)
    meta = meta or _meta(0.0)
    note = f"Commit {meta.get('commit', '?')[:7]}, {meta.get('date', '?')}.\n\n" if meta else ""
    path.write_text(f"{head}{BEGIN}\n\n{note}{text.strip()}\n\n{END}\n{tail}")


def merge(previous_json: str, records: list[Record]) -> list[Record]:
    """The records of a previous ``--json`` file with those of this run put in place (same id) or appended."""
    old = [Record(**r) for r in json.loads(Path(previous_json).read_text())["attempts"]]
    new = {r.id: r for r in records}
    merged = [new.pop(r.id, r) for r in old]
    return merged + list(new.values())


def summarize(records: list[Record]) -> dict:
    by_class: dict[str, Counter] = {}
    for r in records:
        by_class.setdefault(r.cls, Counter())[r.outcome] += 1
    total = Counter(r.outcome for r in records)
    return {"total": dict(total), "by_class": {k: dict(v) for k, v in by_class.items()}, "attempts": len(records)}


def markdown(records: list[Record], elapsed: float | None = None) -> str:
    classes = list(dict.fromkeys(r.cls for r in records))
    counts = {c: Counter(r.outcome for r in records if r.cls == c) for c in classes}
    lines = ["| class | attempts | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for c in classes:
        n = sum(counts[c].values())
        lines.append(f"| {c} | {n} | " + " | ".join(str(counts[c].get(o, 0) or "") for o in OUTCOMES) + " |")
    total = Counter(r.outcome for r in records)
    lines.append(f"| **all** | **{len(records)}** | " + " | ".join(f"**{total.get(o, 0)}**" for o in OUTCOMES) + " |")
    if elapsed is not None:
        lines += ["", f"{len(records)} attempts in {elapsed / 60:.1f} min."]
    failed = [r for r in records if r.outcome != "ok"]
    if failed:
        lines += ["", f"TINY: `{TINY_TEXT}`."] if any(TINY_TEXT in r.command for r in failed) else []
        lines += ["", "| id | issue #15 class | outcome | command | evidence |", "|---|---|---|---|---|"]
        for r in failed:
            cmd = r.command.replace(TINY_TEXT, "TINY").replace(TINY_UNET_TEXT, "unet = <the tiny UNet>;")
            cmd = cmd.replace("|", "\\|")
            ev = r.evidence.replace("|", "\\|")[:220]
            lines.append(f"| `{r.id}` | {r.issue} | {r.outcome} | `{cmd}` | {ev} |")
    return "\n".join(lines) + "\n"


def _meta(elapsed: float) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    except OSError:
        commit = ""
    return {
        "commit": commit.strip(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "minutes": round(elapsed / 60, 1),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
