# Quick start: `make demo` and `make test` on a fresh machine (each creates or reuses .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Extra PyTorch wheels come from the local file on this kind of machine; pinning the CPU build
# here keeps pip from pulling the multi-GB CUDA build that a plain `torch` requirement takes.
TORCH_PIN ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: venv demo test test-quick bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,notebooks,benchmarks]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(PY) -m cofunc.demo

test: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

test-quick: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not slow"

bench: venv
	$(PY) benchmarks/bench_conv.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
