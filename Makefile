PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run accounts demo test lint typecheck pytest bench bench-postgres clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

RUN_URL := http://127.0.0.1:8080

# The order example served by `mainspring node` on a SQLite file; Ctrl-C stops it cleanly.
run: $(STAMP)
	@echo "mainspring: the order example at $(RUN_URL) (store sqlite:///./mainspring.db)"
	@echo "start an order:"
	@echo "  curl -s -X POST $(RUN_URL)/v1/workflows/order -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"id\": \"order-1\", \"input\": {\"order_id\": \"order-1\", \"customer_id\": \"cust-1\", \"items\": [{\"sku\": \"sku-1\", \"qty\": 2}], \"amount_cents\": 2500}}'"
	@echo "then: curl -s '$(RUN_URL)/v1/workflows/order-1?wait=10'   (more in README.md, Quickstart)"
	$(BIN)/mainspring node --app examples.orders.app --store sqlite:///./mainspring.db --listen 127.0.0.1:8080

# The account example: concurrent asks to 100 accounts, a restart, and the balance checks.
accounts: $(STAMP)
	$(BIN)/python -m examples.accounts

# The order example in a real node process, SIGKILLed mid-run; prints one JSON summary line.
demo: $(STAMP)
	$(BIN)/python -m examples.orders

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples simulations
	$(BIN)/ruff format --check src tests bench examples simulations

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
