# The README's two commands: `make demo` and `make test`. Everything else is a thin helper.
# GPU users: make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.tumoraware-installed
PYTEST_ARGS ?=

.PHONY: install demo export test lint format bench clean

# Re-runs only when the dependency files change, so repeated `make test` is quick.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/tumoraware demo

# Model Zoo export of both bundles with the demo study's weights of the paper's methods (run
# `make demo` first), then the Model Zoo CI checks on each (a training iteration and an inference
# without tumoraware). export_zoo finds the weights in the study folder.
DEMO_STUDY ?= runs/demo
DEMO_SEED ?= 0
export: install
	$(VENV)/bin/tumoraware export_zoo --bundle bundles/lung_ct2mri_synthesis --out_dir dist \
		--study $(DEMO_STUDY) --seed $(DEMO_SEED)
	$(VENV)/bin/tumoraware export_zoo --bundle bundles/lung_mri_tumor_segmentation --out_dir dist \
		--study $(DEMO_STUDY) --seed $(DEMO_SEED)
	$(VENV)/bin/tumoraware verify_zoo dist/lung_ct2mri_synthesis
	$(VENV)/bin/tumoraware verify_zoo dist/lung_mri_tumor_segmentation

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs data .pytest_cache .ruff_cache
