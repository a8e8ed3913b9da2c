"""Did the paper's findings reproduce? Each trend is a small test on a sweep table, never a sentence.

Why: a report that says "norm_pix beats pixel" must say it because the numbers do. Every trend here
reads a sweep table (the frame of ``experiments.results.sweep_table``: columns ``point``, ``value``,
``paper_setting``, ``encoder_params_m``, ``epochs``, ``knn_top1``, ``linprobe_top1``,
``images_per_s``, ``s_per_epoch``, ``status``) and returns a :class:`TrendResult` whose ``holds`` is

- ``True``  the inequality the paper found holds in this table,
- ``False`` it does not,
- ``None``  the table lacks the points or numbers needed (not run, failed, metric missing).

Accuracy trends are checked once per probe present in the table (linear probe, kNN). Rows with a
``status`` other than ``finished`` are ignored. ``holds`` is the exact inequality (no tolerance), kept
for callers that want it; ``verdict`` is what a reader should believe, because at CPU scale most
differences are inside one binomial standard error (~1.6 points on 1,000 images):

- each accuracy gets a standard error: binomial ``sqrt(p(1-p)/n)`` with ``n`` the number of val images
  it was computed on (column ``n_val``), and when a point has several rows (seeds) the SE of their
  mean, ``sqrt(mean(p(1-p)/n) / k + var_seeds / k)``: binomial noise plus the seed-to-seed spread;
- a comparison's difference ``a - b`` gets ``SE = sqrt(SE_a^2 + SE_b^2)``;
- ``verdict`` reads ``holds`` / ``reversed`` when ``|difference| >= 2 SE`` (sign as the paper's claim
  or against it), ``within noise`` when smaller, ``not enough data`` when a number is missing. With no
  SE (no ``n_val``; speed comparisons) the exact inequality decides holds / reversed.

    from experiments.trends import check_trends, trends_frame
    results = check_trends("mask_ratio", table)
    trends_frame(results)      # one row per trend x metric
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import pandas as pd

from common.stats import accuracy_unit, point_se  # noqa: F401  (point_se re-exported: the report and tests use trends.point_se)

ACCURACY_METRICS = {"linprobe_top1": "linear probe", "knn_top1": "kNN"}


@dataclass
class TrendResult:
    """One trend of the paper tested on one sweep table (see module doc for ``holds``)."""

    sweep: str
    trend: str
    claim: str
    metric: str
    holds: bool | None
    detail: str
    paper: str
    diff: float = math.nan   # a - b in the table's units, the sign of the paper's claim positive
    se: float = math.nan     # standard error of diff (NaN: unknown)

    @property
    def verdict(self) -> str:
        if self.holds is None:
            return "not enough data"
        if self.se > 0 and abs(self.diff) < 2 * self.se:
            return "within noise"
        return "holds" if self.holds else "reversed"


# ----------------------------------------------------------------------------- table helpers
def usable(table: pd.DataFrame) -> pd.DataFrame:
    """Finished points (all rows when the table has no status column), one row per point: seeds of
    a point are averaged and each accuracy gains a ``<metric>_se`` column (see module doc)."""
    if table is None or len(table) == 0:
        return pd.DataFrame()
    if "status" in table:
        table = table[table["status"].astype(str) == "finished"]
    if not len(table):
        return table
    return with_standard_errors(table)


def _scale(table: pd.DataFrame, metric: str) -> float:
    """100 when the table's accuracies are percents, 1 when fractions (as evals record either)."""
    return accuracy_unit(table[metric])


def with_standard_errors(table: pd.DataFrame) -> pd.DataFrame:
    """One row per point (first row's other columns, accuracies averaged over seeds) with
    ``<metric>_se`` for each accuracy column."""
    key = "point" if "point" in table else None
    groups = [g for _, g in table.groupby(key, sort=False, dropna=False)] if key else [table.iloc[[i]] for i in range(len(table))]
    metrics = [m for m in ACCURACY_METRICS if m in table]
    scales = {m: _scale(table, m) for m in metrics}
    rows = []
    for g in groups:
        row = g.iloc[0].copy()
        for m in metrics:
            row[m], row[f"{m}_se"] = point_se(g[m], g["n_val"] if "n_val" in g else None, scales[m])
        for col in ("images_per_s", "s_per_epoch"):
            if col in g and len(g) > 1:
                row[col] = pd.to_numeric(g[col], errors="coerce").mean()
        rows.append(row)
    return pd.DataFrame(rows).reset_index(drop=True).infer_objects()


def _se_of(row: pd.Series | None, metric: str) -> float:
    return math.nan if row is None else _num(row.get(f"{metric}_se"))


def _noise(diff: float, se: float) -> str:
    """' (diff +1.2 ± 0.8 SE)' for a detail string."""
    return f" (diff {diff:+.3g} ± {se:.2g} SE)" if not math.isnan(se) else f" (diff {diff:+.3g}, SE unknown: no n_val)"


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _pick(table: pd.DataFrame, *aliases: str) -> pd.Series | None:
    """The first row whose point name, value or paper setting equals one of ``aliases``."""
    for alias in aliases:
        for col in ("point", "value", "paper_setting"):
            if col in table:
                hit = table[table[col].astype(str) == alias]
                if len(hit):
                    return hit.iloc[0]
    return None


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _metrics_in(table: pd.DataFrame) -> list[str]:
    """Accuracy columns with at least one number; linear probe first. Empty tables: linear probe."""
    present = [m for m in ACCURACY_METRICS if m in table and pd.to_numeric(table[m], errors="coerce").notna().any()]
    return present or ["linprobe_top1"]


def _speed(row: pd.Series | None) -> float:
    """Training speed of a row: images/s when logged, else 1 / seconds per epoch."""
    if row is None:
        return math.nan
    ips = _num(row.get("images_per_s"))
    if not math.isnan(ips) and ips > 0:
        return ips
    spe = _num(row.get("s_per_epoch"))
    return 1.0 / spe if spe > 0 else math.nan


def _spearman(x: pd.Series, y: pd.Series) -> float:
    if len(x) < 3:
        return math.nan
    return float(x.rank().corr(y.rank()))


# ----------------------------------------------------------------------------- trend kinds
def _compare(sweep, trend, claim, paper, a_names, b_names, strict, value_of=None):
    """Trend 'a beats b' (strict) or 'a at least as good as b' on each accuracy metric."""
    def check(table: pd.DataFrame) -> list[TrendResult]:
        t = usable(table)
        out = []
        for metric in _metrics_in(t) if value_of is None else ["speed"]:
            a, b = (_pick(t, *a_names) if len(t) else None), (_pick(t, *b_names) if len(t) else None)
            get = value_of or (lambda r: _num(r.get(metric)) if r is not None else math.nan)
            va, vb = get(a), get(b)
            label = ACCURACY_METRICS.get(metric, metric)
            se = math.nan if value_of is not None else math.hypot(_se_of(a, metric), _se_of(b, metric))
            if math.isnan(va) or math.isnan(vb):
                holds, detail = None, f"{a_names[0]}: {_fmt(va)}, {b_names[0]}: {_fmt(vb)} (missing)"
            else:
                holds = va > vb if strict else va >= vb
                extra = f" ({va / vb:.2f}x)" if value_of is not None and vb > 0 else _noise(va - vb, se)
                detail = f"{a_names[0]}: {_fmt(va)} vs {b_names[0]}: {_fmt(vb)}{extra}"
            out.append(TrendResult(sweep, trend, claim.format(metric=label), label, holds, detail, paper,
                                   va - vb, se))
        return out
    return check


def _numeric_points(t: pd.DataFrame, xcol: str, metric: str):
    """(x, y) as numbers over the rows where both are known."""
    x = pd.to_numeric(t[xcol], errors="coerce") if xcol in t else pd.Series(dtype=float)
    y = pd.to_numeric(t[metric], errors="coerce") if metric in t else pd.Series(dtype=float)
    ok = x.notna() & y.notna()
    return x[ok], y[ok]


def _pair_se(t: pd.DataFrame, metric: str, i, j) -> float:
    """SE of y[i] - y[j] (rows i, j of ``t``)."""
    col = f"{metric}_se"
    if col not in t:
        return math.nan
    return math.hypot(_num(t.at[i, col]), _num(t.at[j, col]))


def _too_few(sweep, trend, claim, label, paper, n: int, need: int) -> TrendResult:
    return TrendResult(sweep, trend, claim.format(metric=label), label, None,
                       f"{n} point(s) with numbers; need {need}", paper)


def _per_metric(sweep, trend, claim, paper, xcol: str, need: int, judge):
    """A numeric-axis trend check: for each accuracy metric in the table, ``judge(t, metric, x, y)``
    -> (holds, detail, diff, se) on the points with numbers, or "too few points" below ``need``."""
    def check(table: pd.DataFrame) -> list[TrendResult]:
        t = usable(table)
        out = []
        for metric in _metrics_in(t):
            label = ACCURACY_METRICS[metric]
            x, y = _numeric_points(t, xcol, metric)
            if len(x) < need:
                out.append(_too_few(sweep, trend, claim, label, paper, len(x), need))
                continue
            holds, detail, diff, se = judge(t, metric, x, y)
            out.append(TrendResult(sweep, trend, claim.format(metric=label), label, holds, detail, paper,
                                   diff, se))
        return out
    return check


def _argmax_at_least(sweep, trend, claim, paper, threshold):
    """Trend 'the best value of the varied numeric axis is >= threshold'."""
    def judge(t, metric, x, y):
        best = y.idxmax()
        lo, hi = x.idxmin(), x.idxmax()
        detail = (f"peak at {_fmt(x[best])} ({_fmt(y[best])}); at {_fmt(x[lo])}: {_fmt(y[lo])}, "
                  f"at {_fmt(x[hi])}: {_fmt(y[hi])}")
        # noise: the best point at/above the threshold against the best one below it
        high, low = y[x >= threshold], y[x < threshold]
        diff, se = math.nan, math.nan
        if len(high) and len(low):
            ih, il = high.idxmax(), low.idxmax()
            diff, se = float(y[ih] - y[il]), _pair_se(t, metric, ih, il)
            detail += f"; best >= {_fmt(threshold)} vs best below" + _noise(diff, se)
        return bool(x[best] >= threshold), detail, diff, se
    return _per_metric(sweep, trend, claim, paper, "value", 3, judge)


def _ends_rise(sweep, trend, claim, paper, xcol, require_rank: bool):
    """Trend 'the largest x beats the smallest x' (and, if asked, Spearman rho > 0 over all points)."""
    def judge(t, metric, x, y):
        lo, hi = x.idxmin(), x.idxmax()
        rho = _spearman(x, y)
        holds = bool(y[hi] > y[lo])
        if require_rank and not math.isnan(rho):
            holds = holds and rho > 0
        se = _pair_se(t, metric, hi, lo)
        detail = (f"{xcol}={_fmt(x[lo])}: {_fmt(y[lo])} -> {xcol}={_fmt(x[hi])}: {_fmt(y[hi])}"
                  f"{_noise(float(y[hi] - y[lo]), se)}; Spearman rho {_fmt(rho)} over {len(x)} points")
        return holds, detail, float(y[hi] - y[lo]), se
    return _per_metric(sweep, trend, claim, paper, xcol, 2, judge)


def _narrowest_not_best(sweep, trend, claim, paper):
    """Trend 'some wider decoder beats the narrowest one'."""
    def judge(t, metric, x, y):
        lo = x.idxmin()
        best = y.drop(lo).idxmax()
        se = _pair_se(t, metric, best, lo)
        detail = (f"narrowest {_fmt(x[lo])}: {_fmt(y[lo])}; best wider {_fmt(x[best])}: {_fmt(y[best])}"
                  + _noise(float(y[best] - y[lo]), se))
        return bool(y[best] > y[lo]), detail, float(y[best] - y[lo]), se
    return _per_metric(sweep, trend, claim, paper, "value", 2, judge)


# ----------------------------------------------------------------------------- the paper's trends
Check = Callable[[pd.DataFrame], list]

TRENDS: dict[str, list[tuple[str, Check]]] = {
    "mask_ratio": [
        ("peak_at_high_ratio", _argmax_at_least(
            "mask_ratio", "peak_at_high_ratio", "{metric} accuracy peaks at a high masking ratio (>= 0.6)",
            "Fig. 5: linear probing peaks at 75% (73.5)", 0.6)),
    ],
    "decoder_depth": [
        ("deeper_decoder_better", _ends_rise(
            "decoder_depth", "deeper_decoder_better", "the deepest decoder beats the shallowest ({metric})",
            "Table 1(a): 65.5 (1 block) -> 73.5 (8 blocks) linear", "value", require_rank=False)),
    ],
    "decoder_width": [
        ("narrowest_not_best", _narrowest_not_best(
            "decoder_width", "narrowest_not_best", "a wider decoder beats the narrowest one ({metric})",
            "Table 1(b): 69.1 (128 wide) vs 73.5 (512 wide) linear")),
    ],
    "mask_token": [
        ("no_mask_token_as_accurate", _compare(
            "mask_token", "no_mask_token_as_accurate",
            "an encoder without mask tokens is at least as accurate ({metric})",
            "Table 1(c): 73.5 (w/o [M]) vs 59.6 (w/ [M]) linear",
            ("without_mask_token", "w/o [M]"), ("with_mask_token", "w/ [M]"), strict=False)),
        ("no_mask_token_faster", _compare(
            "mask_token", "no_mask_token_faster", "an encoder without mask tokens trains faster",
            "Table 1(c): 3.3x fewer FLOPs; Table 2: 2.8x-4.1x less wall-clock",
            ("without_mask_token", "w/o [M]"), ("with_mask_token", "w/ [M]"), strict=True, value_of=_speed)),
    ],
    "target": [
        ("norm_pix_beats_pixel", _compare(
            "target", "norm_pix_beats_pixel", "per-patch normalised pixels beat raw pixels ({metric})",
            "Table 1(d): 73.9 (w/ norm) vs 73.5 (w/o norm) linear",
            ("norm_pix", "pixel (w/ norm)"), ("pixel", "pixel (w/o norm)"), strict=True)),
        ("norm_pix_beats_pca", _compare(
            "target", "norm_pix_beats_pca", "per-patch normalised pixels beat whitened PCA coefficients ({metric})",
            "Table 1(d): 73.9 (w/ norm) vs 72.3 (PCA) linear",
            ("norm_pix", "pixel (w/ norm)"), ("pca", "PCA"), strict=True)),
    ],
    "sampler": [
        ("random_ge_block75", _compare(
            "sampler", "random_ge_block75", "random sampling >= block-wise at 75% ({metric})",
            "Table 1(f): 73.5 (random 75) vs 63.9 (block 75) linear",
            ("random_75", "random 75"), ("block_75", "block 75"), strict=False)),
        ("random_ge_grid75", _compare(
            "sampler", "random_ge_grid75", "random sampling >= grid-wise at 75% ({metric})",
            "Table 1(f): 73.5 (random 75) vs 66.0 (grid 75) linear",
            ("random_75", "random 75"), ("grid_75", "grid 75"), strict=False)),
        ("block50_beats_block75", _compare(
            "sampler", "block50_beats_block75", "block-wise masking is better at 50% than at 75% ({metric})",
            "Table 1(f): 72.3 (block 50) vs 63.9 (block 75) linear",
            ("block_50", "block 50"), ("block_75", "block 75"), strict=True)),
    ],
    "epochs": [
        ("longer_is_better", _ends_rise(
            "epochs", "longer_is_better", "longer pre-training is better ({metric}; longest > shortest, rho > 0)",
            "Fig. 7: still improving at 1600 epochs", "epochs", require_rank=True)),
    ],
    "model_size": [
        ("bigger_is_better", _ends_rise(
            "model_size", "bigger_is_better", "a bigger encoder is better ({metric}; largest > smallest, rho > 0)",
            "Table 3: fine-tuning 83.6 (ViT-B) < 85.9 (ViT-L) < 86.9 (ViT-H)", "encoder_params_m",
            require_rank=True)),
    ],
    "wall_clock": [
        ("asymmetric_faster", _compare(
            "wall_clock", "asymmetric_faster", "the encoder without mask tokens trains faster per epoch",
            "Table 2: 2.8x (ViT-L, 8-block decoder) to 3.5x (ViT-H) faster",
            ("asymmetric", "w/o [M]"), ("with_mask_token", "w/ [M]"), strict=True, value_of=_speed)),
        ("shallow_decoder_faster", _compare(
            "wall_clock", "shallow_decoder_faster", "a 1-block decoder is faster still",
            "Table 2: 3.7x (ViT-L, 1-block decoder) vs 2.8x (8 blocks)",
            ("asymmetric_dec1", "w/o [M], dec 1"), ("asymmetric", "w/o [M]"), strict=True, value_of=_speed)),
    ],
}


def check_trends(sweep: str, table: pd.DataFrame) -> list[TrendResult]:
    """Test every paper trend registered for ``sweep`` on ``table`` (empty list for unknown sweeps)."""
    results: list[TrendResult] = []
    for _name, check in TRENDS.get(sweep, []):
        results.extend(check(table if table is not None else pd.DataFrame()))
    return results


def trends_frame(results: list[TrendResult]) -> pd.DataFrame:
    """Results as a frame: sweep, trend, claim, metric, holds, verdict, diff, se, detail, paper."""
    rows = [dict(asdict(r), verdict=r.verdict) for r in results]
    cols = ["sweep", "trend", "claim", "metric", "holds", "verdict", "diff", "se", "detail", "paper"]
    return pd.DataFrame(rows, columns=cols)
