"""MAE pretraining loop (see DESIGN.md, docs/INTERFACES.md). The lr schedule (warm-up then
half-cosine) is common.schedule, shared with the eval CLIs.

Modules, one job each:
  pretrain.py     the loop (train_one_epoch, end_epoch) and CLI: ``python -m trainer.pretrain --config X.yaml``
  config.py       dataclass schema, YAML presets + dotted overrides, validation, config diffs on resume
  optim.py        AdamW (0.9, 0.95), no decay on biases / norms / tokens, lr = blr * eff_batch / 256
  noise.py        masking noise as a function of (seed, step), sliced per rank / micro-batch
  checkpoint.py   atomic checkpoint files with SHA-256 sidecars, retention, RNG states; the Checkpointer
  budget.py       budget_minutes: the epochs that fit a wall-clock budget, fixed after epoch 1
  resume.py       resume() -> TrainState; what a resume may change (same global batch: exact; --allow-change)
  preflight.py    checks before the work: data paths, damaged .beton (data.verify), workers, GPU-scale on CPU
  distributed.py  DDP wrapping and small collectives (process-group set-up: common.distributed)
  recons.py       fixed images + fixed noise -> reconstruction panels in the run store
  bench.py        full loop vs model alone throughput: ``python -m trainer.bench``
"""
