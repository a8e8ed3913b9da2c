# The two commands a new user runs (see README.md):
#   make demo   - sample dataset -> FFCV -> pretrain -> evaluate -> inspector
#   make test   - the test suite
PY := .venv/bin/python

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@$(PY) scripts/demo.py

test: setup
	@$(PY) -m pytest

bench: setup
	$(PY) -m benchmarks.model_bench
	$(PY) -m pipeline.bench
	$(PY) -m trainer.bench

clean:
	rm -rf runs/demo data/sample
