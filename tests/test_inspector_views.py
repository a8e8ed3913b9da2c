"""Inspector: catalog, view functions and live masking on run stores written by a tiny real run."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.test_inspector_support import TINY_EPOCHS, inspector_runs_root, shared_base

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    return inspector_runs_root(shared_base(tmp_path_factory))


@pytest.fixture(scope="module")
def catalog(runs_root):
    from inspector.catalog import RunCatalog
    return RunCatalog(runs_root)


# ------------------------------------------------------------------------------------ catalog
def test_catalog_lists_runs_and_ignores_stray_folders(catalog):
    assert catalog.names() == ["crashed", "tiny"]
    assert catalog.empty_message() is None
    assert catalog.status("tiny") == "finished"
    assert catalog.status("crashed") == "crashed"


def test_catalog_rejects_names_it_did_not_list(catalog, runs_root):
    from inspector.catalog import UnknownRunError
    for bad in ("../tiny", "tiny/../../etc", str(runs_root / "tiny"), "not_a_run", ""):
        with pytest.raises(UnknownRunError):
            catalog.get(bad)
    assert catalog.valid(["tiny", "../tiny", None, "crashed"]) == ["tiny", "crashed"]


def test_missing_and_empty_runs_folder_give_helpful_messages(tmp_path):
    from inspector.catalog import RunCatalog
    missing = RunCatalog(tmp_path / "nope")
    assert missing.names() == [] and "does not exist" in missing.empty_message()
    (tmp_path / "empty").mkdir()
    empty = RunCatalog(tmp_path / "empty")
    assert empty.names() == [] and "No runs found" in empty.empty_message()


def test_crashed_half_written_run_still_reads(catalog):
    assert catalog.evals("crashed").empty
    assert catalog.reconstruction_epochs("crashed", "val") == []
    assert catalog.checkpoints("crashed") == []
    s = catalog.summary("crashed")
    assert s["status"] == "crashed" and s["best_knn"] is None
    assert s["last_loss"] == pytest.approx(1.16)


# ------------------------------------------------------------------------------------ tables
def test_runs_table_has_one_row_per_run(catalog):
    from inspector import views
    table = views.runs_table(catalog.summaries())
    assert list(table.columns) == views.RUNS_TABLE_COLUMNS
    assert list(table["name"]) == ["crashed", "tiny"]
    tiny = table.set_index("name").loc["tiny"]
    assert tiny["epochs"] == f"{TINY_EPOCHS}/{TINY_EPOCHS}"
    assert tiny["model"] == "mae_vit_pico_patch8_64"
    assert tiny["dataset"] != "?"
    assert np.isfinite(tiny["last_loss"]) and tiny["images_per_s"] > 0
    assert 0 <= tiny["best_knn"] <= 100 and 0 <= tiny["best_linprobe"] <= 100
    assert views.runs_table([]).empty


# ------------------------------------------------------------------------------------ curves
def test_loss_and_lr_curves_overlay_runs(catalog):
    from inspector import views
    metrics = {n: catalog.metrics(n) for n in catalog.names()}
    fig = views.loss_figure(metrics)
    assert [t.name for t in fig.data] == ["crashed", "tiny"]
    tiny = metrics["tiny"].sort_values("step")
    np.testing.assert_allclose(np.asarray(fig.data[1].y, float), tiny["loss"].to_numpy(float))
    lr = views.lr_figure({"tiny": metrics["tiny"]}, x="epoch")
    assert len(lr.data) == 1 and max(lr.data[0].y) > 0
    assert views.loss_figure({"tiny": metrics["tiny"]}, log_y=True).layout.yaxis.type == "log"


def test_empty_inputs_give_explaining_figures():
    from inspector import views
    for fig in (views.loss_figure({}), views.eval_figure({"x": pd.DataFrame()}),
                views.throughput_figure({"x": pd.DataFrame()}),
                views.accuracy_vs_params_figure(views.scaling_table([]))):
        assert not fig.data and fig.layout.annotations and fig.layout.annotations[0].text


def test_eval_curves_per_kind(catalog):
    from inspector import views
    evals = catalog.evals("tiny")
    fig = views.eval_figure({"tiny": evals}, ("linprobe", "knn"))
    names = [t.name for t in fig.data]
    assert names == ["tiny · linear probe", "tiny · kNN"]
    knn = evals[evals["kind"] == "knn"].sort_values("epoch")
    assert list(fig.data[1].x) == list(knn["epoch"]) and len(knn) == TINY_EPOCHS
    # evals/ logs fractions; the inspector shows percent, the paper's unit
    np.testing.assert_allclose(fig.data[1].y, views.as_percent(knn["top1"]))
    assert knn["top1"].max() <= 1.0


def test_accuracy_units():
    from inspector import views
    np.testing.assert_allclose(views.as_percent([0.5, 0.25]), [50.0, 25.0])
    np.testing.assert_allclose(views.as_percent([68.0, 0.5]), [68.0, 0.5])  # already percent
    ev = pd.DataFrame({"epoch": [1, 2], "kind": ["knn", "knn"], "top1": [0.1, 0.2], "top5": [0.5, 1.0]})
    np.testing.assert_allclose(views.evals_in_percent(ev)["top5"], [50.0, 100.0])


def test_throughput_has_images_per_s_and_data_wait(catalog):
    from inspector import views
    fig = views.throughput_figure({"tiny": catalog.metrics("tiny")})
    assert {t.name for t in fig.data} == {"tiny · images_per_s", "tiny · data_wait"}
    wait = [t for t in fig.data if t.name.endswith("data_wait")][0]
    assert all(0 <= v <= 1 for v in wait.y)


def test_downsample_keeps_long_logs_plottable():
    from inspector import views
    df = pd.DataFrame({"step": np.arange(100_000), "loss": np.linspace(2, 1, 100_000)})
    fig = views.loss_figure({"long": df})
    assert len(fig.data[0].x) <= 4000
    assert fig.data[0].y[0] == pytest.approx(2, abs=1e-3) and fig.data[0].y[-1] == pytest.approx(1, abs=1e-3)


def test_scaling_figures_with_and_without_paper_points(catalog):
    from inspector import views
    rows = [{"run": "tiny", "model": "pico", "params": 0.5e6, "epochs": TINY_EPOCHS, **p}
            for p in views.final_evals(catalog.evals("tiny"))]
    table = views.scaling_table(rows)
    assert set(table["kind"]) >= {"knn", "linprobe"}
    plain = views.accuracy_vs_params_figure(table, ["linprobe", "knn"])
    assert all("paper" not in t.name for t in plain.data) and len(plain.data) == 2
    for trace in plain.data:  # the online evals record their val images: binomial ±1 SE bars
        row = rows[[r["kind"] for r in rows].index("linprobe" if "linear" in trace.name else "knn")]
        p, n = row["top1"] / 100, row["n_val"]
        assert n > 0 and list(trace.error_y.array) == pytest.approx([100 * (p * (1 - p) / n) ** 0.5])
    ref = views.accuracy_vs_params_figure(table, ["linprobe", "knn"], show_reference=True)
    paper = {t.name: t for t in ref.data if "paper" in t.name}
    assert len(paper) == 2
    ft = [t for n, t in paper.items() if "fine-tune" in n][0]
    lin = [t for n, t in paper.items() if "linear" in n][0]
    assert list(ft.y) == [83.6, 85.9, 86.9] and list(lin.y) == [68.0, 75.8, 76.6]
    assert list(ft.x) == [86e6, 304e6, 632e6] and list(ft.text) == ["ViT-B/16", "ViT-L/16", "ViT-H/14"]
    ep = views.accuracy_vs_epochs_figure(table, ["knn"], show_reference=True)
    assert ep.layout.xaxis.type == "log" and any("paper" in t.name for t in ep.data)
    assert list(ep.data[0].x) == [TINY_EPOCHS]


def test_csv_export_of_any_figure(catalog):
    from inspector import views
    fig = views.eval_figure({"tiny": catalog.evals("tiny")}, ("knn",))
    frame = views.figure_frame(fig)
    assert list(frame.columns) == ["series", "x", "y"] and len(frame) == TINY_EPOCHS
    back = pd.read_csv(__import__("io").StringIO(views.figure_csv(fig)))
    np.testing.assert_allclose(back["y"], frame["y"])


# ------------------------------------------------------------------------------------ reconstructions
def test_reconstruction_grid_and_losses(catalog):
    from inspector import views
    epochs = catalog.reconstruction_epochs("tiny", "val")
    assert epochs[-1] == TINY_EPOCHS and len(epochs) >= TINY_EPOCHS  # the trainer also logs epoch 0
    rec = catalog.reconstructions("tiny", epochs[-1], "val")
    n = len(rec["original"])
    grid = views.reconstruction_grid(rec, cell=64)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    # the first original image is pasted unchanged (64 px cell = stored size) right of the labels
    h0, x0 = 30 + 6, 150 + 6  # header height + pad, label column + pad
    np.testing.assert_array_equal(grid[h0:h0 + 64, x0:x0 + 64], np.asarray(rec["original"][0]))
    losses = views.reconstruction_losses(rec)
    assert len(losses) == n and np.all(np.isfinite(losses["loss"].astype(float)))
    assert losses["mask_ratio"].astype(float).between(0.7, 0.8).all()
    with pytest.raises(ValueError, match="lack panels"):
        views.reconstruction_grid({"original": rec["original"]})


# ------------------------------------------------------------------------------------ live masking
@pytest.fixture(scope="module")
def ckpt(catalog):
    cks = catalog.checkpoints("tiny")
    assert cks, "the tiny run wrote no checkpoints"
    return cks[-1]["path"]


def test_live_masking_four_panels_deterministic(ckpt, catalog):
    from inspector import live
    cache = live.ModelCache()
    model = cache.get(ckpt)
    assert cache.get(ckpt) is model and cache.loads == 1  # cached
    rec = catalog.reconstructions("tiny", catalog.reconstruction_epochs("tiny", "val")[-1], "val")
    x = live.preprocess(live.load_image(np.asarray(rec["original"][0])), live.model_image_size(model))
    assert tuple(x.shape) == (1, 3, 64, 64)
    a = live.mask_image(model, x, 0.5, "random", seed=1)
    assert set(a.panels) == {"original", "masked", "reconstruction", "pasted"}
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in a.panels.values())
    assert a.visible == int(64 * 0.5) and a.total == 64 and np.isfinite(a.loss)
    b = live.mask_image(model, x, 0.5, "random", seed=1)
    np.testing.assert_array_equal(a.panels["masked"], b.panels["masked"])
    c = live.mask_image(model, x, 0.5, "random", seed=2)
    assert not np.array_equal(a.panels["masked"], c.panels["masked"])
    g = live.mask_image(model, x, 0.75, "grid", seed=0)
    blk = live.mask_image(model, x, 0.75, "block", seed=0)
    assert g.visible == blk.visible == 16
    assert not np.array_equal(g.panels["masked"], blk.panels["masked"])
    assert model.mask_sampler == "random"  # restored after a live request
    with pytest.raises(live.LiveError, match="sampler"):
        live.mask_image(model, x, 0.5, "diagonal")


def test_live_refuses_models_over_the_parameter_limit(ckpt):
    from inspector import live
    with pytest.raises(live.LiveError, match="parameters"):
        live.ModelCache(max_params=1000).get(ckpt)


def test_bad_uploads_get_clear_messages(tmp_path):
    from inspector import live
    txt = tmp_path / "notes.jpg"
    txt.write_text("this is not a picture")
    with pytest.raises(live.LiveError, match="not an image"):
        live.load_image(txt)
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 2000)).save(big)
    with pytest.raises(live.LiveError, match="pixels"):
        live.load_image(big, max_pixels=1_000_000)
    with pytest.raises(live.LiveError, match="MiB"):
        live.load_image(big, max_bytes=10)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(live.LiveError, match="empty"):
        live.load_image(tmp_path / "empty.png")
    with pytest.raises(live.LiveError, match="No image"):
        live.load_image(None)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (80, 50), (200, 10, 10)).save(ok)
    assert live.load_image(ok).size == (80, 50)


# ------------------------------------------------------------------------------------ app + CLI
def test_app_builds_without_reading_runs(runs_root):
    from inspector import build_app
    demo = build_app(runs_root)
    state = demo.inspector_state
    assert state.catalog.names() == ["crashed", "tiny"]
    assert state.encoder_params("tiny") > 0


def test_empty_state_instead_of_traceback(tmp_path):
    from inspector import build_app
    from inspector.app import _curves, _live, _recon_view, _refresh, _scaling
    import gradio as gr
    state = build_app(tmp_path / "missing").inspector_state
    out = _refresh(state, None)
    assert out[0]["visible"] and "does not exist" in out[0]["value"]
    assert out[1].empty
    assert all(not f.data for f in _curves(state, [], "step", False)[:4])
    assert not _scaling(state, None, False)[0].data
    assert _recon_view(state, None, "val", 0)[0] is None
    with pytest.raises(gr.Error, match="Pick a run"):
        _live(state, None, None, None, None, 75, "random", 0)
    with pytest.raises(gr.Error, match="Unknown run"):
        _recon_view(state, "../../etc", "val", 0)


def test_non_local_bind_warns():
    from inspector.app import bind_warning
    assert bind_warning("127.0.0.1") is None and bind_warning("localhost") is None
    assert "no login" in bind_warning("0.0.0.0")


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "inspector", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--runs" in out.stdout and "--host" in out.stdout


def test_many_runs_start_fast_and_table_loads(tmp_path):
    """24 runs (nested like a sweep): building the app reads no store; the first table is quick."""
    import time

    import runstore
    from inspector import build_app
    from inspector.app import _refresh

    root = tmp_path / "runs"
    for i in range(24):
        w = runstore.create(root / f"sweep{i % 2}" / f"r{i:02d}",
                            {"epochs": 4, "model": {"name": "mae_vit_pico_patch8_64"}})
        w.log_metrics([{"step": 1, "epoch": 0.5, "loss": 1.0 + i, "lr": 1e-4, "images_per_s": 100.0,
                        "data_wait": 0.1}])
        w.set_status("finished")
        w.close()
    t0 = time.perf_counter()
    demo = build_app(root)
    build_s = time.perf_counter() - t0
    state = demo.inspector_state
    names = state.catalog.names()
    assert len(names) == 24 and names[0] == "sweep0/r00"  # nested runs keep distinct names
    t0 = time.perf_counter()
    state.catalog.summaries()
    refresh_s = time.perf_counter() - t0
    table = _refresh(state, None)[1]
    assert len(table) == 24 and set(table["status"]) == {"finished"}
    print(f"24 runs: build_app {build_s:.2f}s, first table {refresh_s:.2f}s")
    assert build_s < 10 and refresh_s < 30  # generous: shared CI machines are noisy


def test_scaling_points_from_a_sweep_table(tmp_path):
    import runstore
    from inspector import views
    from inspector.catalog import RunCatalog, UnknownRunError
    sweep_dir = tmp_path / "runs" / "sweeps" / "model_size"
    for i, (name, p) in enumerate((("pico", 0.47), ("nano", 1.2), ("micro", 2.7))):
        runstore.log_sweep_point(sweep_dir, name, params={"model": f"mae_vit_{name}_patch8_64"},
                                 results={"encoder_params_m": p, "epochs_done": 8, "knn_top1": 20.0 + i,
                                          "linprobe_top1": 30.0 + i})
    runstore.log_sweep_point(sweep_dir, "small", params={"model": "mae_vit_small_patch8_64"},
                             results={"encoder_params_m": 9.0}, status="failed")
    cat = RunCatalog(tmp_path / "runs")
    assert list(cat.sweeps()) == ["sweeps/model_size"]
    with pytest.raises(UnknownRunError):
        cat.sweep_table("../model_size")
    table = views.scaling_table(views.sweep_scaling_rows(cat.sweep_table("sweeps/model_size")))
    assert len(table) == 6 and "small" not in set(table["run"])  # failed points left out
    fig = views.accuracy_vs_params_figure(table, ["linprobe", "knn"])
    lin = [t for t in fig.data if "linear" in t.name][0]
    assert list(lin.x) == [0.47e6, 1.2e6, 2.7e6] and list(lin.y) == [30.0, 31.0, 32.0]


def test_timer_runs_only_while_a_run_is_training(tmp_path):
    import runstore
    from inspector import build_app
    from inspector.app import _refresh
    w = runstore.create(tmp_path / "runs" / "live", {"epochs": 3, "model": {"name": "mae_vit_pico_patch8_64"}})
    w.set_status("running")
    w.log_metrics([{"step": 1, "epoch": 0.1, "loss": 1.0, "lr": 1e-4, "images_per_s": 10.0, "data_wait": 0.0}])
    w.flush()
    state = build_app(tmp_path / "runs").inspector_state
    out = _refresh(state, None)
    assert out[1]["status"].tolist() == ["running"] and out[1]["run"].tolist() == ["live"]
    assert out[5].active is True and "auto-refresh" in out[6]
    w.set_status("finished")
    w.close()
    out = _refresh(state, None, forget=True)
    assert out[5].active is False and out[1]["status"].tolist() == ["finished"]


def test_live_handler_with_uploads(runs_root, tmp_path):
    import gradio as gr
    from inspector import build_app
    from inspector.app import _live, _live_controls
    state = build_app(runs_root).inspector_state
    ckpt_update, sample_update, _ = _live_controls(state, "tiny")
    ckpt = ckpt_update["value"]
    assert ckpt and sample_update["value"]
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)).save(photo)
    *panels, note = _live(state, "tiny", ckpt, str(photo), None, 60, "block", 3)
    assert all(p.shape == (256, 256, 3) for p in panels) and "photo.png" in note
    assert "encoder saw 25/64" in note  # int(64 * 0.4)
    *_, note = _live(state, "tiny", ckpt, None, sample_update["value"], 75, "random", 0)
    assert "val image" in note
    bad = tmp_path / "model.pth.png"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(gr.Error, match="not an image"):
        _live(state, "tiny", ckpt, str(bad), None, 75, "random", 0)
    with pytest.raises(gr.Error, match="checkpoints"):
        _live(state, "tiny", "../../crashed/x.pth", None, sample_update["value"], 75, "random", 0)
    with pytest.raises(gr.Error, match="sampled image"):
        _live(state, "tiny", ckpt, None, "val:999:0", 75, "random", 0)
