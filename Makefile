# The two commands of the README:  `make sweep`  and  `make test`.
.PHONY: setup sweep test lint bench

setup:
	@bash scripts/setup.sh

sweep: setup
	.venv/bin/corrtune sweep search_spaces/lambda.yaml

# pytest exits 5 when it collects no test: that fails, like any other non-zero status.
test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

bench: setup
	.venv/bin/python benchmarks/run_all.py
