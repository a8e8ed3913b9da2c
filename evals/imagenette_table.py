"""The proof on real photographs: MAE-pretrained vs random-init vs raw pixels on Imagenette.

    python -m evals.imagenette_table                 # the real one (~1 h pretraining on 2 CPU cores)
    python -m evals.imagenette_table --config configs/imagenette_cpu_12min.yaml   # the 12-minute recipe
    python -m evals.imagenette_table --smoke         # minutes: 30 img/class, 2 epochs, proves the plumbing

Steps (each skipped when its output exists, so an interrupted run picks up where it stopped):
  1. convert the Imagenette folders to 64-px FFCV files (pipeline.build_ffcv --max-resolution 64);
  2. pretrain --config (default configs/imagenette_cpu_60min.yaml) into the config's run_dir under
     --work (trainer.pretrain; resumes a started run; a finished run, RUN/checkpoints/final.pth,
     is not trained again);
  3. centre-crop features of the full train / val splits for the pretrained encoder, the same
     encoder at random initialisation, and raw pixels (flattened), the encoders' pooled as the
     config's evals.pool (cls token or average of the patch tokens); kNN (k=20, T=0.07) and the
     cached linear probe (BatchNorm + linear, LARS) on each;
  4. fine-tune the pretrained encoder and train the same ViT from scratch, same recipe and epochs;
  5. print a markdown table, write it to RUN/imagenette_table.md and the records to the run store.

Expected (the paper and every small reproduction): pretrained > random init on linear probe and kNN,
and pretrained + fine-tune > scratch.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from evals.common import Timer, load_mae, make_eval_loader, write_result
from evals.features import extract_features
from evals.inputs import RawHelpFormatter, UserError, cli, require_steps
from evals.finetune import TensorAugment, build_vit, finetune
from evals.knn import knn_classify
from evals.linprobe import train_probe_on_features
from pipeline.shared_data import imagenette_dir

ROOT = Path(__file__).resolve().parent.parent


class RawPixels(nn.Module):
    """The 'no learning' baseline: the normalised image itself, flattened, as the feature."""

    def encode(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        return images.flatten(1)


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        raise SystemExit(f"command failed with exit code {rc}: {' '.join(cmd)}")


def convert(src: Path, out: Path, subset: int | None) -> None:
    if (out / "train.beton").is_file() and (out / "val.beton").is_file():
        print(f"[table] {out}: FFCV files exist, not converting again")
        return
    cmd = [sys.executable, "-m", "pipeline.build_ffcv", str(src), str(out), "--max-resolution", "64"]
    if subset:
        cmd += ["--subset", str(subset)]
    _run(cmd)


def pretrain(config: str, run_dir: Path, data: Path, overrides: list[str]) -> Path:
    final = run_dir / "checkpoints" / "final.pth"
    if final.is_file():
        print(f"[table] {final} exists, not pretraining again")
        return final
    _run([sys.executable, "-m", "trainer.pretrain", "--config", config, "--run-dir", str(run_dir),
          f"data.train_path={data / 'train.beton'}", f"data.val_path={data / 'val.beton'}",
          "data.backend=ffcv", *overrides])
    if not final.is_file():
        raise SystemExit(f"pretraining finished without {final}")
    return final


def config_facts(path: str) -> tuple[str, str]:
    """(run_dir, evals.pool) of a pretraining config, as written in it (pool 'cls' when absent)."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--config {path}: cannot read it as YAML ({' '.join(str(e).split())})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("run_dir"), str):
        raise UserError(f"--config {path}: no run_dir: key (a trainer config, e.g. "
                        "configs/imagenette_cpu_60min.yaml)")
    pool = (doc.get("evals") or {}).get("pool", "cls")
    if pool not in ("cls", "avg"):
        raise UserError(f"--config {path}: evals.pool {pool!r}: valid are 'cls' and 'avg'")
    return doc["run_dir"], pool


def frozen_rows(models: dict[str, nn.Module], data: Path, size: int, device, workers: int,
                probe_epochs: int, pool: str = "cls") -> dict[str, dict]:
    """kNN + cached linear probe for each frozen 'encoder' on the full train / val splits."""
    tr = make_eval_loader("ffcv", str(data / "train.beton"), size, 256, False, device, workers)
    va = make_eval_loader("ffcv", str(data / "val.beton"), size, 256, False, device, workers)
    rows = {}
    for name, m in models.items():
        t = Timer()
        ftr, ytr = extract_features(m.to(device), tr, device, pool, desc=f"{name} train")
        fva, yva = extract_features(m, va, device, pool, desc=f"{name} val")
        knn = knn_classify(ftr, ytr, fva, yva, k=20, T=0.07, num_classes=tr.num_classes)
        probe = train_probe_on_features(ftr, ytr, fva, yva, tr.num_classes, epochs=probe_epochs,
                                        warmup_epochs=max(1, probe_epochs // 9), device=device)
        rows[name] = {"knn": knn, "linprobe": probe, "dim": ftr.shape[1], "seconds": t()}
        print(f"[table] {name}: kNN {knn['top1']:.3f}, linear probe {probe['top1']:.3f} "
              f"(train {probe['train_top1']:.3f}), {ftr.shape[1]}-d, {t():.0f}s", flush=True)
    return rows


def finetune_rows(mae: nn.Module, data: Path, size: int, device, workers: int, epochs: int,
                  batch: int) -> dict[str, dict]:
    tr = make_eval_loader("ffcv", str(data / "train.beton"), size, batch, True, device, workers,
                          drop_last=True)
    va = make_eval_loader("ffcv", str(data / "val.beton"), size, 256, False, device, workers)
    big = mae.config["embed_dim"] > 768
    rows = {}
    for name, pretrained in (("MAE pretrained", True), ("from scratch", False)):
        t = Timer()
        vit = build_vit(mae, tr.num_classes, drop_path=0.1, pretrained=pretrained)
        res = finetune(vit, tr, va, tr.num_classes, device, epochs,
                       blr=1e-3 if big else 5e-4, layer_decay=0.65 if pretrained else 1.0,
                       warmup_epochs=max(1, epochs // 20) if epochs > 1 else 0.5,
                       tensor_aug=TensorAugment(device, 0.25))
        require_steps(res["steps"], f"fine-tune {name}")     # never a table row from an untrained head
        rows[name] = {**res, "seconds": t()}
        print(f"[table] fine-tune {name}: {res['top1']:.3f} ({t():.0f}s)", flush=True)
    return rows


def table(frozen: dict, tuned: dict, meta: str) -> str:
    lines = [f"Imagenette at 64 px, {meta}", "",
             "| features | dim | kNN top-1 | linear probe top-1 | linear probe top-5 |",
             "|---|---:|---:|---:|---:|"]
    for name, r in frozen.items():
        lines.append(f"| {name} | {r['dim']} | {100 * r['knn']['top1']:.1f} | "
                     f"{100 * r['linprobe']['top1']:.1f} | {100 * r['linprobe']['top5']:.1f} |")
    lines += ["", "| fine-tuning (same ViT, same recipe, same epochs) | top-1 | top-5 | val loss |",
              "|---|---:|---:|---:|"]
    for name, r in tuned.items():
        lines.append(f"| {name} | {100 * r['top1']:.1f} | {100 * r['top5']:.1f} | {r['loss']:.3f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.imagenette_table",
                                description=__doc__.split("\n\n")[0] + " Prints a markdown table.",
                                formatter_class=RawHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--src", default=str(imagenette_dir()), help="Imagenette train/ + val/ (default: %(default)s)")
    p.add_argument("--work", default=None,
                   help="where data and the run go (default: data/ and runs/ in the repo; "
                        "--smoke: /tmp/imagenette_smoke)")
    p.add_argument("--config", default="configs/imagenette_cpu_60min.yaml",
                   help="pretraining config; its run_dir (under --work) and evals.pool are used "
                        "(default: %(default)s)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default: the config's")
    p.add_argument("--finetune-epochs", type=int, default=5,
                   help="per model (pretrained and scratch); each epoch sees all 65 tokens of "
                        "8,469 images, roughly 4x a pretraining epoch on CPU")
    p.add_argument("--probe-epochs", type=int, default=90, help="cached linear-probe epochs")
    p.add_argument("--finetune-batch", type=int, default=128, help="fine-tuning batch")
    p.add_argument("--subset", type=int, default=None, help="images per class, for quick runs (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="30 images/class, 2 pretrain epochs, 1 fine-tune epoch: plumbing only")
    p.add_argument("--num-workers", type=int, default=2, help="loader worker processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return p


@cli("python -m evals.imagenette_table")
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.subset = args.subset or 30
        args.pretrain_epochs = args.pretrain_epochs or 2
        args.finetune_epochs = 1
        args.probe_epochs = min(args.probe_epochs, 10)
        args.work = args.work or "/tmp/imagenette_smoke"
    work = Path(args.work) if args.work else ROOT
    data = work / "data" / ("imagenette_ffcv" if not args.subset else f"imagenette_ffcv_sub{args.subset}")
    run_name, pool = config_facts(args.config)
    run_dir = work / ("runs/imagenette_smoke" if args.smoke else run_name)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    total = Timer()
    convert(Path(args.src), data, args.subset)
    overrides = [f"epochs={args.pretrain_epochs}"] if args.pretrain_epochs else []
    if args.smoke:
        overrides += ["optim.warmup_epochs=1", "evals.every=1", "recons.every=1"]
    ckpt = pretrain(args.config, run_dir, data, overrides)
    ck = load_mae(ckpt)
    size = int(ck.model.config["img_size"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_init = type(ck.model)(**ck.model.config)
    frozen = frozen_rows({"MAE pretrained": ck.model, "same encoder, random init": random_init,
                          "raw pixels": RawPixels()}, data, size, device, args.num_workers,
                         args.probe_epochs, pool)
    tuned = finetune_rows(ck.model, data, size, device, args.num_workers, args.finetune_epochs,
                          args.finetune_batch)
    meta = (f"pretrained {ck.epoch} epochs ({args.config}), {pool}-pooled features, "
            f"fine-tune {args.finetune_epochs} epochs, {'subset ' + str(args.subset) + '/class, ' if args.subset else ''}"
            f"total {total() / 60:.1f} min on {device.type}")
    text = table(frozen, tuned, meta)
    print(text)
    (run_dir / "imagenette_table.md").write_text(text)
    # what the records were computed on (the run store keeps one per epoch, kind and settings)
    on = {"table": "imagenette", "data": str(data.resolve()), "subset": args.subset}
    for name, r in frozen.items():
        tag = {"MAE pretrained": "", "same encoder, random init": "_random_init",
               "raw pixels": "_raw_pixels"}[name]
        write_result(run_dir, ck.epoch, {"kind": "knn" + tag, **r["knn"], "loss": None,
                                         "settings": {**on, "pool": pool, "k": 20, "temperature": 0.07}})
        write_result(run_dir, ck.epoch, {"kind": "linprobe" + tag, "top1": r["linprobe"]["top1"],
                                         "top5": r["linprobe"]["top5"],
                                         "loss": r["linprobe"]["loss"],
                                         "settings": {**on, "pool": pool, "cached": True,
                                                      "epochs": r["linprobe"]["epochs"],
                                                      "batch_size": r["linprobe"]["batch_size"]}})
    for name, r in tuned.items():
        write_result(run_dir, ck.epoch, {"kind": "finetune" if name == "MAE pretrained"
                                         else "finetune_scratch", "top1": r["top1"],
                                         "top5": r["top5"], "loss": r["loss"],
                                         "seconds": r["seconds"], "steps": r["steps"],
                                         "settings": {**on, "epochs": args.finetune_epochs,
                                                      "batch_size": args.finetune_batch}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
