# Two entry points for a fresh machine: `make search` (the main job) and `make test`.
# Each one installs what it needs into .venv first (idempotent, re-run when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SPACE  ?= search_spaces/stag_quick.yaml
# A CPU-only machine gets the CPU wheel of torch (a plain `torch` requirement pulls a multi-GB CUDA
# build); a machine with an NVIDIA driver gets the default (CUDA) wheel.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")

.PHONY: install install-dev search test lint bench bench-gpu clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

search: $(VENV)/.installed
	$(PY) -m latent_tune.search $(SPACE) $(ARGS)

# Two test processes, one test file each at a time: most of the suite's wall time is waiting for
# Ray to start and stop, so two overlap well even on 2 cores.
test: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 --dist loadfile tests

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.installed-dev
	mkdir -p bench/out
	$(PY) bench/bench_interpolation.py --out bench/out/interpolation.json
	$(PY) bench/bench_training.py --out bench/out/training.json
	$(PY) bench/bench_service.py > bench/out/service.json
	$(PY) bench/bench_masked_decode.py --out bench/out/masked_decode.json
	$(PY) bench/bench_bf16.py --out bench/out/bf16_demo.json

# The GPU checks of the performance work (CUDA tests, lab-size step and rollout, memory, bf16).
bench-gpu: $(VENV)/.installed-dev
	PY=$(PY) bash bench/gpu_checks.sh

clean-venv:
	rm -rf $(VENV)
