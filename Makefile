# Quick start: `make demo` and `make test` on a fresh machine (each creates or reuses .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; a plain `torch` requirement would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# pytorchvideo imports torchvision, and PyPI's torchvision does not import beside torch 2.13:
# the weight-compatibility tests with pytorchvideo's model builders run in a second venv.
PV_VENV ?= .venv-pv
PV_PY := $(PV_VENV)/bin/python
PV_PINS := torch==2.14.1 torchvision==0.29.1 pytorchvideo==0.1.5 numpy optree pytest hypothesis
PV_STAMP := $(PV_VENV)/.installed-$(shell echo "$(PV_PINS)" | cksum | cut -d' ' -f1)
PYTEST_WORKERS ?= 2

.PHONY: venv venv-pv demo test test-quick test-pytorchvideo test-ray bench docs notebooks clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test,notebooks,benchmarks]"
	rm -f $(VENV)/.installed-*
	touch $@

venv-pv: $(PV_STAMP)

$(PV_STAMP):
	test -x $(PV_PY) || $(PYTHON) -m venv $(PV_VENV)
	$(PV_PY) -m pip install --quiet $(PV_PINS)
	rm -f $(PV_VENV)/.installed-*
	touch $@

demo: venv
	$(PY) -m cofunc.demo

# One torch thread per xdist worker: two workers on two cores otherwise fight over threads.
test: venv venv-pv
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not pytorchvideo and not ray"
	$(MAKE) --no-print-directory test-ray
	$(MAKE) --no-print-directory test-pytorchvideo

# The Ray and HTTP-ingress tests start servers, which may only be reachable on loopback: they run
# in a private network namespace (as root `unshare -n`, else `unshare -rn` where user namespaces
# are enabled), where Ray binds to 127.0.0.1. Where neither is permitted they are skipped, loudly.
RAY_TESTS := -m ray tests/test_distributed.py tests/test_ingress.py
test-ray: venv
	@if unshare -n true 2>/dev/null; then NS="unshare -n"; \
	elif unshare -rn true 2>/dev/null; then NS="unshare -rn"; \
	else echo "test-ray: SKIPPED: no private network namespace (unshare -n / -rn not permitted here);" \
	  "the Ray tests would start servers reachable from the network"; exit 0; fi; \
	$$NS sh -c 'ip link set lo up && OMP_NUM_THREADS=1 exec $(PY) -m pytest -q -p no:cacheprovider $(RAY_TESTS)'

test-pytorchvideo: venv-pv
	PYTHONPATH=$(CURDIR) $(PV_PY) -m pytest -q -p no:cacheprovider -m pytorchvideo tests/test_models_pytorchvideo.py tests/test_checkpoints_pytorchvideo.py tests/test_torchvision_video.py

test-quick: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not slow and not pytorchvideo"

# Each benchmark is a module of the benchmarks package, run from the repository root (this checkout's cofunc).
bench: venv
	for script in benchmarks/bench_*.py; do $(PY) -m benchmarks.$$(basename $$script .py) || exit 1; done

# Re-execute the notebooks in place, so that the committed files show their outputs and figures.
notebooks: venv
	$(PY) notebooks/execute.py

# The documentation site (mkdocs.yml): the README, docs/*.md, the API reference from the
# docstrings and the executed notebooks, into site/. Warnings are errors.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) $(PV_VENV) .pytest_cache .hypothesis .mypy_cache site
