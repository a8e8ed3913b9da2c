"""A checkpoint never runs code: every reader goes through ``model.checkpoint.safe_torch_load``.

The malicious files here are real pickles whose ``__reduce__`` names ``os.system``; a marker file
shows whether it ran. Official-format checkpoints (an ``argparse.Namespace`` under "args", or
"model" only) still load through the explicit allow-list.
"""
import argparse
import os

import pytest
import torch

from model import MaskedAutoencoderViT, UnsafeCheckpointError, load_checkpoint, safe_torch_load

TINY = dict(img_size=32, patch_size=8, embed_dim=128, depth=2, num_heads=2,
            decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2, norm_pix_loss=True)


class RunsShell:
    """Unpickling this calls ``os.system`` (what an attacker's checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(path, marker):
    torch.manual_seed(0)
    sd = MaskedAutoencoderViT(**TINY).state_dict()
    torch.save({"model": sd, "payload": RunsShell(marker)}, path)
    return path


def test_malicious_pickle_through_load_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "MARKER"
    path = malicious_checkpoint(tmp_path / "evil.pth", marker)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint(path)
    assert not marker.exists(), "the checkpoint's pickle ran a shell command"
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "system" in msg  # names the file and the global
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(path, mmap=True)
    assert not marker.exists()


def test_other_globals_are_refused_too(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "np.pth"
    torch.save({"model": {}, "rng": np.random.get_state()}, path)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        safe_torch_load(path)


def test_official_checkpoints_with_a_namespace_or_model_only_still_load(tmp_path):
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**TINY).eval()
    full = tmp_path / "checkpoint-799.pth"  # what the official misc.save_model writes
    torch.save({"model": m.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="mae_vit_base_patch16", blr=1.5e-4,
                                                                         output_dir="./out", input_size=224)},
               full)
    only = tmp_path / "mae_visualize.pth"
    torch.save({"model": m.state_dict()}, only)
    raw = safe_torch_load(full)
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].blr == 1.5e-4 and raw["epoch"] == 799
    for path in (full, only):
        m2 = load_checkpoint(path)
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth") as e:
        safe_torch_load(bad)
    assert not isinstance(e.value, UnsafeCheckpointError) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        safe_torch_load(tmp_path / "nope.pth")
