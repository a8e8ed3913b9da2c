"""The trend checks on hand-made sweep tables: each trend says 'reproduced' exactly when the numbers
do, 'not reproduced' when they do not, and 'not enough data' when points or numbers are missing."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from experiments.trends import TRENDS, check_trends, trends_frame

NAN = math.nan


def table(rows: list[dict]) -> pd.DataFrame:
    """A sweep table with the columns the trends read; missing cells are NaN, status 'finished'."""
    cols = ["point", "value", "paper_setting", "encoder_params_m", "epochs", "knn_top1", "linprobe_top1",
            "images_per_s", "s_per_epoch", "status"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df:
            df[c] = "finished" if c == "status" else NAN
    return df[cols]


def verdicts(sweep: str, t: pd.DataFrame) -> dict[tuple[str, str], bool | None]:
    return {(r.trend, r.metric): r.holds for r in check_trends(sweep, t)}


def mask_ratio_table(lin: list[float], knn: list[float] | None = None) -> pd.DataFrame:
    ratios = [0.1, 0.3, 0.5, 0.7, 0.9]
    knn = knn or [NAN] * len(ratios)
    return table([{"point": f"r{r}", "value": r, "linprobe_top1": a, "knn_top1": b}
                  for r, a, b in zip(ratios, lin, knn)])


def test_mask_ratio_peak_high_holds_and_fails_per_metric():
    t = mask_ratio_table(lin=[30, 35, 38, 41, 37], knn=[40, 33, 31, 30, 29])
    v = verdicts("mask_ratio", t)
    assert v[("peak_at_high_ratio", "linear probe")] is True     # peak at 0.7
    assert v[("peak_at_high_ratio", "kNN")] is False             # peak at 0.1
    detail = {r.metric: r.detail for r in check_trends("mask_ratio", t)}
    assert "peak at 0.7 (41)" in detail["linear probe"]


def test_mask_ratio_needs_three_points():
    t = mask_ratio_table(lin=[30, NAN, NAN, 41, NAN])
    assert verdicts("mask_ratio", t) == {("peak_at_high_ratio", "linear probe"): None}


def test_unfinished_points_are_ignored():
    t = mask_ratio_table(lin=[30, 35, 38, 41, 50])
    t.loc[t["value"] == 0.9, "status"] = "crashed"   # its 50 must not count as the peak
    assert verdicts("mask_ratio", t)[("peak_at_high_ratio", "linear probe")] is True
    t.loc[:, "status"] = "running"
    assert verdicts("mask_ratio", t)[("peak_at_high_ratio", "linear probe")] is None


@pytest.mark.parametrize("norm, pix, expected", [(40.0, 38.0, True), (38.0, 40.0, False), (39.0, 39.0, False),
                                                 (39.0, NAN, None)])
def test_norm_pix_beats_pixel(norm, pix, expected):
    t = table([{"point": "pixel", "value": "pixel", "linprobe_top1": pix},
               {"point": "norm_pix", "value": "norm_pix", "linprobe_top1": norm}])
    assert verdicts("target", t) == {("norm_pix_beats_pixel", "linear probe"): expected,
                                     ("norm_pix_beats_pca", "linear probe"): None}   # no PCA point


def test_norm_pix_beats_pca_per_metric():
    t = table([{"point": "norm_pix", "value": "norm_pix", "linprobe_top1": 40.0, "knn_top1": 30.0},
               {"point": "pca", "value": "pca", "linprobe_top1": 35.0, "knn_top1": 31.0}])
    v = verdicts("target", t)
    assert v[("norm_pix_beats_pca", "linear probe")] is True and v[("norm_pix_beats_pca", "kNN")] is False


def test_mask_token_accuracy_and_speed_are_separate_verdicts():
    t = table([{"point": "without_mask_token", "linprobe_top1": 30.0, "images_per_s": 400.0},
               {"point": "with_mask_token", "linprobe_top1": 30.0, "images_per_s": 150.0}])
    v = verdicts("mask_token", t)
    assert v[("no_mask_token_as_accurate", "linear probe")] is True   # a tie is "at least as accurate"
    assert v[("no_mask_token_faster", "speed")] is True
    t.loc[t["point"] == "with_mask_token", "linprobe_top1"] = 31.0
    t.loc[t["point"] == "with_mask_token", "images_per_s"] = 500.0
    v = verdicts("mask_token", t)
    assert v[("no_mask_token_as_accurate", "linear probe")] is False
    assert v[("no_mask_token_faster", "speed")] is False


def test_speed_falls_back_to_seconds_per_epoch():
    t = table([{"point": "with_mask_token", "s_per_epoch": 60.0},
               {"point": "asymmetric", "s_per_epoch": 20.0},
               {"point": "asymmetric_dec1", "s_per_epoch": 25.0}])
    v = verdicts("wall_clock", t)
    assert v[("asymmetric_faster", "speed")] is True
    assert v[("shallow_decoder_faster", "speed")] is False
    assert "3.00x" in check_trends("wall_clock", t)[0].detail


def test_sampler_trends_match_points_by_name_or_value():
    t = table([{"point": "random_75", "value": "random 75", "linprobe_top1": 35.0},
               {"point": "block_50", "value": "block 50", "linprobe_top1": 33.0},
               {"point": "block_75", "value": "block 75", "linprobe_top1": 34.0},
               {"point": "g", "value": "grid 75", "linprobe_top1": 36.0}])
    v = verdicts("sampler", t)
    assert v[("random_ge_block75", "linear probe")] is True
    assert v[("random_ge_grid75", "linear probe")] is False      # found by its value "grid 75"
    assert v[("block50_beats_block75", "linear probe")] is False


def test_bigger_and_longer_are_better_need_both_ends_and_rank():
    sizes = table([{"point": n, "encoder_params_m": p, "linprobe_top1": a}
                   for n, p, a in [("pico", 0.5, 30), ("nano", 1.2, 33), ("micro", 2.7, 35), ("mini", 6.3, 34),
                                   ("small", 14.2, 37)]])
    assert verdicts("model_size", sizes)[("bigger_is_better", "linear probe")] is True
    sizes.loc[sizes["point"] == "small", "linprobe_top1"] = 29.0
    assert verdicts("model_size", sizes)[("bigger_is_better", "linear probe")] is False
    epochs = table([{"point": f"e{e}", "value": e, "epochs": e, "knn_top1": a}
                    for e, a in [(5, 40), (10, 39), (20, 38), (30, 37), (40, 41)]])
    # longest beats shortest, but accuracy falls with length in between: Spearman rho = 0 -> not reproduced
    assert verdicts("epochs", epochs)[("longer_is_better", "kNN")] is False
    epochs["knn_top1"] = [30, 38, 36, 40, 41]
    assert verdicts("epochs", epochs)[("longer_is_better", "kNN")] is True


def test_decoder_trends():
    depth = table([{"point": f"d{d}", "value": d, "linprobe_top1": a} for d, a in [(1, 30), (2, 31), (4, 33), (8, 32)]])
    assert verdicts("decoder_depth", depth)[("deeper_decoder_better", "linear probe")] is True
    width = table([{"point": f"w{w}", "value": w, "linprobe_top1": a} for w, a in [(32, 35), (64, 34), (128, 33)]])
    assert verdicts("decoder_width", width)[("narrowest_not_best", "linear probe")] is False


def test_every_registered_sweep_reports_none_on_an_empty_table():
    for sweep in TRENDS:
        results = check_trends(sweep, table([]))
        assert results and all(r.holds is None for r in results), sweep
    assert check_trends("no_such_sweep", table([])) == []
    frame = trends_frame(check_trends("target", table([])))
    assert list(frame["verdict"]) == ["not enough data"] * 2   # norm-pix vs pixel, norm-pix vs PCA


# ----------------------------------------------------------------------------- verdicts that know their noise
def target_table(norm: float, pix: float, n_val=1000, **extra) -> pd.DataFrame:
    t = table([{"point": "norm_pix", "value": "norm_pix", "linprobe_top1": norm},
               {"point": "pixel", "value": "pixel", "linprobe_top1": pix}])
    t["n_val"] = n_val
    return t


def norm_vs_pixel(t: pd.DataFrame):
    return next(r for r in check_trends("target", t) if r.trend == "norm_pix_beats_pixel")


def test_binomial_se_arithmetic_in_percent_and_fraction():
    # 50% and 40% on 1,000 images: SE of the difference = sqrt(.5*.5/1000 + .4*.6/1000) = 2.214 points
    r = norm_vs_pixel(target_table(50.0, 40.0))
    assert r.diff == pytest.approx(10.0)
    assert r.se == pytest.approx(100 * math.sqrt(0.25 / 1000 + 0.24 / 1000), rel=1e-9)
    assert "± 2.2 SE" in r.detail
    f = norm_vs_pixel(target_table(0.50, 0.40))   # the same accuracies recorded as fractions
    assert f.se == pytest.approx(r.se / 100, rel=1e-9) and f.verdict == "holds"


@pytest.mark.parametrize("norm, pix, verdict, holds", [
    (50.0, 40.0, "holds", True),           # +10 points, SE 2.2: outside 2 SE
    (40.0, 50.0, "reversed", False),       # -10 points: outside 2 SE, against the paper
    (41.0, 39.0, "within noise", True),    # +2 points < 2 x 2.2: the exact inequality holds, noise decides
    (39.0, 41.0, "within noise", False),
    (39.0, 39.0, "within noise", False),   # a tie of a strict claim: not "reversed"
    (39.0, NAN, "not enough data", None),
])
def test_three_way_verdicts(norm, pix, verdict, holds):
    r = norm_vs_pixel(target_table(norm, pix))
    assert (r.verdict, r.holds) == (verdict, holds)


def test_without_n_val_the_exact_inequality_decides():
    t = target_table(41.0, 39.0)
    t = t.drop(columns=["n_val"])
    r = norm_vs_pixel(t)
    assert math.isnan(r.se) and r.verdict == "holds" and "SE unknown" in r.detail


def test_seed_spread_adds_to_the_binomial_se():
    # two seeds per point: means 45 and 40; seeds of norm_pix 44/46, of pixel 40/40
    t = table([{"point": "norm_pix", "value": "norm_pix", "linprobe_top1": a} for a in (44.0, 46.0)]
              + [{"point": "pixel", "value": "pixel", "linprobe_top1": a} for a in (40.0, 40.0)])
    t["n_val"] = 1000
    r = norm_vs_pixel(t)
    binom_a = (0.44 * 0.56 / 1000 + 0.46 * 0.54 / 1000) / 2 / 2   # mean binomial variance / k seeds
    spread_a = 0.0002 / 2                                          # sample var of (.44, .46) / k
    binom_b = 0.4 * 0.6 / 1000 / 2
    assert r.diff == pytest.approx(5.0)
    assert r.se == pytest.approx(100 * math.sqrt(binom_a + spread_a + binom_b), rel=1e-9)
    assert r.verdict == "holds"   # 5 points against SE ~1.9
    # a wide seed spread turns the same means into noise
    t.loc[t["point"] == "norm_pix", "linprobe_top1"] = [35.0, 55.0]
    assert norm_vs_pixel(t).verdict == "within noise"


def test_numeric_trends_carry_the_se_of_their_two_ends():
    depth = table([{"point": f"d{d}", "value": d, "linprobe_top1": a} for d, a in [(1, 30), (2, 31), (4, 33), (8, 32)]])
    depth["n_val"] = 1000
    r = check_trends("decoder_depth", depth)[0]
    assert r.holds is True and r.diff == pytest.approx(2.0) and r.verdict == "within noise"
    t = mask_ratio_table(lin=[30, 35, 38, 46, 37])
    t["n_val"] = 1000
    r = check_trends("mask_ratio", t)[0]
    assert r.diff == pytest.approx(46 - 38) and r.verdict == "holds"     # best >= 0.6 (46) vs best below (38)
    frame = trends_frame([r])
    assert {"diff", "se", "verdict"} <= set(frame.columns)


def test_sweep_table_reads_n_val_from_the_points_own_evals(tmp_path):
    """n_val comes from the online eval records in a real run store; a later CLI eval on other
    data (naming its checkpoint) does not change it, and a store without n_val gives NaN."""
    import runstore
    from experiments import results, sweep

    run = tmp_path / "point"
    with runstore.create(run, {"run_dir": str(run), "epochs": 2}) as w:
        w.log_eval(epoch=2, kind="knn", top1=0.567, settings={"k": 20, "pool": "cls", "n_val": 500})
        w.log_eval(epoch=2, kind="linprobe", top1=0.6, settings={"pool": "cls", "cached": True, "n_val": 500})
    runstore.log_eval(run, 2, kind="knn", top1=0.533,
                      settings={"checkpoint": str(run / "final.pth"), "data": "/other", "n_val": 3925})
    assert results._eval_n_val(runstore.open(run).evals()) == 500
    assert "n_val" in sweep.TABLE_COLUMNS
    old = tmp_path / "old"
    with runstore.create(old, {"run_dir": str(old), "epochs": 1}) as w:
        w.log_eval(epoch=1, kind="knn", top1=0.5, settings={"k": 20})
    assert math.isnan(results._eval_n_val(runstore.open(old).evals()))


def test_report_shows_difference_se_three_way_verdict_and_error_bars():
    from experiments import report, sweep

    t = mask_ratio_table(lin=[0.30, 0.35, 0.38, 0.46, 0.37], knn=[0.40, 0.39, 0.38, 0.41, 0.30])
    t["n_val"] = 1000
    for c in sweep.TABLE_COLUMNS:
        if c not in t:
            t[c] = "" if c in ("run_dir", "reused_from", "model") else 1
    t.attrs["sweep"] = "mask_ratio"
    fig = report.sweep_figure(t)
    lin = next(tr for tr in fig.data if tr.name == "linear probe (this sweep)")
    p = 0.46   # ±1 SE in percent, binomial on 1,000 images
    assert lin.error_y.array[3] == pytest.approx(100 * math.sqrt(p * (1 - p) / 1000))
    page = report._verdict_html(trends_frame(check_trends("mask_ratio", t)))
    assert "difference ± SE" in page
    assert "<td class='yes'>holds</td>" in page          # linear probe: +8 points ± 2.2
    assert "<td class='noise'>within noise</td>" in page  # kNN: 0.41 vs 0.40 at 0.1, +1 point ± 2.2
    assert "+8 ± 2.2" in page or "+0.08 ± 0.022" in page
    assert "val images" in report.display_table(t).columns


def test_two_seeds_of_a_point_are_one_row_with_the_seed_spread_in_its_se():
    """A sweep table of `experiments.sweep --seeds 0,1`: two rows per point (one `point`, two `seed`s);
    with_standard_errors, the report's table and the inspector's scaling rows give one row per point
    whose SE is larger than the binomial-only SE when the seeds differ."""
    from experiments import report, sweep
    from experiments.trends import with_standard_errors
    from inspector.views import sweep_scaling_rows

    rows = [{"point": "ratio_75", "seed": 0, "knn_top1": 0.40, "linprobe_top1": 0.44, "run_dir": "s/ratio_75"},
            {"point": "ratio_75", "seed": 1, "knn_top1": 0.40, "linprobe_top1": 0.50, "run_dir": "s/ratio_75_seed1"},
            {"point": "ratio_50", "seed": 0, "knn_top1": 0.30, "linprobe_top1": 0.40, "run_dir": "s/ratio_50"},
            {"point": "ratio_50", "seed": 1, "knn_top1": 0.30, "linprobe_top1": 0.40, "run_dir": "s/ratio_50_seed1"}]
    t = pd.DataFrame([{**{c: 1 for c in sweep.TABLE_COLUMNS}, "model": "m", "reused_from": "", "paper_setting": None,
                       "status": "finished", "n_val": 1000, "value": r["point"], **r} for r in rows],
                     columns=sweep.TABLE_COLUMNS)
    assert "seed" in sweep.TABLE_COLUMNS and len(t) == 4
    one = with_standard_errors(t).set_index("point")
    assert list(one.index) == ["ratio_75", "ratio_50"]
    binomial = math.sqrt((0.44 * 0.56 + 0.50 * 0.50) / 1000 / 2 / 2)     # mean binomial variance / 2 seeds
    assert one.loc["ratio_75", "linprobe_top1"] == pytest.approx(0.47)
    assert one.loc["ratio_75", "linprobe_top1_se"] > binomial * 1.5         # + the seeds' spread (0.06 apart)
    assert one.loc["ratio_50", "linprobe_top1_se"] == pytest.approx(math.sqrt(0.4 * 0.6 / 1000 / 2))
    shown = report.display_table(report.per_point(t)).set_index("point")
    assert list(shown.index) == ["ratio_75", "ratio_50"] and list(shown["seeds"]) == ["2/2", "2/2"]
    assert shown.loc["ratio_75", "linear probe top-1 (%)"] == pytest.approx(47.0)
    assert shown.loc["ratio_75", "linear probe SE (%)"] == pytest.approx(100 * one.loc["ratio_75", "linprobe_top1_se"],
                                                                       abs=0.01)
    t.loc[1, "status"] = "running"                                          # a seed still training
    partial = report.per_point(t).set_index("point")
    assert partial.loc["ratio_75", "seeds"] == "1/2" and partial.loc["ratio_75", "status"] == "running"
    assert partial.loc["ratio_75", "linprobe_top1"] == pytest.approx(0.44)
    t.loc[1, "status"] = "finished"
    lin = {r["run"]: r for r in sweep_scaling_rows(t) if r["kind"] == "linprobe"}
    assert set(lin) == {"ratio_75", "ratio_50"} and lin["ratio_75"]["seeds"] == 2
    assert lin["ratio_75"]["top1_se"] == pytest.approx(100 * one.loc["ratio_75", "linprobe_top1_se"])


def test_one_rule_tells_fractions_from_percents():
    """The report, the trends and the inspector read accuracies through common.stats.accuracy_unit."""
    import pandas as pd

    from common.stats import accuracy_unit
    from experiments.report import as_percent
    from inspector.views import _in_percent

    assert accuracy_unit(pd.Series([0.5, 0.62, None])) == 1.0
    assert accuracy_unit(pd.Series([50.0, 62.0])) == 100.0
    assert accuracy_unit(pd.Series([0.5]), pd.Series([62.0])) == 100.0    # one unit per table
    assert accuracy_unit(pd.Series([], dtype=float)) == 1.0
    assert accuracy_unit() == 1.0
    assert list(as_percent(pd.Series([0.5, 0.25]))) == [50.0, 25.0]
    assert list(as_percent(pd.Series([50.0, 25.0]))) == [50.0, 25.0]
    df = _in_percent(pd.DataFrame({"knn_top1": [0.3, 0.4], "linprobe_top1": [0.5, "0.6"]}),
                     ["knn_top1", "linprobe_top1"])
    assert list(df["linprobe_top1"]) == [50.0, 60.0] and list(df["knn_top1"]) == [30.0, 40.0]


def test_the_report_names_the_feature_pooling_the_evals_used():
    import pandas as pd

    from experiments import report

    def plan(pool=None):
        evals = {"every": 8, "max_train": 100, "max_val": 50, **({"pool": pool} if pool else {})}
        return {"points": [{"config": {"model": {"name": "m"}, "evals": evals}}]}

    table = pd.DataFrame({"point": ["a"], "wall_s": [1.0]})
    assert "frozen avg-pooled features" in report._setup(plan("avg"), table)["evals"]
    assert "frozen cls-pooled features" in report._setup(plan(), table)["evals"]   # the trainer's default
