"""The README's main job on the built-in sample dataset, end to end on CPU.

    make demo            # = python scripts/demo.py

1. generate the sample dataset            (python -m pipeline.sample)
2. convert it to FFCV .beton files        (python -m pipeline.build_ffcv)
3. pretrain the CPU-scale demo MAE        (python -m trainer.pretrain --config configs/demo.yaml)
   -- up to 16 epochs, as many as fit its 4.4-minute budget; kNN and cached linear-probe evals (epoch
      8 and the last) and sampled reconstructions go into the run store
4. print the final checkpoint's kNN and linear probe from the run store (recorded by stage 3 on
   the same frozen features the standalone CLIs use; when a record is missing, the CLIs run:
   python -m evals.knn, python -m evals.linprobe --cached)
5. open the inspector on runs/ and print its URL   (python -m inspector)

Every stage is skipped when its output is already there (delete it, or `make clean`, to redo it);
a pretraining run that was interrupted resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.sample import CLASSES, DEFAULT_TRAIN_PER_CLASS, DEFAULT_VAL_PER_CLASS

ROOT = Path(__file__).resolve().parent.parent


def stage(title: str, cmd: list[str], skip_if: Path | None = None) -> bool:
    """Run ``python cmd`` in the repository (exit on failure); False when skipped."""
    if skip_if is not None and skip_if.exists():
        print(f"\n== {title}: already done ({skip_if.relative_to(ROOT)} exists), skipping")
        return False
    print(f"\n== {title}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    rc = subprocess.call([sys.executable, *cmd], cwd=ROOT)
    if rc != 0:
        sys.exit(f"demo: stage '{title}' failed with exit code {rc}")
    print(f"== {title}: {time.time() - t0:.0f} s")
    return True


def stale_sample(data: Path) -> str | None:
    """Why ``data`` is not the sample dataset this demo's recipe was measured on, or None when it is
    (or is not there yet). The demo skips stages whose output exists, so a sample made by an older
    version (other image counts) would otherwise be used silently."""
    if not (data / "classes.tsv").exists():
        return None
    want = {"train": DEFAULT_TRAIN_PER_CLASS * len(CLASSES), "val": DEFAULT_VAL_PER_CLASS * len(CLASSES)}
    have = {split: sum(1 for _ in (data / split).rglob("*.jpg")) for split in want}
    if have == want:
        return None
    return (f"{data} holds {have['train']:,} train / {have['val']:,} val images; the sample dataset "
            f"has {want['train']:,} / {want['val']:,}")


def refresh_stale_sample(data: Path, beton: Path, run: Path) -> None:
    """Remake a stale sample (generated data: nothing is lost) and move the run trained on it aside."""
    why = stale_sample(data)
    if why is None:
        return
    print(f"demo: {why}; making it again", flush=True)
    shutil.rmtree(data)
    shutil.rmtree(beton, ignore_errors=True)
    if run.exists():
        old = run.with_name(f"{run.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run.rename(old)
        print(f"demo: {run} was trained on the old sample; moved to {old}", flush=True)


def final_evals(run: Path) -> dict[str, dict] | None:
    """The kNN and linear-probe records of the run's final epoch, as the trainer wrote them, or None
    when the run store lacks one of them (an older demo recipe, evals switched off, or not run after
    the last epoch)."""
    import runstore

    try:
        store = runstore.open(run)
        final_epoch = int(runstore.planned_epochs(store.config, store.status_info()))
        evals = store.evals()
    except (OSError, ValueError, KeyError, TypeError):  # no readable store or config: the CLIs recompute
        return None
    last = evals[evals["epoch"] == final_epoch]
    found = {}
    for kind in ("knn", "linprobe"):
        rows = last[last["kind"] == kind]
        if rows.empty:
            return None
        row = rows.iloc[-1]
        try:
            settings = json.loads(row["settings"]) if row["settings"] else {}
        except ValueError:
            settings = {}
        found[kind] = {"epoch": int(row["epoch"]), "top1": float(row["top1"]), "top5": float(row["top5"]),
                       "n_train": int(row["n_train"]), "n_val": int(row["n_val"]),
                       "settings": settings if isinstance(settings, dict) else {}}
    return found


def _chance(data: Path) -> str:
    """", chance 10%" from the number of classes in the data folder's classes.json (build_ffcv's);
    "" when it cannot be read."""
    try:
        classes = json.loads((data / "classes.json").read_text())
    except (OSError, ValueError):
        return ""
    return f", chance {1 / len(classes):.0%}" if isinstance(classes, list) and classes else ""


def report_final_evals(run: Path, ckpt: Path, beton: Path) -> None:
    found = final_evals(run)
    if found is None:
        stage("4/5 kNN", ["-m", "evals.knn", "--ckpt", str(ckpt), "--data", str(beton)])
        stage("4/5 linear probe (cached features)",
              ["-m", "evals.linprobe", "--cached", "--ckpt", str(ckpt), "--data", str(beton)])
        return
    knn, probe = found["knn"], found["linprobe"]
    print(f"\n== 4/5 evaluation of the final checkpoint (epoch {knn['epoch']}, recorded by stage 3 in "
          f"{run.relative_to(ROOT) if run.is_relative_to(ROOT) else run}/evals.zarr)")
    k = knn["settings"].get("k")
    print(f"kNN{f' (k={k})' if isinstance(k, int) else ''} top-1 {knn['top1']:.1%} (top-5 {knn['top5']:.1%}); "
          f"cached linear probe top-1 {probe['top1']:.1%} (top-5 {probe['top5']:.1%}); {knn['n_val']} val images, "
          f"{knn['n_train']:,} train{_chance(beton)}")
    print(f"the same numbers from the standalone CLIs: python -m evals.knn --ckpt {ckpt} --data {beton}; "
          f"python -m evals.linprobe --cached --ckpt {ckpt} --data {beton}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-inspector", action="store_true", help="stop after evaluation (do not serve the app)")
    ap.add_argument("--port", type=int, default=None, help="inspector port (default: 7860 or the next free one)")
    args = ap.parse_args(argv)

    data, beton, run = ROOT / "data/sample", ROOT / "data/sample_ffcv", ROOT / "runs/demo"
    refresh_stale_sample(data, beton, run)
    stage("1/5 sample dataset", ["-m", "pipeline.sample", "--out", str(data)], skip_if=data / "classes.tsv")
    built = stage("2/5 build FFCV", ["-m", "pipeline.build_ffcv", str(data), str(beton)],
                  skip_if=beton / "train.beton")
    # build_ffcv has just written these files and their checksums (read back from the written file):
    # checking every sample against them seconds later (data.verify=auto, about 5 s of the budget)
    # finds nothing new; the check stays on for betons an earlier demo left behind
    verify = ["data.verify=never"] if built else []
    stage("3/5 pretrain", ["-m", "trainer.pretrain", "--config", "configs/demo.yaml", f"run_dir={run}", *verify],
          skip_if=run / "checkpoints" / "final.pth")
    report_final_evals(run, run / "checkpoints" / "final.pth", beton)
    if args.no_inspector:
        return 0
    print("\n== 5/5 inspector (Ctrl-C to stop)", flush=True)
    port = ["--port", str(args.port)] if args.port else []
    return subprocess.call([sys.executable, "-m", "inspector", "--runs", str(ROOT / "runs"), *port], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
