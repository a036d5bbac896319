# migrator: the README's two commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3

.PHONY: setup demo test test-fast bench lint

setup:
	./scripts/setup.sh

demo: setup
	$(PYTHON) -m migrator.demo

test: setup
	$(PYTHON) -m pytest -q -ra

test-fast: setup
	$(PYTHON) -m pytest -q -ra -m "not slow"

bench: setup
	./scripts/setup-bench.sh
	$(PYTHON) -m bench.run
	$(PYTHON) -m bench.put_cpu

lint: setup
	$(PYTHON) -m ruff check migrator tests bench
	$(PYTHON) -m mypy  # over migrator/, configured in pyproject.toml
