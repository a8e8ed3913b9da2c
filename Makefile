# The two commands a new user runs (see README.md):
#   make demo   - sample dataset -> FFCV -> pretrain -> evaluate -> inspector
#   make test   - the test suite
PY := .venv/bin/python

.PHONY: setup demo test bench imagenette-table clean

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
	$(PY) -m benchmarks.adamw_cpu
	$(PY) -m benchmarks.budget_replay

# Proof on real photographs (configs/imagenette_cpu_60min.yaml, a 60-minute budget; 72 minutes on 2 cores from scratch in the last
# measured run: 57 min pretraining, 2 min frozen rows, 13 min for 5 fine-tuning epochs x 2 models): MAE vs random
# init vs pixels, fine-tune vs scratch
imagenette-table: setup
	$(PY) -m evals.imagenette_table

clean:
	rm -rf runs/demo data/sample
