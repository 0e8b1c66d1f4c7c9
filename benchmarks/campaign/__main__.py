"""``python -m benchmarks.campaign [--only CLASS[,CLASS]] [--json OUT] [--markdown OUT] [--jobs N]``: the hostile-user
campaign of issue #15 (docs/hardening.md). Exit code 0 when every attempt's outcome is ``ok``, else 1."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .core import Record
from .runner import markdown, merge, replace_section, run_campaign, section_parts, write_reports
from .table import CLASSES, all_attempts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.campaign", description=__doc__)
    p.add_argument("--only", default=None, help=f"comma-separated classes ({', '.join(CLASSES)})")
    p.add_argument("--id", dest="ids", action="append", default=[], help="run attempts whose id contains this")
    p.add_argument("--json", default=None, help="write every attempt's record and the counts to this file")
    p.add_argument("--markdown", default=None, help="write the counts table and the failures as Markdown")
    p.add_argument("--jobs", type=int, default=2, help="attempts run at once (timing-sensitive ones run alone)")
    p.add_argument("--root", default=None, help="folder for the fixtures and attempt folders (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep every attempt's folder")
    p.add_argument(
        "--no-fork", action="store_true", help="run every attempt as a real `python -m ddpm` process (slower)"
    )
    p.add_argument(
        "--merge",
        default=None,
        metavar="JSON",
        help="a previous --json: rerun some attempts and merge their records in",
    )
    p.add_argument("--report", default=None, metavar="JSON", help="print (or --markdown) the tables of a --json file")
    p.add_argument(
        "--doc",
        default=None,
        metavar="MD",
        help="replace the section between <!-- BEGIN after --> and <!-- END after --> of this Markdown file "
        "(docs/hardening.md) with the tables",
    )
    p.add_argument("--list", action="store_true", help="list the attempts and exit")
    args = p.parse_args(argv)
    if args.doc:
        try:
            section_parts(args.doc)
        except (OSError, ValueError) as err:
            p.error(f"--doc: {err}")

    if args.report:
        data = json.loads(Path(args.report).read_text())
        records = [Record(**r) for r in data["attempts"]]
        text = markdown(records, data["meta"].get("minutes", 0) * 60)
        if args.doc:
            replace_section(args.doc, text, data["meta"])
        Path(args.markdown).write_text(text) if args.markdown else None if args.doc else print(text)
        return 0
    attempts = all_attempts()
    if args.only:
        wanted = {c.strip() for c in args.only.split(",") if c.strip()}
        unknown = wanted - set(CLASSES)
        if unknown:
            p.error(f"--only: unknown class(es) {sorted(unknown)}; allowed: {', '.join(CLASSES)}")
        attempts = [a for a in attempts if a.cls in wanted]
    if args.ids:
        attempts = [a for a in attempts if any(i in a.id for i in args.ids)]
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.list:
        for a in attempts:
            print(f"{a.id}\t[{a.issue}]\texpect {a.expect}\t{a.command_text()}")
        print(f"{len(attempts)} attempts", file=sys.stderr)
        return 0
    if args.merge:  # this run's records replace the same ids of a previous campaign's --json
        start = time.monotonic()
        records = run_campaign(attempts, jobs=args.jobs, root=args.root, keep=args.keep, fork=not args.no_fork)
        merged = merge(args.merge, records)
        write_reports(merged, time.monotonic() - start, args.json, args.markdown, args.doc)
        return 0 if all(r.outcome == "ok" for r in merged) else 1
    records = run_campaign(attempts, jobs=args.jobs, root=args.root, keep=args.keep, json_path=args.json,
                           markdown_path=args.markdown, fork=not args.no_fork, doc_path=args.doc)  # fmt: skip
    return 0 if all(r.outcome == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
