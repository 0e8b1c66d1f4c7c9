#!/usr/bin/env bash
# The prepared GPU check: one command that runs in under 8 minutes on an NVIDIA H100/H200 and writes what it measured.
#
#   bash benchmarks/gpu.sh prepare        # HERE, with network: the wheels the GPU machine lacks -> .whl/ (git-ignored)
#   bash benchmarks/gpu.sh run OUT        # ON THE GPU MACHINE, from the repository root: results into OUT/
#
# With the session's device tool:  run(command="bash benchmarks/gpu.sh run $OUT", carry=[".whl"], timeout_s=540)
# and commit what comes back into docs/gpu/ (then regenerate docs/benchmarks.md's GPU sections from suite-cuda.json).
#
# What it runs, each stage under its own time limit so that one slow stage cannot eat the others:
#   1. the tests marked gpu (no-sync checks of every scheduler's step, CUDA parity, dtypes)         <= 150 s
#   2. the side-by-side suite against Diffusers on cuda (python -m benchmarks --device cuda)         <= 240 s
#   3. the samplers' seconds per 16 images and Diffusers' DDPMPipeline at 1000 steps on cuda        <= 60 s
# The GPU machine has PyTorch, numpy, scipy, safetensors, huggingface_hub, tqdm, pillow and pytest, but not diffusers:
# `prepare` downloads it (and importlib_metadata) as wheels; `run` installs them into /tmp and puts src/ on the path,
# so nothing is built there and nothing is fetched.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
prepare)
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        -d .whl diffusers==0.42.1 importlib_metadata
    ls -l .whl
    ;;
run)
    out=${2:?usage: benchmarks/gpu.sh run OUT_DIR}
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ddpm-site .whl/*.whl \
            && export PYTHONPATH="$PYTHONPATH:/tmp/ddpm-site"
    fi
    {
        date -u
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
        python3 -c "import diffusers; print('diffusers', diffusers.__version__)" || echo "diffusers: missing (run prepare)"
    } 2>&1 | tee "$out/machine.txt"
    status=0
    timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/gpu-tests.log" || status=1
    timeout 240 python3 -m benchmarks --device cuda --out-dir "$out" 2>&1 | tee "$out/suite.log" || status=1
    timeout 60 python3 -m benchmarks.sampler_quality time --device cuda --work-dir "$out" --repeats 3 \
        --samplers ddpm,ddim,dpm-solver++,analytic-ddpm,analytic-ddim --steps 10,25,50,250 --diffusers \
        2>&1 | tee "$out/samplers-time.log" || status=1
    ls -R "$out"
    exit $status
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh prepare | run OUT_DIR" >&2
    exit 2
    ;;
esac
