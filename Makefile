# Two commands for a new user: `make demo` and `make test`. Everything else is set up by them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch, installed first so pip never pulls a multi-GB CUDA build on a laptop/CI.
TORCH_CPU ?= torch==2.13.0
STORAGE ?= runs/demo
PYTEST_ARGS ?=
# Exact versions of every dependency but torch (pinned above) and the RecBole data wheel: pip's
# constraints, so the same commit installs the same packages. `make lock` refreshes it.
LOCK := requirements.lock
RECBOLE := recbole==1.2.1

.PHONY: install lock test test-fast lint format demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -c $(LOCK) -e '.[dev]'
	# MovieLens-100K ships inside the RecBole wheel; --no-deps keeps its heavy requirements out.
	$(PIP) install -q --no-deps $(RECBOLE)
	@touch $@

# Resolve pyproject.toml afresh in a scratch venv and write the exact versions to $(LOCK).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q $(TORCH_CPU)
	.lock-venv/bin/pip install -q -e '.[dev]'
	{ echo "# Exact versions for make install (pip constraints), written by make lock with"; \
	  echo "# $$(.lock-venv/bin/python --version) on $$(uname -m); torch and recbole are pinned in the Makefile."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -viE '^(torch|recbole|ray-two-tower)([=@ ]|$$)'; \
	} > $(LOCK)
	rm -rf .lock-venv
	@echo "wrote $(LOCK): $$(grep -vc '^#' $(LOCK)) packages"

# The unit tests on UNIT_JOBS processes (pytest-xdist; whole files per process, so at most one
# starts a session Ray), then the Ray, Serve and end-to-end tests in two processes at once
# (tests/run_integration.py): one for the modules that start Ray clusters of their own (marked
# own_cluster), one for all the others, which share one session Ray instance and Serve
# application. Fails if either fails; both outputs are printed.
UNIT_JOBS ?= 2
test: install
	$(PY) -m pytest -n $(UNIT_JOBS) --dist loadfile tests/unit $(PYTEST_ARGS)
	$(PY) -m tests.run_integration $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not ray and not serve and not slow and not network" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: install
	$(PY) -m ray_jobs.demo --storage $(STORAGE)

# The benchmarks behind docs/BENCHMARKS.md, one after another (tens of minutes on 2 cores).
bench: install
	$(PY) -m bench.bench_prepare
	$(PY) -m bench.bench_train --epochs 4
	$(PY) -m bench.bench_knn
	$(PY) -m bench.bench_index
	$(PY) -m bench.bench_serving --storage /tmp/serve_bench --prepare --out runs/bench_serving

clean:
	rm -rf $(VENV) .lock-venv runs .pytest_cache .ruff_cache
