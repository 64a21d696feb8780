PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test lint typecheck pytest bench bench-postgres clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m examples.accounts

# The order example in a real node process, SIGKILLed mid-run; prints one JSON summary line.
demo: $(STAMP)
	$(BIN)/python -m examples.orders

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/journal.py --store sqlite --json
	$(BIN)/python bench/hydrate.py --store sqlite --json
	$(BIN)/python bench/workflows.py --store sqlite --json

# Needs PostgreSQL; set MAINSPRING_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/test).
bench-postgres: $(STAMP)
	$(BIN)/python bench/journal.py --store postgres --json
	$(BIN)/python bench/hydrate.py --store postgres --json
	$(BIN)/python bench/workflows.py --store postgres --json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
