"""The inspector as an attacker and an unlucky user would meet it (issue 15, and issue 12's PCA row).

Every run here is a real run store written by `runstore.create` with a real checkpoint written by
`trainer.checkpoint.save_atomic` (a pico MAE, ~2 MB), so the tests are fast and need no training.
"""
from __future__ import annotations

import argparse
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import runstore

PICO = "mae_vit_pico_patch8_64"


def _config(run_dir: Path, **model) -> dict:
    return {"run_dir": str(run_dir), "seed": 0, "epochs": 2, "device": "cpu",
            "model": {"name": PICO, "mask_ratio": 0.75, "norm_pix_loss": True, **model},
            "data": {"backend": "torch", "train_path": "data/sample/train", "image_size": 64, "batch_size": 4}}


def make_run(root: Path, name: str, *, checkpoint: bool = True, **model) -> Path:
    """A finished run with 5 metric rows and (optionally) one checkpoint in the trainer's format."""
    from model import create_model
    from trainer.checkpoint import checkpoint_name, save_atomic
    run_dir = Path(root) / name
    w = runstore.create(run_dir, _config(run_dir, **model))
    w.log_metrics([{"step": i + 1, "epoch": (i + 1) / 5, "loss": 1.0 - 0.1 * i, "lr": 1e-4,
                    "images_per_s": 100.0, "data_wait": 0.01} for i in range(5)])
    if checkpoint:
        torch.manual_seed(0)
        m = create_model(PICO)
        path = save_atomic({"model": m.state_dict(), "model_config": m.config, "epoch": 1, "step": 5},
                           run_dir / "checkpoints" / checkpoint_name(1, 5))
        w.add_checkpoint(path, epoch=1, step=5)
    w.set_status("finished")
    w.close()
    return run_dir


class RunsShell:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_sidecar(path: Path) -> None:
    """Give `path` a correct `.sha256`, as an attacker who controls the folder would."""
    from trainer.checkpoint import sha256_file
    path.with_name(path.name + ".sha256").write_text(f"{sha256_file(path)}  {path.name}\n")


def _state(root):
    from inspector import build_app
    return build_app(root).inspector_state


def _photo(tmp_path) -> str:
    p = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(p)
    return str(p)


# ------------------------------------------------------------------------------ checkpoints
def test_malicious_checkpoint_in_live_masking_runs_nothing(tmp_path):
    import gradio as gr
    from inspector import live
    from inspector.app import _live, _live_controls
    runs = tmp_path / "runs"
    run = make_run(runs, "victim")
    ckpt = next((run / "checkpoints").glob("ckpt-*.pth"))
    marker = tmp_path / "MARKER"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": RunsShell(marker)}, ckpt)
    _rewrite_sidecar(ckpt)  # the checksum matches: only the safe unpickler stands in the way

    with pytest.raises(live.LiveError) as e:
        live.ModelCache().get(ckpt)
    assert not marker.exists(), "the checkpoint's pickle ran a shell command inside the inspector"
    assert ckpt.name in str(e.value) and "system" in str(e.value) and "\n" not in str(e.value)

    state = _state(runs)
    ck_update, _, _ = _live_controls(state, "victim")
    with pytest.raises(gr.Error, match=ckpt.name):
        _live(state, "victim", ck_update["value"], _photo(tmp_path), None, 75, "random", 0)
    assert not marker.exists()
    assert state.models.loads == 0


def test_live_masking_verifies_the_checksum_before_loading(tmp_path):
    import gradio as gr
    from inspector import live
    from inspector.app import _live
    runs = tmp_path / "runs"
    run = make_run(runs, "r")
    ckpt = next((run / "checkpoints").glob("ckpt-*.pth"))
    ckpt.with_name(ckpt.name + ".sha256").write_text("0" * 64 + f"  {ckpt.name}\n")
    cache = live.ModelCache()
    with pytest.raises(live.LiveError, match=f"{ckpt.name}.*checksum"):
        cache.get(ckpt)
    assert cache.loads == 0
    state = _state(runs)
    with pytest.raises(gr.Error, match="checksum"):
        _live(state, "r", ckpt.name, _photo(tmp_path), None, 75, "random", 0)
    assert state.models.loads == 0
    ckpt.with_name(ckpt.name + ".sha256").write_text("not a digest\n")
    with pytest.raises(live.LiveError, match=f"{ckpt.name}.sha256 holds no SHA-256 digest; not loaded"):
        cache.get(ckpt)
    _rewrite_sidecar(ckpt)  # a good checksum: it loads
    assert cache.get(ckpt) is not None and cache.loads == 1


def test_official_format_checkpoints_load_in_live_masking(tmp_path):
    from inspector import live
    from model import create_model
    torch.manual_seed(0)
    sd = create_model(PICO).state_dict()
    full = tmp_path / "checkpoint-799.pth"
    torch.save({"model": sd, "epoch": 799, "args": argparse.Namespace(model="mae_vit_base_patch16", blr=1.5e-4)},
               full)
    only = tmp_path / "mae_visualize.pth"
    torch.save({"model": sd}, only)
    cache = live.ModelCache()
    for path in (full, only):  # no .sha256 beside them (downloaded files): loaded, safely
        m = cache.get(path)
        assert torch.equal(m.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])


def test_checkpoints_listed_from_the_files_when_the_index_is_missing(tmp_path):
    from inspector.app import _live_controls
    runs = tmp_path / "runs"
    run = make_run(runs, "r")
    ckpt = next((run / "checkpoints").glob("ckpt-*.pth"))
    os.link(ckpt, ckpt.with_name("final.pth"))
    (run / "checkpoints" / ".ckpt-e0002-s00000010.pth.tmp123").write_bytes(b"half")  # a killed writer's
    (run / "checkpoints" / "index.json").unlink()
    df = runstore.open(run).checkpoints()
    assert [Path(p).name for p in df["path"]] == [ckpt.name, "final.pth"]
    assert df["epoch"].iloc[0] == 1 and df["step"].iloc[0] == 5 and df["exists"].all()
    assert df["tag"].iloc[1] == "final"
    ck_update, _, note = _live_controls(_state(runs), "r")
    assert "no checkpoint" not in note and ck_update["value"] in (ckpt.name, "final.pth")


# ------------------------------------------------------------------------------ run discovery
def test_run_discovery_never_leaves_the_runs_root(tmp_path):
    from inspector.catalog import RunCatalog
    runs = tmp_path / "runs"
    make_run(runs, "inside", checkpoint=False)
    make_run(tmp_path / "elsewhere", "outside", checkpoint=False)
    (runs / "outlink").symlink_to(tmp_path / "elsewhere")
    (runs / "alias").symlink_to(runs / "inside")  # a link that stays inside: listed once, by its real name
    (runs / "group").mkdir()
    (runs / "group" / "up").symlink_to(runs)  # a loop back to the root
    found = [r.path for r in runstore.list_runs(runs)]
    assert found == [(runs / "inside").resolve()]
    assert RunCatalog(runs).names() == ["inside"]


def test_a_link_to_the_filesystem_root_lists_nothing_outside(tmp_path):
    from inspector.catalog import RunCatalog
    runs = tmp_path / "runs"
    make_run(runs, "inside", checkpoint=False)
    (runs / "rootlink").symlink_to("/")
    assert [r.name for r in runstore.list_runs(runs)] == ["inside"]
    assert RunCatalog(runs).names() == ["inside"]


def test_a_run_folder_whose_files_link_outside_is_refused(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs, "r", checkpoint=False)
    secret = tmp_path / "secret.yaml"
    secret.write_text("model: {name: from-outside}\n")
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(secret)
    with pytest.raises(ValueError, match="outside"):
        runstore.list_runs(runs)[0].config


# ------------------------------------------------------------------------------ broken runs
def test_unreadable_runs_are_one_broken_row_each_and_the_rest_works(tmp_path):
    from inspector.app import _refresh
    runs = tmp_path / "runs"
    make_run(runs, "good", checkpoint=False)
    marker = tmp_path / "MARKER"
    tagged = make_run(runs, "python_tag", checkpoint=False)
    (tagged / "config.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    bad_yaml = make_run(runs, "bad_yaml", checkpoint=False)
    (bad_yaml / "config.yaml").write_text("model: [unclosed\n")
    corrupt = make_run(runs, "corrupt_store", checkpoint=False)
    (corrupt / "metrics.zarr" / "zarr.json").write_bytes(b"\x00garbage")

    state = _state(runs)
    banner, table, *_ = _refresh(state, None)
    assert not marker.exists()
    rows = table.set_index("run")
    assert sorted(rows.index) == ["bad_yaml", "corrupt_store", "good", "python_tag"]
    for name, why in (("python_tag", "config.yaml"), ("bad_yaml", "config.yaml"), ("corrupt_store", "metrics.zarr")):
        assert rows.loc[name, "status"] == "broken", name
        assert why in rows.loc[name, "problems"], (name, rows.loc[name, "problems"])
    good = rows.loc["good"]
    assert good["status"] == "finished" and good["epochs (done/planned)"] == "1/2" and not good["problems"]
    assert good["encoder params"]
    assert banner["visible"] and "python_tag" in banner["value"] and "corrupt_store" in banner["value"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the app reading the damaged store warns too
def test_a_corrupt_chunk_is_named_and_shown_and_the_other_columns_serve(tmp_path):
    from inspector.app import _refresh
    runs = tmp_path / "runs"
    run = make_run(runs, "r", checkpoint=False)
    chunk = run / "metrics.zarr" / "loss" / "c" / "0"
    assert chunk.is_file()
    chunk.write_bytes(b"not zstd at all" * 4)
    with pytest.warns(RuntimeWarning, match="metrics.zarr.*loss"):
        df = runstore.open(run).metrics()
    assert len(df) == 5 and df["loss"].isna().all()
    assert df["step"].tolist() == [1, 2, 3, 4, 5] and df["lr"].notna().all()
    problems = df.attrs["runstore_warnings"]
    assert any("metrics.zarr" in p and "loss" in p for p in problems)

    banner, table, *_ = _refresh(_state(runs), None)
    row = table.set_index("run").loc["r"]
    assert row["epochs (done/planned)"] == "1/2" and row["status"] == "finished"
    assert "loss" in row["problems"] and "metrics.zarr" in row["problems"]
    assert banner["visible"] and "loss" in banner["value"]


# ------------------------------------------------------------------------------ uploads
def _png_header_only(path: Path, w: int, h: int) -> None:
    """A valid PNG signature + IHDR claiming w x h (what a decompression bomb's header says), tiny on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_a_huge_png_upload_is_refused_as_too_large(tmp_path):
    from inspector import live
    from inspector.limits import DEFAULT_MAX_PIXELS
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)
    with pytest.raises(live.LiveError) as e:
        live.load_image(bomb)
    msg = str(e.value)
    assert "too large" in msg and f"{DEFAULT_MAX_PIXELS:,}" in msg and "400,000,000 pixels" in msg
    assert "not an image" not in msg


# ------------------------------------------------------------------------------ parameter counts
def test_parameter_count_of_a_pca_run_is_shown(tmp_path):
    from inspector.app import _refresh
    runs = tmp_path / "runs"
    make_run(runs, "pixels", checkpoint=False)
    make_run(runs, "pca", checkpoint=False, target="pca")  # saved config: norm_pix_loss true AND target pca
    cfg = yaml.safe_load((runs / "pca" / "config.yaml").read_text())
    assert cfg["model"]["norm_pix_loss"] is True and cfg["model"]["target"] == "pca"
    state = _state(runs)
    n = state.encoder_params("pca")
    assert n is not None and n == state.encoder_params("pixels") > 0  # the encoder does not depend on the target
    _, table, *_ = _refresh(state, None)
    assert table.set_index("run").loc["pca", "encoder params"] != ""


def test_encoder_count_is_the_one_the_trainer_and_the_sweep_report(tmp_path):
    # issue 13: one home (model.encoder_param_count, trainable parameters only); the inspector's own
    # copy also counted the frozen sin-cos pos_embed (pico 64 px: 472,416 shown, 466,176 trainable)
    from model import encoder_param_count
    runs = tmp_path / "runs"
    make_run(runs, "pixels", checkpoint=False)
    cfg = yaml.safe_load((runs / "pixels" / "config.yaml").read_text())
    assert _state(runs).encoder_params("pixels") == encoder_param_count(cfg)


@pytest.mark.parametrize("section", ["model", "data"])
def test_a_config_section_that_is_not_a_mapping_shows_no_count(tmp_path, section):
    # a hand-edited config.yaml (`model: vit_base`): the runs table shows the run without a count,
    # it does not fail the whole Refresh
    from inspector.app import _refresh
    runs = tmp_path / "runs"
    run = make_run(runs, "edited", checkpoint=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg[section] = "vit_base"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    state = _state(runs)
    assert state.encoder_params("edited") is None
    _, table, *_ = _refresh(state, None)
    assert list(table["run"]) == ["edited"]


def test_sweep_listing_stays_inside_the_root_and_survives_outside_links(tmp_path):
    from inspector.catalog import RunCatalog
    runs = tmp_path / "runs"
    runstore.log_sweep_point(runs / "sweeps" / "mask_ratio", "r0.5", params={"mask_ratio": 0.5})
    runstore.log_sweep_point(tmp_path / "elsewhere" / "theirs", "r0.9", params={"mask_ratio": 0.9})
    (runs / "sweeps" / "a_outlink").symlink_to(tmp_path / "elsewhere" / "theirs")  # a sweep folder outside
    (runs / "a_out").symlink_to(tmp_path / "elsewhere")  # listed first: must not end the listing
    assert list(RunCatalog(runs).sweeps()) == ["sweeps/mask_ratio"]


def test_a_corrupt_reconstruction_chunk_is_named_in_the_reconstructions_tab(tmp_path):
    from inspector.app import _recon_view
    runs = tmp_path / "runs"
    run = make_run(runs, "r", checkpoint=False)
    w = runstore.create(run, _config(run), resume=True)
    imgs = np.full((2, 16, 16, 3), 100, dtype=np.uint8)  # not the fill value: zarr writes the chunks
    w.log_reconstructions(1, "val", [0, 1], imgs, imgs, imgs, imgs, np.ones((2, 4), dtype=np.uint8),
                          np.zeros(2, dtype=np.float32))
    w.close()
    chunk = next(p for p in (run / "recons.zarr" / "val").glob("*/original/c/1/0/0/0"))
    chunk.write_bytes(b"garbage" * 8)
    with pytest.raises(ValueError, match="original: unreadable"):
        runstore.open(run).reconstructions(1, "val")
    grid, _, note = _recon_view(_state(runs), "r", "val", 1)
    assert grid is None and "original" in note and "unreadable" in note and str(tmp_path) not in note
