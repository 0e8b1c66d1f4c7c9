"""The hardening campaign's harness (benchmarks/campaign, docs/hardening.md): its classifier on known cases and its
attempt table. The campaign itself is not part of the test suite: `python -m benchmarks.campaign` runs it."""

import json
import sys

import pytest
from benchmarks.campaign import CLASSES, OUTCOMES, Attempt, all_attempts, run_attempt
from benchmarks.campaign.core import Run, classify_api
from benchmarks.campaign.fixtures import Fixtures


@pytest.fixture
def fx(tmp_path):
    return Fixtures(tmp_path)  # unbuilt: {work} and {bundled} are all these attempts use


def _argv(code: str, expect: str, timeout: float = 60, **kw) -> Attempt:
    return Attempt("test/x", "test", "-", ["{python}", "-c", code], expect, "", kind="argv", timeout=timeout, **kw)


@pytest.mark.parametrize(
    "code, expect, outcome",
    [
        ("raise SystemExit('prog: error: --x must be >= 1, got 0')", "error", "ok"),  # one line, exit 1
        ("raise SystemExit('prog: error: --x must be >= 1, got 0')", "ok", "refused"),
        ("raise ValueError('deep inside')", "error", "traceback"),
        ("print('done')", "error", "silent-wrong"),  # a bad request accepted
        ("print('FID nan  (a: 10 images)')", "ok", "silent-wrong"),  # a non-finite result printed
        ("print('wrote 16 images (inference steps: 25)')", "ok", "ok"),  # 'inference' is not 'inf'
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "either", "crash"),
        ("import sys; sys.exit(3)", "either", "crash"),
        ("import sys; sys.exit(2)", "error", "silent-wrong"),  # an error without any message
    ],
)
def test_classifier_on_known_commands(tmp_path, fx, code, expect, outcome):
    record = run_attempt(_argv(code, expect), fx, tmp_path)
    assert record.outcome == outcome, record.evidence
    assert record.outcome in OUTCOMES


def test_timeout_and_a_failed_check(tmp_path, fx):
    slow = run_attempt(_argv("import time; time.sleep(30)", "ok", timeout=1.5), fx, tmp_path)
    assert slow.outcome == "timeout" and slow.seconds < 20
    wrote_one = _argv(
        "open('n.txt', 'w').write('1')",
        "ok",
        check=lambda work, fx, run: None if (work / "n.txt").read_text() == "2" else "1 of 2",
    )
    assert run_attempt(wrote_one, fx, tmp_path).outcome == "silent-wrong"


def test_a_real_ddpm_attempt_is_ok(tmp_path, fx):
    attempt = Attempt("t/ddpm", "t", "12", ["sample", "--num-samples", "0"], "error", "a clean error")
    record = run_attempt(attempt, fx, tmp_path)
    assert record.outcome == "ok", record.evidence
    assert "--num-samples" in record.evidence and record.command == "ddpm sample --num-samples 0"


def _verdict(**kw) -> Run:
    base = {"exception": None, "message": "", "where": "", "clean": False, "failed_check": None, "note": ""}
    return Run(0, "\n" + json.dumps(dict(base, **kw)) + "\n", "", 1.0)


def test_api_verdicts():
    bad = Attempt("api/x", "api", "-", "", "error", "", kind="api")
    assert classify_api(bad, _verdict(exception="ValueError", clean=True))[0] == "ok"
    assert classify_api(bad, _verdict(exception="IndexError", where="/torch/x.py"))[0] == "traceback"
    assert classify_api(bad, _verdict())[0] == "silent-wrong"
    assert classify_api(bad, _verdict(failed_check="non-finite"))[0] == "silent-wrong"
    assert classify_api(bad, Run(-11, "", "", 1.0))[0] == "crash"


def test_api_probe_reports_where_an_error_was_raised(tmp_path, fx):
    clean = Attempt(
        "api/v", "api", "-", "raise ValueError('num_train_timesteps must be >= 1')", "error", "", kind="api"
    )
    leak = Attempt("api/i", "api", "-", "[][1]", "error", "", kind="api")
    assert run_attempt(clean, fx, tmp_path).outcome == "ok"
    assert run_attempt(leak, fx, tmp_path).outcome == "traceback"


def test_the_table():
    attempts = all_attempts()
    ids = [a.id for a in attempts]
    assert len(ids) == len(set(ids))
    assert 150 <= len(attempts) <= 600
    assert {a.cls for a in attempts} == set(CLASSES)
    assert all(a.expect in ("ok", "error", "either") for a in attempts)
    assert all(a.kind in ("cli", "api", "custom") for a in attempts)
    assert sys.executable  # the campaign runs children with this interpreter


def test_warnings_other_than_deprecation_notices_count():
    from benchmarks.campaign.core import warned

    assert warned("UserWarning: resuming with changed seed; the run is no longer an exact continuation")
    assert not warned("ddpm train: warning: --quiet is deprecated; use --no-progress")
    assert not warned("trained to step 6")


@pytest.mark.slow
def test_the_valid_class_passes_on_this_code(tmp_path):
    """The control group of the campaign: every valid request succeeds with a checked result (a few minutes)."""
    from benchmarks.campaign import run_campaign

    attempts = [a for a in all_attempts() if a.cls == "valid"]
    records = run_campaign(attempts, jobs=2, root=tmp_path / "campaign", quiet=True)
    assert [r.id for r in records if r.outcome != "ok"] == []


def test_the_doc_section_is_replaced_and_the_rest_kept(tmp_path):
    from benchmarks.campaign.core import Record
    from benchmarks.campaign.runner import markdown, replace_section

    doc = tmp_path / "hardening.md"
    head = "# Title\n\n`--doc` replaces the `<!-- BEGIN after -->` section.\n\nbaseline table\n\n"
    doc.write_text(head + "<!-- BEGIN after -->\nplaceholder\n<!-- END after -->\n\n## Limits\n")
    records = [Record("options/x=1", "options", "12", "ddpm x", "error", "", "ok", "exit 2: ...", 1.0)]
    records.append(Record("options/x=2", "options", "12", "ddpm x --y", "error", "", "silent-wrong", "exit 0", 1.0))
    replace_section(doc, markdown(records, 60.0), {"commit": "abcdef0123", "date": "2026-11-30 23:00 UTC"})
    text = doc.read_text()
    assert text.startswith(head + "<!-- BEGIN after -->\n") and text.endswith("<!-- END after -->\n\n## Limits\n")
    assert "placeholder" not in text and "Commit abcdef0, 2026-11-30 23:00 UTC." in text
    assert "| options | 2 | 1 |  | 1 |" in text and "`options/x=2`" in text
    replace_section(doc, markdown(records[:1], 60.0), {"commit": "1234567", "date": "later"})  # idempotent markers
    assert doc.read_text().count("<!-- END after -->") == 1 and "`options/x=2`" not in doc.read_text()
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="BEGIN after"):
        replace_section(tmp_path / "plain.md", "x")


def test_this_rounds_attempts_and_spellings_are_in_the_table():
    from benchmarks.campaign.fixtures import TRAIN_TINY

    attempts = {a.id: a for a in all_attempts()}
    assert "--no-progress" in TRAIN_TINY and "--quiet" not in TRAIN_TINY
    for name in ("export-checkpoint-missing", "export-checkpoint-is-pipeline", "export-out-not-empty"):
        assert f"files/{name}" in attempts
    for name in ("grad-accum=0", "grad-accum=-1", "grad-accum=1e9", "report-to=mlflow", "fid-every=5", "data=hf:",
                 "threads=100000", "num-inference-steps=5000", "config=npz", "model-config=npz"):  # fmt: skip
        assert attempts[f"options/train/{name}"].expect == "error", name
    for name in ("sample/weights=raw", "sample/scale=0", "nll/threads=100000", "sample/threads=100000"):
        assert f"options/{name}" in attempts
    old = {"--quiet", "--num-images", "--steps", "--sample-steps"}
    with_old = sorted(a.id for a in attempts.values() if a.kind == "cli" and old & set(a.cmd))
    assert with_old == [
        "numerics/train-sample-steps-0", "valid/nll-num-images-alias", "valid/sample-num-images-alias",
        "valid/sample-steps-alias", "valid/train-quiet-alias", "valid/train-sample-steps-alias",
    ]  # fmt: skip
    assert attempts["valid/fid-stats-8-features"].check is not None and attempts["valid/fid-stats"].timeout >= 300
