"""A self-contained HTML report of sweeps, each beside the paper's numbers, with computed verdicts.

    python -m experiments.report runs/sweeps/mask_ratio runs/sweeps/target --out report.html
    python -m experiments.report runs/sweeps/* --out report.html --title "MAE ablations on Imagenette"

For every sweep directory: what was run (model, data, epochs, batch) and with what compute (wall
clock, CPU count / GPU), the sweep table with the paper's values for the matching settings, a plotly
figure with this sweep on the left and the paper on the right, and for each of the paper's trends
whether it holds here, is reversed, or is within noise (difference ± standard error, ±1 SE error
bars on the accuracies) -- decided by ``experiments.trends`` from the numbers, never written by hand.
The file embeds plotly.js, so it opens offline and can be mailed as one file.

Functions the inspector can call (pure: they read, never write):
    experiments.results.sweep_table(sweep_dir) -> DataFrame
    experiments.report.sweep_figure(table, name=None) -> plotly Figure
    experiments.report.per_point(table) -> DataFrame (one row per point: its seeds averaged, with SE)
    experiments.report.display_table(table) -> DataFrame (rounded, paper columns added)

A point trained at several seeds (``experiments.sweep --seeds``) is one row of the report's table:
the mean of its finished seeds, the standard error of that mean (binomial plus the seed-to-seed
spread, ``experiments.trends.with_standard_errors``) and how many of its seeds finished.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import html
import math
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from common.stats import accuracy_unit
from evals.inputs import RawHelpFormatter
from experiments import paper_refs, store
from experiments.results import sweep_table
from experiments.trends import check_trends, trends_frame, with_standard_errors

ACC_COLORS = {"linprobe_top1": "#1f77b4", "knn_top1": "#ff7f0e", "lin": "#1f77b4", "ft": "#2ca02c"}


# ----------------------------------------------------------------------------- numbers
def as_percent(values: pd.Series) -> pd.Series:
    """Top-1 as percent: the eval records may hold fractions (0-1) or percents (0-100)."""
    v = pd.to_numeric(values, errors="coerce")
    return v * (100.0 / accuracy_unit(v))


def _paper_columns(table: pd.DataFrame, ref: paper_refs.PaperRef | None) -> pd.DataFrame:
    lin, ft = [], []
    for label in table.get("paper_setting", pd.Series([None] * len(table))):
        row = ref.row(str(label)) if ref is not None and label is not None and not _isnan(label) else None
        lin.append(row.lin if row else math.nan)
        ft.append(row.ft if row else math.nan)
    return pd.DataFrame({"paper_lin": lin, "paper_ft": ft}, index=table.index)


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _point_row(runs: pd.DataFrame) -> pd.Series:
    """One point's row from the rows of its seeds (see `per_point`)."""
    status = runs["status"].astype(str)
    done = runs[status == "finished"]
    row = (with_standard_errors(done).iloc[0] if len(done) else runs.iloc[0]).copy()
    if len(done) < len(runs):
        row["status"] = status[status != "finished"].iloc[0]
    row["seeds"] = f"{len(done)}/{len(runs)}"
    row["epochs_done"] = pd.to_numeric(runs["epochs_done"], errors="coerce").min()
    if len(done):
        row["final_loss"] = pd.to_numeric(done["final_loss"], errors="coerce").mean()
    row["wall_s"] = pd.to_numeric(runs["wall_s"], errors="coerce").sum(min_count=1)
    return row


def per_point(table: pd.DataFrame) -> pd.DataFrame:
    """One row per point of a sweep table whose points have several seeds (rows sharing ``point``):
    accuracies, final loss and speed averaged over the finished seeds, ``<metric>_se`` their
    standard error (binomial plus the seeds' spread), ``seeds`` 'finished/planned', ``status`` the
    first unfinished seed's (else finished). A table of one row per point is returned as it is."""
    if "point" not in table or not table["point"].duplicated().any():
        return table
    rows = [_point_row(g) for _, g in table.groupby("point", sort=False)]
    out = pd.DataFrame(rows).reset_index(drop=True)
    out.attrs = dict(table.attrs)
    return out


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The sweep table as shown to people: top-1 in %, the paper's numbers beside, rounded; with
    ``seeds`` and ``<metric>_se`` columns (`per_point`) also the seeds and each top-1's SE."""
    name = table.attrs.get("sweep")
    ref = paper_refs.get(name) if name else None
    out = pd.DataFrame({
        "point": table["point"], "value": table["value"],
        "encoder params (M)": pd.to_numeric(table["encoder_params_m"], errors="coerce").round(2),
        "epochs": table["epochs_done"].astype(str) + "/" + table["epochs"].astype(str),
        "final loss": pd.to_numeric(table["final_loss"], errors="coerce").round(4),
        "kNN top-1 (%)": as_percent(table["knn_top1"]).round(2),
        "linear probe top-1 (%)": as_percent(table["linprobe_top1"]).round(2),
        "s / epoch": pd.to_numeric(table["s_per_epoch"], errors="coerce").round(1),
        "images / s": pd.to_numeric(table["images_per_s"], errors="coerce").round(0),
        "status": table["status"],
    })
    if "n_val" in table:  # the number of val images each accuracy was computed on (its binomial SE)
        out.insert(list(out.columns).index("s / epoch"), "val images", pd.to_numeric(table["n_val"], errors="coerce"))
    for metric, col in (("knn_top1", "kNN top-1 (%)"), ("linprobe_top1", "linear probe top-1 (%)")):
        se = _se_percent(table, metric)
        if se is not None:  # ± this: binomial on the val images plus the seed-to-seed spread
            out.insert(list(out.columns).index(col) + 1, f"{col.split(' top-1')[0]} SE (%)", se.round(2))
    if "seeds" in table:  # finished / planned seeds behind each row
        out.insert(2, "seeds", table["seeds"])
    if ref is not None:
        paper = _paper_columns(table, ref)
        out["paper setting"] = table["paper_setting"].astype(object).fillna("")
        out[f"paper lin (%) [{ref.source}]"] = paper["paper_lin"]
        out[f"paper ft (%) [{ref.source}]"] = paper["paper_ft"]
    return out


# ----------------------------------------------------------------------------- figures
def _x(table: pd.DataFrame, axis: dict) -> tuple[pd.Series, str]:
    kind = axis.get("type", "category")
    if axis.get("x") and axis["x"] in table:
        return pd.to_numeric(table[axis["x"]], errors="coerce"), kind
    if kind in ("numeric", "log"):
        x = pd.to_numeric(table["value"], errors="coerce")
        if x.notna().all():
            return x, kind
    return table["value"].astype(str), "category"


def _se_percent(done: pd.DataFrame, metric: str) -> pd.Series | None:
    """The ``<metric>_se`` column in the same percent units as ``as_percent``; None when unknown."""
    col = f"{metric}_se"
    if col not in done:
        return None
    se = pd.to_numeric(done[col], errors="coerce")
    if not se.notna().any():
        return None
    return se * (100.0 / accuracy_unit(done[metric]))


def _time_traces(fig: go.Figure, done: pd.DataFrame, x, ref: paper_refs.PaperRef | None) -> None:
    """Wall-clock sweep: seconds per epoch and speed-up vs the point with the mask token (left),
    the paper's hours for 800 epochs (right)."""
    spe = pd.to_numeric(done["s_per_epoch"], errors="coerce")
    ips = pd.to_numeric(done["images_per_s"], errors="coerce")
    base = done[done["point"].astype(str) == "with_mask_token"]
    speed = [math.nan] * len(done)
    if len(base):
        ref_ips = float(pd.to_numeric(base["images_per_s"], errors="coerce").iloc[0])
        ref_spe = float(pd.to_numeric(base["s_per_epoch"], errors="coerce").iloc[0])
        # speed-up from training throughput (images/s) when logged, else from seconds per epoch
        speed = [i / ref_ips if ref_ips > 0 and i > 0 else ref_spe / t for i, t in zip(ips, spe)]
    text = [f"{t:.3g} s" + ("" if math.isnan(v) else f", {v:.2f}x") for t, v in zip(spe, speed)]
    fig.add_trace(go.Bar(x=x, y=spe, name="seconds / epoch, speed-up vs w/ [M] (this sweep)",
                         marker_color="#7f7f7f", text=text, textposition="auto"), row=1, col=1)
    fig.update_yaxes(title_text="seconds per epoch", row=1, col=1)
    if ref:
        rows = ref.rows
        fig.add_trace(go.Bar(x=[r.setting for r in rows], y=[r.extra.get("hours") for r in rows],
                             name="paper: hours for 800 epochs", marker_color="#bcbd22",
                             text=[f"{r.extra.get('speedup')}x" for r in rows], textposition="auto"), row=1, col=2)
        fig.update_yaxes(title_text="hours (128 TPU-v3 cores)", row=1, col=2)


def _accuracy_traces(fig: go.Figure, done: pd.DataFrame, x, kind: str, ref: paper_refs.PaperRef | None) -> None:
    """Linear-probe and kNN top-1 with ±1 SE bars against the varied setting (left), the paper's
    linear-probe and fine-tune top-1 (right)."""
    for metric, label in (("linprobe_top1", "linear probe"), ("knn_top1", "kNN")):
        if metric not in done:
            continue
        y = as_percent(done[metric])
        if y.notna().any():
            trace = (go.Bar if kind == "category" else go.Scatter)
            kw = {} if kind == "category" else {"mode": "lines+markers"}
            se = _se_percent(done, metric)
            if se is not None:  # ±1 SE: binomial on the val images, plus seed spread
                kw["error_y"] = dict(type="data", array=list(se), visible=True)
            fig.add_trace(trace(x=x, y=y, name=f"{label} (this sweep)", marker_color=ACC_COLORS[metric],
                                hovertext=done["point"], **kw), row=1, col=1)
    fig.update_yaxes(title_text="top-1 (%)", row=1, col=1)
    if ref:
        rows = ref.rows
        numeric = kind != "category" and all(r.x is not None for r in rows)
        px = [r.x for r in rows] if numeric else [r.setting for r in rows]
        for key, label in (("lin", "linear probe"), ("ft", "fine-tune")):
            py = [getattr(r, key) for r in rows]
            if any(v is not None for v in py):
                trace = go.Scatter if numeric else go.Bar
                kw = {"mode": "lines+markers"} if numeric else {}
                fig.add_trace(trace(x=px, y=py, name=f"paper {label}", marker_color=ACC_COLORS[key],
                                    opacity=0.6, **kw), row=1, col=2)
        fig.update_yaxes(title_text="ImageNet top-1 (%)", row=1, col=2)


def sweep_figure(table: pd.DataFrame, name: str | None = None) -> go.Figure:
    """This sweep's numbers (left) beside the paper's (right) as one plotly figure.

    ``table`` is a sweep table (``experiments.results.sweep_table``); ``name`` the sweep name (defaults to
    ``table.attrs['sweep']``). Accuracy sweeps plot linear-probe and kNN top-1 against the varied
    setting; the wall-clock sweep plots seconds per epoch and speed-up. Unfinished points are left out.
    """
    name = name or table.attrs.get("sweep") or "sweep"
    axis = dict(table.attrs.get("axis") or {})
    ref = paper_refs.get(name)
    title = table.attrs.get("title") or name
    time_plot = name == "wall_clock"
    done = table[table["status"].astype(str) == "finished"] if "status" in table else table
    n_done = len(done)
    if len(done) and not time_plot:
        done = with_standard_errors(done)  # one row per point (seeds averaged), <metric>_se beside
    right_title = f"paper: {ref.source}, {ref.model}, {ref.epochs} ep" if ref else "paper: no reference"
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"this sweep ({n_done}/{len(table)} points done)",
                                                        right_title), horizontal_spacing=0.12)
    x, kind = _x(done, axis)
    if time_plot:
        _time_traces(fig, done, x, ref)
    else:
        _accuracy_traces(fig, done, x, kind, ref)
    xlabel = axis.get("label", "setting")
    fig.update_xaxes(title_text=xlabel, row=1, col=1)
    fig.update_xaxes(title_text=xlabel if name != "model_size" else "encoder parameters (M)", row=1, col=2)
    if name == "mask_ratio":  # same units on both sides: show the whole range
        fig.update_xaxes(range=[0, 1], row=1, col=1)
        fig.update_xaxes(range=[0, 1], row=1, col=2)
    if kind == "log":
        fig.update_xaxes(type="log", row=1, col=1)
        if name in ("model_size", "epochs"):
            fig.update_xaxes(type="log", row=1, col=2)
    fig.update_layout(title=title, height=420, margin=dict(l=60, r=20, t=70, b=60),
                      barmode="group", legend=dict(orientation="h", y=-0.25))
    return fig


# ----------------------------------------------------------------------------- setup text
def _setup(plan_doc: dict, table: pd.DataFrame) -> dict:
    """Model, data, epochs and compute of a sweep, as short strings."""
    cfgs = [p.get("config", {}) for p in plan_doc.get("points", [])]
    def uniq(path, default="n/a"):
        vals = []
        for c in cfgs:
            node = c
            for part in path.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            v = node if node != {} else None
            if v not in vals:
                vals.append(v)
        return ", ".join(str(v) for v in vals if v is not None) or default
    host = plan_doc.get("host", {})
    device = host.get("gpu") and f"{host.get('gpu_count', 1)} x {host['gpu']}" or \
        f"CPU only ({host.get('cpu_count', '?')} cores, {host.get('torch_threads', '?')} torch threads)"
    wall = pd.to_numeric(table.get("wall_s"), errors="coerce").sum()
    reused = table["reused_from"].astype(object).fillna("").astype(str) != "" if "reused_from" in table else pd.Series(False, table.index)
    copied = pd.to_numeric(table.loc[reused, "wall_s"], errors="coerce").sum() if reused.any() else 0.0
    fmt = lambda s: f"{s / 3600:.2f} h" if s >= 3600 else f"{s / 60:.1f} min"
    return {
        "model": uniq("model.name"),
        "data": f"{uniq('data.train_path')} (backend {uniq('data.backend')}, {uniq('data.image_size')} px)",
        "epochs": uniq("epochs"),
        "batch": f"{uniq('data.batch_size')} per process x {uniq('optim.accum_steps', '1')} accumulation steps",
        "recipe": f"blr {uniq('optim.blr')}, warm-up {uniq('optim.warmup_epochs')} ep, mask ratio {uniq('model.mask_ratio')}",
        "evals": (f"kNN + cached linear probe on frozen {uniq('evals.pool', 'cls')}-pooled features after the "
                  f"last epoch (max_train "
                  f"{uniq('evals.max_train')}, max_val {uniq('evals.max_val')}, val split {uniq('data.val_path')})"
                  if any(int((c.get("evals") or {}).get("every") or 0) for c in cfgs)
                  else "none (this sweep measures training time only)"),
        "compute": fmt(wall) + f" wall-clock in total on {host.get('host', '?')}: {device}, torch {host.get('torch', '?')}"
        + (f" (of which {fmt(copied)} for {int(reused.sum())} point(s) copied from another sweep: "
           + ", ".join(f"{pt} = {src}" for pt, src in zip(table.loc[reused, "point"], table.loc[reused, "reused_from"]))
           + ")" if reused.any() else ""),
    }


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="", border=0, classes="tbl", float_format=lambda v: f"{v:.4g}")


def _verdict_html(tf: pd.DataFrame) -> str:
    if tf.empty:
        return "<p><em>No trend of the paper is registered for this sweep.</em></p>"
    rows = []
    for _, r in tf.iterrows():
        cls = {"holds": "yes", "reversed": "no", "within noise": "noise"}.get(r["verdict"], "na")
        rows.append(f"<tr><td>{html.escape(r['claim'])}</td><td class='{cls}'>{html.escape(r['verdict'])}</td>"
                    f"<td>{html.escape(_diff_text(r))}</td>"
                    f"<td>{html.escape(r['detail'])}</td><td>{html.escape(r['paper'])}</td></tr>")
    return ("<table class='tbl'><thead><tr><th>paper's trend, tested here</th><th>verdict</th>"
            "<th>difference ± SE</th><th>numbers here</th><th>paper</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _diff_text(r) -> str:
    """'+2.0 ± 2.2' (the claim's sign positive); '' for speed ratios and missing numbers."""
    diff, se = r.get("diff", math.nan), r.get("se", math.nan)
    if diff is None or _isnan(float(diff)) or r.get("metric") == "speed":
        return ""
    return f"{float(diff):+.3g}" + ("" if se is None or _isnan(float(se)) else f" ± {float(se):.2g}")


def sweep_section(sweep_dir, include_plotlyjs: bool | str = False) -> tuple[str, pd.DataFrame]:
    """HTML of one sweep (setup, table, figure, paper reference, verdicts) and its trend frame."""
    plan_doc = store.read_plan(sweep_dir)
    table = sweep_table(sweep_dir)
    name = plan_doc.get("sweep", Path(sweep_dir).name)
    ref = paper_refs.get(name)
    trends = trends_frame(check_trends(name, table))
    setup = _setup(plan_doc, table)
    fig_html = pio.to_html(sweep_figure(table, name), full_html=False, include_plotlyjs=include_plotlyjs)
    num = plan_doc.get("number")
    parts = [f"<section id='{html.escape(name)}'><h2>{'Sweep ' + str(num) + ': ' if num else ''}"
             f"{html.escape(plan_doc.get('title', name))} <small>({html.escape(name)}, preset "
             f"{html.escape(str(plan_doc.get('preset')))}, {html.escape(str(sweep_dir))})</small></h2>"]
    parts.append("<ul class='setup'>" + "".join(
        f"<li><b>{k}</b>: {html.escape(str(v))}</li>" for k, v in setup.items()) + "</ul>")
    parts.append("<div class='row'><div class='col'>" + _table_html(display_table(per_point(table))) + "</div>")
    parts.append("<div class='col'>" + fig_html + "</div></div>")
    if ref is not None:
        pref = pd.DataFrame(ref.as_records()).drop(columns=["x"], errors="ignore").dropna(axis=1, how="all")
        parts.append(f"<p class='ref'><b>Paper ({html.escape(ref.source)})</b>: {html.escape(ref.claim)} "
                     f"<br>{html.escape(ref.model)}, {html.escape(ref.data)}, {html.escape(str(ref.epochs))} "
                     f"epochs. {html.escape(ref.notes)}</p>" + _table_html(pref))
    parts.append("<h3>Did the paper's trends reproduce at this scale?</h3>" + _verdict_html(trends))
    parts.append("</section>")
    return "\n".join(parts), trends


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{margin-bottom:0} .sub{color:#666} section{border-top:2px solid #ddd;margin-top:28px;padding-top:8px}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start} .col{flex:1 1 600px;min-width:0;overflow-x:auto}
table.tbl{border-collapse:collapse;font-size:13px;margin:8px 0} .tbl th,.tbl td{border-bottom:1px solid #e3e3e3;
padding:3px 8px;text-align:left} .tbl th{background:#f5f5f5} td.yes{color:#137333;font-weight:600}
td.no{color:#b3261e;font-weight:600} td.noise{color:#8a6d00} td.na{color:#777} .setup{font-size:14px} .ref{font-size:14px;color:#333}
small{color:#777;font-weight:normal}
"""


def build_report(sweep_dirs: list, out, title: str = "MAE ablations and scaling, reproduced at small scale") -> Path:
    """Write the HTML report of ``sweep_dirs`` to ``out``; return its path."""
    sections, all_trends = [], []
    for i, d in enumerate(sweep_dirs):
        sec, trends = sweep_section(d, include_plotlyjs=True if i == 0 else False)
        sections.append(sec)
        all_trends.append(trends)
    summary = pd.concat(all_trends, ignore_index=True) if all_trends else pd.DataFrame()
    counts = summary["verdict"].value_counts() if len(summary) else pd.Series(dtype=int)
    n_yes, n_no, n_noise = (int(counts.get(v, 0)) for v in ("holds", "reversed", "within noise"))
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = (f"<h1>{html.escape(title)}</h1><p class='sub'>Generated {now} by <code>python -m experiments.report</code> "
            f"from {len(sweep_dirs)} sweep(s). Reference: {html.escape(paper_refs.PAPER)}; the paper's numbers are "
            f"ImageNet-1K at 224 px with ViT-L (unless stated), ours are whatever each sweep states, so compare "
            f"<em>trends</em>, not values. Verdicts are computed from the tables by <code>experiments.trends</code>, each "
            f"difference with its standard error (binomial on the val images, plus the seed-to-seed spread where "
            f"a point has several seeds); a difference under 2 SE reads <em>within noise</em>: "
            f"{n_yes} hold, {n_no} reversed, {n_noise} within noise, "
            f"{len(summary) - n_yes - n_no - n_noise} without enough data.</p>")
    summary_html = "<h2>Summary of the paper's trends</h2>" + _verdict_html(summary) if len(summary) else ""
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>{head}{summary_html}{''.join(sections)}</body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                                 formatter_class=RawHelpFormatter,
                                 epilog="Writes: the one HTML file --out (figures and plotly.js inlined); reads the "
                                        "sweep directories only.")
    ap.add_argument("sweep_dirs", nargs="+", help="sweep directories (each holds sweep.json)")
    ap.add_argument("--out", default="report.html", help="output HTML file")
    ap.add_argument("--title", default="MAE ablations and scaling, reproduced at small scale",
                    help="page title")
    args = ap.parse_args(argv)
    dirs = [Path(d) for d in args.sweep_dirs]
    bad = [d for d in dirs if not store.is_sweep_dir(d)]
    if bad:
        print(f"experiments.report: error: not a sweep directory (no {store.PLAN}): "
              f"{', '.join(map(str, bad))}", file=sys.stderr)
        return 2
    path = build_report(dirs, args.out, args.title)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
