# Two commands matter: `make demo` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint system-deps clean demo-stop

# What `make lint` checks (the configuration is in pyproject.toml; tests/ and bench/ are not linted).
LINT_PATHS := secflow workflows activities starter worker.py

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required (python3.11 or python3 on PATH)"; exit 1; }
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required, found " + sys.version'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian packages the suite needs (docker-compose to check the cluster file).
system-deps:
	@sh scripts/system-deps.sh

# The dev server and a worker stay up after the demo; demo-stop stops both (pids in .secflow/).
demo: $(STAMP)
	$(BIN)/python examples/run_demo.py

demo-stop:
	$(BIN)/python examples/run_demo.py --stop

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .secflow .pytest_cache .mypy_cache .ruff_cache
