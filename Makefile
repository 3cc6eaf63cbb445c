# The two entry points from the README; both install what they need first.
.PHONY: install demo test bench

install:
	bash scripts/install.sh

demo: install
	.venv/bin/pyinspect demo

test: install
	.venv/bin/pytest

bench: install
	.venv/bin/python bench/run_all.py
