# The two entry points from the README; both install what they need first.
# `make test` runs the fast checks first (lint, typecheck: seconds), then the suite.
.PHONY: install demo test bench lint typecheck

install:
	bash scripts/install.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	.venv/bin/python scripts/typecheck.py

demo: install
	.venv/bin/pyinspect demo

test: install
	$(MAKE) --no-print-directory lint typecheck
	.venv/bin/pytest

bench: install
	.venv/bin/python bench/run_all.py
