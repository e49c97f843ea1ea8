# The README's two commands: `make demo` (the platform end to end on generated data) and `make test`.
# Each creates or reuses the virtual environment in $(VENV) and installs the package into it, at the
# exact versions of constraints.txt (pyproject.toml holds the ranges).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ctplatform-installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ctplatform demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	@for b in $(filter-out benchmarks/machine_info.py,$(wildcard benchmarks/*.py)); do echo "== $$b"; $(BIN)/python $$b || exit 1; done
	$(BIN)/python benchmarks/results/collect.py

clean:
	rm -rf ctplatform-work .pytest_cache
