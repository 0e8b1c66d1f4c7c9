#!/usr/bin/env bash
# Parity tests against the newest Diffusers release on PyPI, beside the pinned one (docs/differences.md records the
# last run). Not part of .ci/run: it needs PyPI. The default suite and .ci/run stay offline and pinned.
#
# It creates a separate venv (.cache/newest-diffusers-venv) that sees the project venv's packages (torch, pytest,
# ...) through a .pth file, so torch is not downloaded again; installs the newest diffusers, and accelerate so that
# `device_map` is compared with Diffusers' own, into it (they shadow the pinned ones); and runs every test file that
# compares with Diffusers on it, with the default markers (no slow or GPU tests). Extra arguments go to pytest.
#
#   .ci/newest-diffusers.sh                       # or: make test-newest-diffusers
#   BASE_VENV=/path/to/.venv .ci/newest-diffusers.sh -x
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_VENV=${BASE_VENV:-.venv}
VENV=${NEWEST_VENV:-.cache/newest-diffusers-venv}
BASE_PY="$BASE_VENV/bin/python"
if ! test -x "$BASE_PY"; then
    echo "no $BASE_PY: run 'make test' first (or set BASE_VENV to a venv with torch and the test tools)" >&2
    exit 2
fi
test -x "$VENV/bin/python" || "$BASE_PY" -m venv "$VENV"
base_site=$("$BASE_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
new_site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# An `import` line in a .pth file runs at start-up: addsitedir also processes the project venv's own .pth files (its
# editable install of ddpm). It comes after the new venv's site-packages, whose packages therefore win.
echo "import site; site.addsitedir('$base_site')" > "$new_site/zz_project_venv.pth"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade diffusers accelerate
"$VENV/bin/python" - "$BASE_PY" <<'PY'
import subprocess, sys
import accelerate, diffusers, huggingface_hub, torch
pinned = subprocess.run([sys.argv[1], "-c", "import diffusers; print(diffusers.__version__)"], capture_output=True,
                        text=True).stdout.strip()
print(f"newest diffusers {diffusers.__version__} (pinned: {pinned}; from {diffusers.__file__}), "
      f"accelerate {accelerate.__version__}, huggingface_hub {huggingface_hub.__version__}, torch {torch.__version__}")
PY
PARITY_TESTS=(
    tests/test_interop_loading.py tests/test_interop_sharding.py tests/test_interop_blocks.py
    tests/test_interop_errors.py tests/test_interop_dropin.py
    tests/test_unet.py tests/test_unet_files.py tests/test_pipeline.py tests/test_scheduler_parity.py
)
PYTHONPATH="$PWD/src:$PWD" "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow and not gpu" \
    "${PARITY_TESTS[@]}" "$@"
