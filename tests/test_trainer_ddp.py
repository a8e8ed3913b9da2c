"""Two CPU processes under torchrun (gloo) train the same model as one process with the same
effective batch: 2 x 4 images per step vs 1 x 8, and 1 x 4 with 2 accumulation steps."""
import subprocess
import sys

import torch

from .test_trainer_helpers import ROOT, env, final_weights, pretrain_cmd, tiny_data, write_config  # noqa: F401


def _start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_match_one_with_same_effective_batch(tmp_path, tiny_data):
    cfg = write_config(tmp_path / "c.yaml", tiny_data, tmp_path / "one", epochs=2,
                       optim={"blr": 3e-2, "warmup_epochs": 0})  # lr 9.4e-4: weights move well past the tolerance
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "trainer.pretrain", "--config", str(cfg)]
    procs = {
        "one": _start(pretrain_cmd(cfg, "data.batch_size=8")),
        "accum": _start(pretrain_cmd(cfg, f"run_dir={tmp_path / 'accum'}", "data.batch_size=4",
                                     "optim.accum_steps=2")),
        "ddp": _start(torchrun + [f"run_dir={tmp_path / 'ddp'}", "data.batch_size=4"]),
    }
    for name, p in procs.items():
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, f"{name}:\n{out}"
        if name == "ddp":
            assert "2 process(es)" in out and "effective batch 8 (4 x 1 accum x 2)" in out, out
    one = final_weights(tmp_path / "one")
    # Float sums in another order (gloo all-reduce, accumulation) differ in the last bits; Adam turns
    # that into differences of a small fraction of lr where a gradient is near zero.
    for name in ("accum", "ddp"):
        other = final_weights(tmp_path / name)
        for k in one:
            torch.testing.assert_close(other[k], one[k], rtol=1e-3, atol=2e-4, msg=lambda m: f"{name} {k}: {m}")
    # and training moved the weights well beyond that tolerance (the comparison means something)
    from model import create_model
    torch.manual_seed(0)  # the trainer seeds the same way before building the model
    init = create_model("mae_vit_pico_patch8_64", img_size=32, embed_dim=32, depth=1, num_heads=2,
                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2).state_dict()
    assert max((one[k] - init[k]).abs().max().item() for k in init) > 2e-3
