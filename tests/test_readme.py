"""The README's Python tour runs offline as written, in an empty folder (issue #17: a newcomer copies it first)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## A short tour of the Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's tour has no python block"
    return match.group(1)


def test_the_tour_reads_only_files_it_makes():
    code = _tour()
    assert "google/ddpm" not in code.replace('"google/ddpm-cifar10-32"', "")  # mentioned, never loaded
    for name in re.findall(r'["\']([\w./-]+\.(?:npz|png|json))["\']', code):
        assert name in ("samples.npz", "sample.png"), name
    assert code.index('np.savez("samples.npz"') < code.index('fid("samples.npz"')


@pytest.mark.slow
def test_the_tour_runs_offline_as_written(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(
        [sys.executable, "-c", _tour()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "sample.png").is_file() and (tmp_path / "samples.npz").is_file()
    assert (tmp_path / "my-pipeline" / "model_index.json").is_file()
    fid_line = [line for line in done.stdout.splitlines() if line.strip()][-1]
    assert float(fid_line) > 0
