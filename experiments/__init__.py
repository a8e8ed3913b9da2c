"""The paper's ablations and scaling studies as sets of runs: specs, plans, reuse, trends, the report.

    python -m experiments.sweep mask_ratio --preset cpu       # -> runs/sweeps/mask_ratio
    python -m experiments.report runs/sweeps/* --out report.html

Modules (each one job):
  spec        a sweep's YAML (configs/sweeps/NAME.yaml) and its base trainer config; SweepError
  plan        every point resolved into a full trainer config (Point), checked by the trainer's own
              validation; experiment_key (what a run computes, for reuse)
  results     the sweep table, rebuilt from the plan, the run stores and the sweep records
  reuse       a finished point of the same experiment in a sibling sweep, copied instead of trained
  sweep       run_sweep (train, resume, skip, reuse each point) and the CLI
  store       a sweep directory's files: plan.json (ours) and the sweep table (through runstore)
  trends      the paper's findings as tests on a sweep table, with standard errors and verdicts
  paper_refs  the paper's own numbers per ablation (reference data)
  report      the self-contained HTML report; CLI

Arrows: experiments imports trainer (each point is a normal `trainer.pretrain` run), evals (the
final online evals a killed sweep still owes), runstore, model (parameter counts) and common.
Nothing imports experiments: it drives the others from above (tests/test_package_arrows.py checks
it; the standard error the inspector shares with trends is common.stats.point_se).
"""
