# polyfleet: `make demo` and `make test` work on a fresh machine with Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint bench install clean system-packages bytecode

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The suite starts some hundreds of polyfleet commands: with the project's modules compiled
# once here, none of them compiles its imports again (also where PYTHONDONTWRITEBYTECODE is
# set). Only files changed since the last run are compiled.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 agent controller shared simulator polyfleet >/dev/null

demo: $(STAMP)
	$(BIN)/polyfleet demo $(ARGS)

# The system packages the tests use (chromium, postgresql, ...): installed when root on
# Debian, else the command that installs them is printed and nothing runs.
system-packages:
	@bash tests/system-packages

# Four workers on two cores: most tests wait on servers, devices and browsers for part of
# their time, and the extra workers fill that time (measured here on 1,419 tests: 318 s with
# three workers, 303 s and 315 s with four; two kept the cores busy only 58% of the time).
test: system-packages $(STAMP) bytecode
	$(BIN)/python -m pytest -n 4 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	@for script in benchmarks/*.py; do \
		echo "== $$script"; \
		$(BIN)/python $$script $(ARGS) || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache polyfleet-demo
	find agent controller shared simulator polyfleet -name __pycache__ -type d -prune -exec rm -rf {} +
