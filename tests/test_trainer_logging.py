"""What a run leaves in its run store: resolved config, per-step metrics, reconstructions of fixed
images (epoch 0 = before training, then every K epochs and after the last), online evals."""
import numpy as np
import yaml

import runstore
from trainer.config import load_config
from trainer.pretrain import main

from .test_trainer_helpers import tiny_data, write_config  # noqa: F401


def test_run_store_contents(tmp_path, tiny_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "run", epochs=3, deterministic=False,
                       recons={"every": 2, "num_train": 3, "num_val": 2},
                       evals={"every": 3, "knn": True, "linprobe": True, "linprobe_epochs": 2, "batch_size": 16})
    assert main(["--config", str(cfg), "optim.blr=2e-2"]) == 0
    run = runstore.open(tmp_path / "run")
    assert run.status == "finished"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == load_config(cfg, ["optim.blr=2e-2"]).to_dict()
    m = run.metrics()
    assert list(m["step"]) == list(range(1, 16))
    assert np.allclose(m["epoch"].iloc[[4, 9, 14]], [1, 2, 3])  # fractional epochs, 5 steps each
    assert ((m["data_wait"] >= 0) & (m["data_wait"] <= 1)).all() and (m["images_per_s"] > 0).all()
    assert m["lr"].iloc[0] == 0.0 and m["lr"].max() > 0  # warm-up starts at zero
    assert run.reconstruction_epochs("train") == [0, 2, 3] == run.reconstruction_epochs("val")
    r0, r3 = run.reconstructions(0, "train"), run.reconstructions(3, "train")
    assert r0["original"].shape == (3, 32, 32, 3) and r0["original"].dtype == np.uint8
    assert np.array_equal(r0["original"], r3["original"]) and np.array_equal(r0["mask"], r3["mask"])  # fixed
    assert np.array_equal(r0["image_ids"], r3["image_ids"])
    assert r0["mask"].sum(axis=1).tolist() == [12] * 3  # 75% of 16 patches
    assert not np.array_equal(r0["reconstruction"], r3["reconstruction"])  # the model changed
    ev = run.evals()
    assert sorted(ev["kind"]) == ["knn", "linprobe"] and set(ev["epoch"]) == {3}
    assert ev["top1"].between(0, 1).all()
