"""The benchmark suite (``python -m benchmarks``): a --quick run into a tmp dir, its files, and the memory helper."""

import json
import sys

import numpy as np
import pytest
import torch
from benchmarks import _report
from benchmarks import sampling as sampling_bench
from benchmarks.__main__ import benchmark_argv, build_parser, run_suite

MIB = 1024 * 1024
LINUX = sys.platform.startswith("linux")

# What `--quick` on CPU runs: one row per (section, case).
QUICK_CASES = {
    "scheduler_step": {"threads1_batch1", "threads1_batch64"}
    | {
        f"pass_{name}_threads1_batch{batch}"
        for name in ("DDPM", "DDIM_eta_0", "DDIM_eta_1", "DPM-Solver++_2M", "SDE-DPM-Solver++_2M")
        for batch in (1, 64)
    },
    "unet_forward": {"cpu_float32_batch1"},
    "sampling-cpu": {"ours_batch1_steps2", "ours_batch2_steps2"},
    "training": {"small_fp32_batch2"},
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        payload = run_suite(["--quick", "--threads", "1", "--out-dir", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out, payload


def test_quick_suite_writes_one_json_with_machine_versions_and_every_row(quick_run):
    out, payload = quick_run
    path = out / "benchmarks" / "suite-cpu.json"
    data = json.loads(path.read_text())
    assert data == json.loads(json.dumps(payload))  # what run_suite returned is what it wrote
    assert data["device"] == "cpu" and data["quick"] is True
    assert data["command"] == f"python -m benchmarks --quick --threads 1 --out-dir {out}"
    assert data["date"].endswith("UTC")
    assert {"cpu", "cpu_count", "torch_threads", "platform"} <= set(data["machine"])
    assert data["machine"]["torch_threads"] == 1
    assert set(data["versions"]) == {"python", "torch", "diffusers", "ddpm"}
    assert all(data["versions"].values())
    assert [run["name"] for run in data["benchmarks"]] == ["scheduler_step", "unet_forward", "sampling", "training"]
    assert not [run for run in data["benchmarks"] if "error" in run]
    assert sorted(p.name for p in (out / "benchmarks").iterdir()) == ["suite-cpu.json"]  # one JSON, no per-script ones

    cases = [(row["benchmark"], row["case"]) for row in data["rows"]]
    assert len(cases) == len(set(cases))  # one row per case
    assert set(cases) == {(name, case) for name, names in QUICK_CASES.items() for case in names}
    for row in data["rows"]:
        assert row["ours_s"] > 0 and row["diffusers_s"] > 0
        assert row["ratio"] == pytest.approx(row["diffusers_s"] / row["ours_s"], rel=1e-9)


def test_quick_suite_sampling_and_training_rows_report_steps_images_per_s_and_peak_memory(quick_run):
    _, payload = quick_run
    rows = {row["case"]: row for row in payload["rows"] if row["benchmark"] in ("sampling-cpu", "training")}
    sampling = [rows["ours_batch1_steps2"], rows["ours_batch2_steps2"]]
    for row in sampling:
        assert row["steps"] == 2
        assert row["ours_images_per_s"] == pytest.approx(row["batch_size"] / row["ours_s"])
        assert row["max_abs_diff"] < 1e-4  # same weights, same seed: the same images
    assert rows["small_fp32_batch2"]["ours_images_per_s"] == pytest.approx(2 / rows["small_fp32_batch2"]["ours_s"])
    if LINUX:
        for row in rows.values():
            assert row["ours_peak_mib"] > 0 and row["diffusers_peak_mib"] > 0
        # one training step at batch 2 keeps activations and gradients of a 32/64-channel UNet: well above 1 MiB
        assert rows["small_fp32_batch2"]["ours_peak_mib"] > 1


def test_quick_suite_replaces_each_section_of_the_markdown(quick_run):
    out, payload = quick_run
    md = (out / "benchmarks.md").read_text()
    assert md.startswith("# Benchmarks\n")
    for name in QUICK_CASES:
        assert md.count(f"<!-- BEGIN {name} -->") == 1 and md.count(f"<!-- END {name} -->") == 1
        assert md.index(f"<!-- BEGIN {name} -->") < md.index(f"<!-- END {name} -->")
    assert md.count(f"Command: `{payload['command']}`") == len(QUICK_CASES)
    assert "Smoke run (`--quick`)" in md


def test_write_results_into_an_out_dir_replaces_only_its_own_section(tmp_path):
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nIntro.\n\n<!-- BEGIN other -->\nkeep me\n<!-- END other -->\n")
    for value in ("first", "second"):
        _report.write_results("demo", "Demo", f"| a |\n|---|\n| {value} |", [{"v": value}], "cmd", out_dir=tmp_path)
    text = md.read_text()
    assert "Intro." in text and "keep me" in text
    assert text.count("<!-- BEGIN demo -->") == 1 and "| second |" in text and "| first |" not in text
    assert json.loads((tmp_path / "benchmarks" / "demo.json").read_text())["results"] == [{"v": "second"}]


def test_quick_without_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(_report, "DOCS", tmp_path)
    threads = torch.get_num_threads()
    try:
        payload = run_suite(["--quick", "--only", "scheduler_step", "--threads", "1", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    assert [row["benchmark"] for row in payload["rows"]] == ["scheduler_step"] * 12
    assert list(tmp_path.iterdir()) == []


def test_suite_arguments_of_the_full_runs():
    cpu = sampling_bench.build_parser().parse_args(benchmark_argv("sampling", build_parser().parse_args([])))
    assert cpu.batch_sizes == [1, 16, 64, 256] and cpu.steps == 50
    assert dict(cpu.batch_steps) == {64: 10, 256: 10} and cpu.no_write
    steps = build_parser().parse_args(["--steps", "20"])
    fixed = sampling_bench.build_parser().parse_args(benchmark_argv("sampling", steps))
    assert fixed.steps == 20 and fixed.batch_steps == []
    cuda = build_parser().parse_args(["--device", "cuda"])
    gpu = sampling_bench.build_parser().parse_args(benchmark_argv("sampling", cuda))
    assert gpu.device == "cuda" and gpu.batch_sizes == [1, 16, 64, 256] and gpu.steps == 100
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--only", "nonsense"])


@pytest.mark.skipif(not LINUX, reason="CPU peak memory reads /proc/self")
def test_peak_memory_sees_a_64_mib_buffer_and_not_a_no_op():
    peak_np = _report.peak_memory(lambda: np.ones(64 * MIB, dtype=np.uint8), "cpu")
    peak_torch = _report.peak_memory(lambda: torch.ones(16 * MIB, dtype=torch.float32), "cpu")
    peak_none = _report.peak_memory(lambda: None, "cpu")
    if peak_none is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert peak_np >= 60 * MIB and peak_torch >= 60 * MIB
    assert peak_none < 4 * MIB


def test_peer_compare_pools_files_and_scores_parts(tmp_path):
    from benchmarks.default_model_peer import compare

    from ddpm.evaluation.fid import compute_statistics, fid_from_statistics

    rng = np.random.default_rng(0)
    ref_features = rng.normal(size=(400, 6))
    compute_statistics(ref_features).save(tmp_path / "ref.npz")
    a, b = rng.normal(size=(60, 6)) + 0.3, rng.normal(size=(80, 6))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    ref = compute_statistics(ref_features)
    out = compare([f"{tmp_path / 'a.npy'},{tmp_path / 'b.npy'}", str(tmp_path / "a.npy")], str(tmp_path / "ref.npz"))
    pooled, single = out.values()
    assert pooled["n"] == 140 and pooled["n_parts"] == [60, 80]
    assert pooled["fid"] == pytest.approx(fid_from_statistics(compute_statistics(np.concatenate([a, b])), ref))
    assert pooled["fid_parts"][1] == pytest.approx(fid_from_statistics(compute_statistics(b), ref))
    assert single["n_parts"] == [30, 30]  # one file: its two halves
    assert single["fid_parts"][0] == pytest.approx(fid_from_statistics(compute_statistics(a[:30]), ref))
    assert single["fid"] > pooled["fid_parts"][1]  # the shifted set is farther from the reference
