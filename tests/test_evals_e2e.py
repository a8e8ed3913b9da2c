"""End to end: a tiny pretraining run with per-epoch evals, then the three eval CLIs on its checkpoint.

Real parts only: the built-in sample dataset (JPEG folders), the trainer's own entry point, the
run store on disk, the pipeline's torch loaders.
"""
import json
from pathlib import Path

import pytest
import yaml

import runstore

TINY_RUN = {
    "seed": 0, "epochs": 2, "deterministic": True, "threads": 1,
    "model": {"name": "mae_vit_pico_patch8_64", "embed_dim": 32, "depth": 2,
              "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2},
    "data": {"backend": "torch", "image_size": 32, "batch_size": 16, "num_workers": 0},
    "optim": {"blr": 1.0e-2, "warmup_epochs": 1},
    "evals": {"every": 1, "knn": True, "linprobe": True, "max_train": 60, "max_val": 30,
              "batch_size": 32},
    "recons": {"every": 0},
    "checkpoint": {"every": 1, "keep_last": 2, "every_minutes": 0},
    "log": {"progress": False},
}


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    from pipeline.sample import make_sample_dataset
    from trainer.pretrain import main

    tmp = tmp_path_factory.mktemp("evals_e2e")
    data = make_sample_dataset(tmp / "data", image_size=32, train_per_class=8, val_per_class=4, seed=0)
    cfg = yaml.safe_load(yaml.safe_dump(TINY_RUN))
    cfg["run_dir"] = str(tmp / "run")
    cfg["data"].update(train_path=str(Path(data) / "train"), val_path=str(Path(data) / "val"))
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp / "c.yaml")]) == 0
    return tmp / "run", Path(data)


def test_pretraining_logs_one_knn_and_one_linprobe_record_per_epoch(pretrained_run):
    run_dir, _ = pretrained_run
    ev = runstore.open(run_dir).evals()
    for kind in ("knn", "linprobe"):
        rows = ev[ev["kind"] == kind]
        assert sorted(rows["epoch"].tolist()) == [1, 2], (kind, ev)
        assert rows["top1"].between(0, 1).all() and rows["top5"].between(0, 1).all()
        assert (rows["top5"] >= rows["top1"]).all()
        assert (rows["seconds"] > 0).all() and (rows["seconds"] < 60).all()
        assert (rows["n_train"] == 60).all() and (rows["n_val"] == 30).all()
        # what each record was computed on: evals on other data never replace it in evals()
        for settings in rows["settings"].map(json.loads):
            assert settings["train_path"].endswith("train") and settings["val_path"].endswith("val")
            assert settings["n_train"] == 60 and settings["n_val"] == 30 and settings["image_size"] == 32


def test_eval_clis_write_into_the_checkpoint_run(pretrained_run, capsys):
    from evals import finetune, knn, linprobe

    run_dir, data = pretrained_run
    ckpt = sorted((run_dir / "checkpoints").glob("*.pth"))[-1]
    common = ["--ckpt", str(ckpt), "--data", str(data), "--num-workers", "0", "--device", "cpu"]
    assert knn.main(common) == 0
    assert linprobe.main(common + ["--cached", "--epochs", "5"]) == 0
    assert linprobe.main(common + ["--epochs", "1", "--warmup-epochs", "0", "--batch-size", "16"]) == 0
    ft = ["--epochs", "1", "--batch-size", "16", "--warmup-epochs", "0.5"]
    assert finetune.main(common + ft) == 0
    assert finetune.main(common + ft + ["--from-scratch"]) == 0
    assert "written to run store" in capsys.readouterr().out
    ev = runstore.open(run_dir).evals()
    for kind in ("knn", "linprobe", "linprobe_full", "finetune", "finetune_scratch"):
        last = ev[ev["kind"] == kind].iloc[-1]
        assert last["epoch"] == 2, (kind, ev)          # the checkpoint's epoch
        assert 0 <= last["top1"] <= last["top5"] <= 1
    assert ev[ev["kind"] == "finetune"].iloc[-1]["loss"] > 0


def test_finetune_vit_carries_the_pretrained_encoder(pretrained_run):
    """timm ViT built from the checkpoint runs the same encoder: its tokens, put through the MAE's
    final norm (which the avg-pool ViT keeps as fc_norm), equal the MAE's forward_features."""
    import torch

    from evals.common import load_mae
    from evals.finetune import build_vit

    run_dir, _ = pretrained_run
    mae = load_mae(sorted((run_dir / "checkpoints").glob("*.pth"))[-1]).model.eval()
    vit = build_vit(mae, num_classes=10, drop_path=0.0, pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = mae.forward_features(x)
        theirs = vit.fc_norm(vit.forward_features(x))
        assert torch.allclose(ours, theirs, atol=1e-5)
        scratch = build_vit(mae, num_classes=10, drop_path=0.0, pretrained=False).eval()
        assert not torch.allclose(ours, scratch.fc_norm(scratch.forward_features(x)), atol=1e-2)
