"""The Scaling tab's points on hand-made tables: error bars from the project's noise model (issue 14)
and one point per eval kind and settings of a run (no training run needed).

Expected standard errors are written out here from evals.trends' formula (binomial sqrt(p(1-p)/n) of
each seed's accuracy, plus the seed-to-seed spread of a point's mean), in percent."""
from __future__ import annotations

import math

import pandas as pd
import pytest

import runstore
from inspector import views
from inspector.app import InspectorState, _scaling

N_VAL = 1000


def _sweep_frame() -> pd.DataFrame:
    """A sweep table as the sweep machinery lays it out: one row per point and seed (a point with two
    seeds has two rows), accuracies as fractions, `n_val` val images behind each accuracy."""
    return pd.DataFrame({
        "point": ["pico", "nano", "nano", "micro", "small"],
        "model": ["mae_vit_pico_patch8_64", "mae_vit_nano_patch8_64", "mae_vit_nano_patch8_64",
                  "mae_vit_micro_patch8_64", "mae_vit_small_patch8_64"],
        "encoder_params_m": [0.47, 1.2, 1.2, 2.7, 9.0],
        "epochs": [8, 8, 8, 8, 8],
        "linprobe_top1": [0.50, 0.55, 0.59, 0.60, 0.70],
        "knn_top1": [0.30, 0.35, 0.35, 0.40, 0.45],
        "n_val": [N_VAL, N_VAL, N_VAL, math.nan, N_VAL],  # micro: not recorded, so no error bar
        "status": ["finished", "finished", "finished", "finished", "failed"],
    })


def _binomial_se_pct(p: float, n: int = N_VAL) -> float:
    return 100 * math.sqrt(p * (1 - p) / n)


def _trace(fig, label: str):
    found = [t for t in fig.data if t.name == f"your runs · {label}"]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def test_sweep_points_carry_their_standard_error():
    table = views.scaling_table(views.sweep_scaling_rows(_sweep_frame()))
    lin = table[table["kind"] == "linprobe"].set_index("run")
    assert list(lin.index) == ["pico", "nano", "micro"]  # seeds folded into their point, failed left out
    assert lin.loc["nano", "top1"] == pytest.approx(57.0)  # mean of the two seeds
    two_seeds = math.sqrt((0.55 * 0.45 / N_VAL + 0.59 * 0.41 / N_VAL) / 2 / 2   # binomial, mean of 2
                          + 0.02 ** 2 * 2 / 2)                                     # sample var 0.0008, / 2
    assert lin.loc["nano", "top1_se"] == pytest.approx(100 * two_seeds)
    assert lin.loc["pico", "top1_se"] == pytest.approx(_binomial_se_pct(0.50))
    assert math.isnan(lin.loc["micro", "top1_se"])
    assert list(lin["seeds"]) == [1, 2, 1]


def test_scaling_figures_draw_error_bars():
    table = views.scaling_table(views.sweep_scaling_rows(_sweep_frame()))
    for fig in (views.accuracy_vs_params_figure(table, ["linprobe", "knn"]),
                views.accuracy_vs_epochs_figure(table, ["linprobe", "knn"])):
        for label, p_pico, p_nano in (("linear probe", 0.50, (0.55, 0.59)), ("kNN", 0.30, (0.35, 0.35))):
            t = _trace(fig, label)
            assert t.error_y.type == "data" and t.error_y.visible
            err = {run.split(" ")[0]: e for run, e in zip(t.text, t.error_y.array)}
            assert err["pico"] == pytest.approx(_binomial_se_pct(p_pico))
            binom = sum(p * (1 - p) / N_VAL for p in p_nano) / 2 / 2
            spread = pd.Series(p_nano).var(ddof=1) / 2
            assert err["nano"] == pytest.approx(100 * math.sqrt(binom + spread))
            assert err["micro"] is None  # no n_val: no bar (plotly draws none for a null)


def test_points_without_n_val_get_no_error_bars():
    frame = _sweep_frame().drop(columns=["n_val"]).drop_duplicates("point")
    fig = views.accuracy_vs_params_figure(views.scaling_table(views.sweep_scaling_rows(frame)), ["linprobe"])
    assert len(fig.data) == 1 and fig.data[0].error_y.array is None


def test_the_scaling_tab_draws_a_sweeps_error_bars(tmp_path):
    """Through the catalog and the tab's handler, from a sweep table written by runstore."""
    sweep_dir = tmp_path / "runs" / "sweeps" / "model_size"
    for name, params, top1 in (("pico", 0.47, 0.50), ("nano", 1.2, 0.60)):
        runstore.log_sweep_point(sweep_dir, name, params={"model": f"mae_vit_{name}_patch8_64"},
                                 results={"encoder_params_m": params, "epochs_done": 8, "linprobe_top1": top1,
                                          "n_val": N_VAL})
    state = InspectorState(tmp_path / "runs")
    f_params, f_epochs, shown, *_ = _scaling(state, ["linprobe"], False, "sweep: sweeps/model_size")
    for fig in (f_params, f_epochs):
        assert list(fig.data[0].y) == pytest.approx([50.0, 60.0])
        assert list(fig.data[0].error_y.array) == pytest.approx([_binomial_se_pct(0.5), _binomial_se_pct(0.6)])
    assert list(shown["top1_se"]) == pytest.approx([1.58, 1.55])


# ------------------------------------------------------------------------ one row per kind + settings
def _run_with_two_probes(root):
    """A run probed online every epoch (pool=cls), by an eval CLI with mean pooling at two
    checkpoints, and with kNN."""
    data = {"val_path": "data/val.beton", "n_val": 30}
    with runstore.create(root / "r", {"epochs": 3}) as w:
        for epoch, top1 in ((1, 0.40), (2, 0.45), (3, 0.47)):
            w.log_eval(epoch=epoch, kind="linprobe", top1=top1, n_val=30.0, settings={"pool": "cls", **data})
            w.log_eval(epoch=epoch, kind="knn", top1=top1 - 0.1, n_val=30.0, settings={"k": 20, **data})
        for epoch, top1 in ((2, 0.50), (3, 0.52)):
            w.log_eval(epoch=epoch, kind="linprobe", top1=top1, n_val=30.0,
                       settings={"pool": "avg", "checkpoint": f"runs/r/checkpoints/ckpt-e{epoch:04d}.pth", **data})
        w.log_eval(epoch=3, kind="linprobe", top1=0.49, n_val=30.0, settings={"pool": "cls", "epochs": 90, **data})
    return runstore.open(root / "r").evals()


def test_final_evals_keep_each_setting_of_a_kind(tmp_path):
    rows = views.final_evals(_run_with_two_probes(tmp_path))
    got = sorted((r["kind"], r["settings"], r["eval_epoch"], round(r["top1"], 6)) for r in rows)
    assert got == [
        ("knn", "", 3, 37.0),                      # one setting: nothing to tell apart
        ("linprobe", "epochs=90, pool=cls", 3, 49.0),
        ("linprobe", "pool=avg", 3, 52.0),   # the CLI's mean pooling: its newest checkpoint
        ("linprobe", "pool=cls", 3, 47.0),   # the newest online one
    ]
    assert {r["n_val"] for r in rows} == {30.0}


def test_final_evals_of_a_run_with_one_setting_per_kind_are_unchanged(tmp_path):
    with runstore.create(tmp_path / "r", {"epochs": 2}) as w:
        w.log_eval(epoch=1, kind="linprobe", top1=0.4)
        w.log_eval(epoch=2, kind="linprobe", top1=0.5)
        w.log_eval(epoch=2, kind="knn", top1=0.3)
    rows = views.final_evals(runstore.open(tmp_path / "r").evals())
    assert [(r["kind"], r["top1"], r["eval_epoch"], r["settings"], r["n_val"]) for r in rows] == [
        ("linprobe", 50.0, 2, "", None), ("knn", 30.0, 2, "", None)]


def test_the_scaling_tab_shows_each_setting_with_its_error_bar(tmp_path):
    _run_with_two_probes(tmp_path / "runs")
    state = InspectorState(tmp_path / "runs")
    f_params, _, shown, *_ = _scaling(state, ["linprobe"], False)
    lin = shown[shown["kind"] == "linprobe"]
    assert sorted(lin["settings"]) == ["epochs=90, pool=cls", "pool=avg", "pool=cls"]
    assert sorted(lin["top1_se"]) == pytest.approx(sorted(round(_binomial_se_pct(p, 30), 2)
                                                          for p in (0.49, 0.52, 0.47)))


def test_the_csv_export_carries_the_error_bars():
    table = views.scaling_table(views.sweep_scaling_rows(_sweep_frame()))
    frame = views.figure_frame(views.accuracy_vs_params_figure(table, ["linprobe"]))
    assert list(frame.columns) == ["series", "x", "y", "y_se"]
    assert frame["y_se"].iloc[0] == pytest.approx(_binomial_se_pct(0.50)) and math.isnan(frame["y_se"].iloc[-1])


def test_the_scaling_tab_folds_a_points_seeds_into_one_row(tmp_path):
    """experiments.sweep --seeds writes one record per run (POINT, POINT_seed1) with base_point POINT:
    the tab shows one row per point, the seeds' mean with the seed spread in its error bar."""
    sweep_dir = tmp_path / "runs" / "sweeps" / "model_size"
    for run, seed, top1 in (("nano", 0, 0.55), ("nano_seed1", 1, 0.59), ("pico", 0, 0.50)):
        runstore.log_sweep_point(sweep_dir, run, params={"model": f"mae_vit_{run[:4]}_patch8_64", "seed": seed},
                                 results={"encoder_params_m": 1.2 if run.startswith("nano") else 0.47,
                                          "epochs_done": 8, "linprobe_top1": top1, "n_val": N_VAL},
                                 base_point=run[:4], status="finished")
    state = InspectorState(tmp_path / "runs")
    _, _, shown, *_ = _scaling(state, ["linprobe"], False, "sweep: sweeps/model_size")
    shown = shown.set_index("run")
    assert sorted(shown.index) == ["nano", "pico"]
    assert shown.loc["nano", "top1"] == pytest.approx(57.0)
    assert shown.loc["nano", "top1_se"] > _binomial_se_pct(0.57) / math.sqrt(2) + 1.0   # seed spread counted
