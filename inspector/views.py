"""Pure view functions: data in (frames, dicts of arrays), plotly figures / tables / images out.

Nothing here reads files or knows about Gradio, so every view can be tested on its own and reused in
notebooks. Curves take `{run_name: DataFrame}` so several runs overlay in one figure; any figure's
data can be exported with `figure_frame` / `figure_csv`.
"""
from __future__ import annotations

import io
import json
import math
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from PIL import Image, ImageDraw, ImageFont

from common.values import finite_or_none
from common.stats import accuracy_unit, point_se

# The MAE paper's ImageNet-1K results (He et al. 2021, 1600-epoch pretraining, 224 px):
# encoder parameters, fine-tune top-1 and linear-probe top-1.
PAPER_REFERENCE = pd.DataFrame({
    "model": ["ViT-B/16", "ViT-L/16", "ViT-H/14"],
    "params": [86e6, 304e6, 632e6],
    "epochs": [1600, 1600, 1600],
    "finetune": [83.6, 85.9, 86.9],
    "linprobe": [68.0, 75.8, 76.6],
})
PAPER_LABEL = "MAE paper, ImageNet-1K (reference)"

# eval kinds as logged by evals/ -> paper column they compare to
KIND_TO_PAPER = {"linprobe": "linprobe", "linprobe_full": "linprobe", "finetune": "finetune"}
KIND_LABELS = {"linprobe": "linear probe", "linprobe_full": "linear probe (full)", "knn": "kNN",
               "finetune": "fine-tune"}

RUNS_TABLE_COLUMNS = ["name", "status", "model", "dataset", "epochs", "last_loss", "best_linprobe",
                      "best_knn", "images_per_s", "params", "problems"]
# what the Runs tab shows as column headers
RUNS_TABLE_HEADERS = {"name": "run", "status": "status", "model": "model", "dataset": "dataset",
                      "epochs": "epochs (done/planned)", "last_loss": "last loss",
                      "best_linprobe": "best linear probe top-1 (%)", "best_knn": "best kNN top-1 (%)",
                      "images_per_s": "images/s", "params": "encoder params", "problems": "problems"}
PANEL_NAMES = ("original", "masked", "reconstruction", "pasted")


# ---------------------------------------------------------------------------------------- units
def as_percent(values) -> pd.Series:
    """Accuracies as percent. evals/ logs fractions (0-1); older or external records may hold
    percent (0-100). Decided per table (one run's evals, one sweep), as evals' own report does."""
    v = pd.to_numeric(pd.Series(values), errors="coerce")
    finite = v.dropna()
    if len(finite) and finite.abs().max() <= 1.0:
        return v * 100.0
    return v


def evals_in_percent(evals: pd.DataFrame) -> pd.DataFrame:
    """A run's eval table with top1/top5 in percent (the paper's unit)."""
    if evals is None or evals.empty:
        return evals
    return _in_percent(evals, [c for c in ("top1", "top5") if c in evals])


def _in_percent(df: pd.DataFrame, acc: list[str]) -> pd.DataFrame:
    """A copy of ``df`` with the accuracy columns ``acc`` numeric and in percent: all of them are
    taken as fractions when none exceeds 1 (evals record either unit)."""
    out = df.copy()
    if acc:
        scale = 100.0 / accuracy_unit(*(out[c] for c in acc))
        for c in acc:
            out[c] = pd.to_numeric(out[c], errors="coerce") * scale
    return out


# ---------------------------------------------------------------------------------------- tables
def runs_table(summaries: Iterable[Mapping]) -> pd.DataFrame:
    """The Runs tab table: one row per run summary, fixed columns, numbers rounded for reading."""
    df = pd.DataFrame(list(summaries))
    for col in RUNS_TABLE_COLUMNS:
        if col not in df:
            df[col] = None
    df = df[RUNS_TABLE_COLUMNS].copy()
    if df.empty:
        return df
    df["last_loss"] = pd.to_numeric(df["last_loss"], errors="coerce").round(4)
    for col in ("best_linprobe", "best_knn"):
        df[col] = pd.to_numeric(df[col], errors="coerce").round(2)
    df["images_per_s"] = pd.to_numeric(df["images_per_s"], errors="coerce").round(1)
    params = pd.to_numeric(df["params"], errors="coerce")
    df["params"] = [format_params(p) for p in params]
    df["problems"] = df["problems"].fillna("").astype(str)
    return df.sort_values("name").reset_index(drop=True)


def format_params(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    p = float(p)
    if p >= 1e9:
        return f"{p / 1e9:.2f}B"
    if p >= 1e6:
        return f"{p / 1e6:.1f}M"
    if p >= 1e3:
        return f"{p / 1e3:.0f}K"
    return f"{int(p)}"


# ---------------------------------------------------------------------------------------- helpers
def empty_figure(message: str, title: str | None = None) -> go.Figure:
    """A blank figure that says why it is blank (better than an empty axis or an error)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, height=360, template="plotly_white",
                      margin={"l": 40, "r": 20, "t": 50, "b": 40})
    return fig


def _layout(fig: go.Figure, title: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=title, height=height, template="plotly_white", hovermode="x unified",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
                      margin={"l": 60, "r": 20, "t": 80, "b": 50})
    return fig


def downsample(df: pd.DataFrame, x: str, max_points: int = 4000) -> pd.DataFrame:
    """Bin-average long per-step logs to at most ~max_points rows, so months-long runs plot fast."""
    if len(df) <= max_points:
        return df
    bins = np.arange(len(df)) * max_points // len(df)
    num = df.select_dtypes("number")
    return num.groupby(bins).mean().reset_index(drop=True)


def _numeric(df: pd.DataFrame, cols: Iterable[str]) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        if c in out:
            out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


def _metric_series(metrics_by_run: Mapping[str, pd.DataFrame], y: str, x: str, max_points: int):
    for name, df in metrics_by_run.items():
        if df is None or df.empty or y not in df or x not in df:
            continue
        d = _numeric(df, [x, y]).dropna(subset=[x, y]).sort_values(x)
        if d.empty:
            continue
        d = downsample(d[[x, y]], x, max_points)
        yield name, d[x].to_numpy(), d[y].to_numpy()


# ---------------------------------------------------------------------------------------- curves
def metric_figure(metrics_by_run: Mapping[str, pd.DataFrame], y: str, *, x: str = "step",
                  title: str | None = None, y_title: str | None = None, log_y: bool = False,
                  max_points: int = 4000) -> go.Figure:
    """One per-step metric (loss, lr, ...) for one or several runs, overlaid."""
    title = title or f"{y} per {x}"
    fig = go.Figure()
    for name, xs, ys in _metric_series(metrics_by_run, y, x, max_points):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name))
    if not fig.data:
        return empty_figure(f"No '{y}' logged yet for the selected runs.", title)
    _layout(fig, title)
    fig.update_xaxes(title=x)
    fig.update_yaxes(title=y_title or y, type="log" if log_y else "linear")
    return fig


def loss_figure(metrics_by_run, *, x: str = "step", log_y: bool = False) -> go.Figure:
    return metric_figure(metrics_by_run, "loss", x=x, title="Training loss (masked patches, MSE)",
                         y_title="loss", log_y=log_y)


def lr_figure(metrics_by_run, *, x: str = "step") -> go.Figure:
    return metric_figure(metrics_by_run, "lr", x=x, title="Learning rate", y_title="lr")


def throughput_figure(metrics_by_run: Mapping[str, pd.DataFrame], *, x: str = "step",
                      max_points: int = 4000) -> go.Figure:
    """Images/s (top) and data wait, the share of step time spent waiting for a batch (bottom)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("images / s", "data wait (share of step time)"))
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
    any_trace = False
    for i, name in enumerate(metrics_by_run):
        color = palette[i % len(palette)]
        sub = {name: metrics_by_run[name]}
        for row, col in ((1, "images_per_s"), (2, "data_wait")):
            for _, xs, ys in _metric_series(sub, col, x, max_points):
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{name} · {col}",
                                         legendgroup=name, line={"color": color}), row=row, col=1)
                any_trace = True
    if not any_trace:
        return empty_figure("No throughput logged yet (images_per_s, data_wait).", "Throughput")
    _layout(fig, "Throughput and data wait", height=540)
    fig.update_layout(margin={"t": 90, "b": 110}, legend={"orientation": "h", "yanchor": "top", "y": -0.14, "x": 0})
    fig.update_xaxes(title=x, row=2, col=1)
    return fig


def eval_figure(evals_by_run: Mapping[str, pd.DataFrame], kinds: Iterable[str] = ("linprobe", "knn"),
                *, metric: str = "top1") -> go.Figure:
    """Linear-probe / kNN (/ fine-tune) accuracy against pretraining epoch, overlaid over runs."""
    kinds = list(kinds)
    fig = go.Figure()
    for name, df in evals_by_run.items():
        if df is None or df.empty or not {"kind", "epoch", metric} <= set(df.columns):
            continue
        d = _numeric(evals_in_percent(df), ["epoch", metric])
        for kind in kinds:
            k = d[d["kind"] == kind].dropna(subset=["epoch", metric])
            if k.empty:
                continue
            # a re-run eval at the same epoch replaces the earlier one
            k = k.groupby("epoch", as_index=False)[metric].last().sort_values("epoch")
            fig.add_trace(go.Scatter(x=k["epoch"], y=k[metric], mode="lines+markers",
                                     name=f"{name} · {KIND_LABELS.get(kind, kind)}"))
    title = f"{' / '.join(KIND_LABELS.get(k, k) for k in kinds)} {metric} vs epoch"
    if not fig.data:
        return empty_figure("No evaluations logged yet for the selected runs.", title)
    _layout(fig, title)
    fig.update_xaxes(title="pretraining epoch")
    fig.update_yaxes(title=f"{metric} accuracy (%)")
    return fig


# ---------------------------------------------------------------------------------------- scaling
SCALING_KINDS = ("linprobe", "linprobe_full", "knn", "finetune")
# statuses of a sweep point whose numbers count: runstore's sweep records say "done", the sweep
# table rebuilt from the run stores "finished"; a missing status is a hand-written table
DONE_STATUSES = ("done", "finished", "nan", "None")
# settings keys that say which checkpoint was evaluated, not how: records differing only here are
# the same evaluation at another epoch, and the newest stands for them
_WHICH_CHECKPOINT = ("checkpoint",)


def scaling_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Normalise sweep points to columns run, model, params, epochs, kind, top1, top1_se (one row per
    point; extra columns kept). A point without `top1_se` but with `n_val` (the val images its top-1
    was computed on) gets the binomial standard error from `common.stats.point_se`."""
    df = pd.DataFrame(list(rows))
    for col in ("run", "model", "params", "epochs", "kind", "top1", "top1_se", "n_val"):
        if col not in df:
            df[col] = None
    df = _numeric(df, ["params", "epochs", "top1", "top1_se", "n_val"])
    df = df.dropna(subset=["kind", "top1"]).reset_index(drop=True)
    todo = df["top1_se"].isna() & df["n_val"].notna()
    df.loc[todo, "top1_se"] = [point_se([t], [n], scale=100.0)[1]
                               for t, n in zip(df.loc[todo, "top1"], df.loc[todo, "n_val"])]
    return df


def sweep_scaling_rows(sweep: pd.DataFrame) -> list[dict]:
    """Scaling points from a sweep table (evals' layout: point, model, encoder_params_m,
    epochs_done / epochs, knn_top1, linprobe_top1, finetune_top1, n_val, status), top-1 in percent.

    Rows of one point are its seeds (as experiments.trends reads a sweep table): each point gives its mean
    top-1 and the standard error of that mean (`common.stats.point_se`: binomial on `n_val` images
    plus the seed-to-seed spread; None without `n_val`), `seeds` the number of rows behind it."""
    if sweep is None or sweep.empty:
        return []
    sweep = _in_percent(sweep, [c for c in sweep.columns if str(c).endswith("_top1")])
    if "status" in sweep:
        sweep = sweep[sweep["status"].astype(str).isin(DONE_STATUSES)]
    points = sweep["point"].astype(str) if "point" in sweep else pd.Series("", index=sweep.index)
    if "base_point" in sweep:  # runstore.sweep names each seed's run; base_point is the point it belongs to
        base = sweep["base_point"]
        points = base.where(base.notna() & (base.astype(str) != ""), points).astype(str)
    rows = []
    for point, seeds in sweep.groupby(points, sort=False):
        r = seeds.iloc[0]
        params = finite_or_none(r.get("encoder_params_m"))
        params = params * 1e6 if params is not None else finite_or_none(r.get("params"))
        epochs = finite_or_none(r.get("epochs_done"))
        if not epochs:
            epochs = finite_or_none(r.get("epochs"))
        for kind in SCALING_KINDS:
            if f"{kind}_top1" not in seeds:
                continue
            top1 = pd.to_numeric(seeds[f"{kind}_top1"], errors="coerce")
            mean, se = point_se(top1, seeds["n_val"] if "n_val" in seeds else None, scale=100.0)
            if finite_or_none(mean) is not None:
                rows.append({"run": point, "model": str(r.get("model", "")), "params": params, "epochs": epochs,
                             "kind": kind, "top1": mean, "top1_se": finite_or_none(se),
                             "seeds": int(top1.notna().sum())})
    return rows


def _settings_identity(text: str) -> str:
    """A record's settings as canonical JSON without the keys that name its checkpoint (the key
    records are grouped by); text that is not a JSON object (written by hand) is kept as one value."""
    try:
        settings = json.loads(text) if text else {}
    except ValueError:
        settings = text
    if not isinstance(settings, dict):
        settings = {"settings": text}
    return json.dumps({k: v for k, v in settings.items() if k not in _WHICH_CHECKPOINT}, sort_keys=True)


def _settings_labels(identities: list[str]) -> list[str]:
    """'key=value, ...' of the settings in which one kind's records differ ('' when they do not)."""
    parsed = [json.loads(i) for i in identities]
    keys = sorted({k for p in parsed for k in p})
    differ = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in parsed}) > 1]
    return [", ".join(f"{k}={p[k]}" for k in differ if k in p) for p in parsed]


def final_evals(evals: pd.DataFrame, kinds: Iterable[str] = SCALING_KINDS) -> list[dict]:
    """The newest result of each eval kind and settings of one run (its sweep point).

    A run evaluated several ways (a probe with pool=cls and with pool=avg, another probe schedule,
    other data) gives one row per kind and distinct settings; records that differ only in which
    checkpoint they evaluated count as one setting, the newest epoch standing for it. Rows: kind,
    top1 (%), eval_epoch, n_val (val images behind top1, None when not recorded) and settings (the
    keys in which this kind's rows differ, e.g. "pool=avg"; "" when the kind has one setting)."""
    if evals is None or evals.empty or not {"kind", "top1"} <= set(evals.columns):
        return []
    d = _numeric(evals_in_percent(evals), ["epoch", "top1", "n_val"]).dropna(subset=["top1"])
    if "epoch" in d:
        d = d.sort_values("epoch", kind="stable")
    raw = d["settings"].fillna("").astype(str) if "settings" in d else pd.Series("", index=d.index)
    identity = raw.map(_settings_identity)
    out = []
    for kind in kinds:
        k = d[d["kind"] == kind]
        if k.empty:
            continue
        newest = k.groupby(identity[k.index], sort=False).tail(1)  # the last of each setting
        labels = _settings_labels(list(identity[newest.index]))
        for (_, last), label in zip(newest.iterrows(), labels):
            out.append({"kind": kind, "top1": float(last["top1"]),
                        "eval_epoch": None if "epoch" not in k else finite_or_none(last.get("epoch")),
                        "n_val": finite_or_none(last.get("n_val")), "settings": label})
    return out


def _error_bars(points: pd.DataFrame) -> dict | None:
    """Plotly `error_y` of ±1 standard error per point (None where unknown: no bar), or None when no
    point has one."""
    se = [finite_or_none(v) for v in points.get("top1_se", pd.Series(dtype=float))]
    if not any(v is not None for v in se):
        return None
    return {"type": "data", "array": se, "visible": True}


def _point_label(point: pd.Series) -> str:
    """Hover text of a scaling point: run (model), its settings, ± SE and seeds when known."""
    text = f"{point['run']} ({point['model']})"
    settings = point.get("settings")
    if isinstance(settings, str) and settings:  # NaN where the table mixes runs and sweep points
        text += f" · {settings}"
    se = finite_or_none(point.get("top1_se"))
    if se is not None:
        seeds = finite_or_none(point.get("seeds"))
        text += f" · ±{se:.2f} SE" + (f" over {seeds:.0f} seeds" if seeds and seeds > 1 else "")
    return text


def _scaling_figure(table: pd.DataFrame, x: str, title: str, x_title: str, kinds: Iterable[str],
                    show_reference: bool, log_x: bool, label_reference: bool = True) -> go.Figure:
    fig = go.Figure()
    kinds = list(kinds)
    d = table[table["kind"].isin(kinds)].dropna(subset=[x]) if not table.empty else table
    for kind in kinds:
        k = d[d["kind"] == kind].sort_values(x) if not d.empty else d
        if k.empty:
            continue
        fig.add_trace(go.Scatter(
            x=k[x], y=k["top1"], mode="lines+markers", name=f"your runs · {KIND_LABELS.get(kind, kind)}",
            text=[_point_label(r) for _, r in k.iterrows()], error_y=_error_bars(k),
            hovertemplate="%{text}<br>" + x_title + ": %{x}<br>top-1: %{y:.2f}%<extra></extra>"))
    if show_reference:
        for col, label in (("finetune", "fine-tune"), ("linprobe", "linear probe")):
            fig.add_trace(go.Scatter(
                x=PAPER_REFERENCE[x], y=PAPER_REFERENCE[col],
                mode="markers+text" if label_reference else "markers",
                name=f"{PAPER_LABEL} · {label}", text=PAPER_REFERENCE["model"], textposition="top center",
                marker={"symbol": "star", "size": 12}, line={"dash": "dot"},
                hovertemplate="%{text}<br>" + x_title + ": %{x}<br>top-1: %{y:.1f}%<extra>paper</extra>"))
    if not fig.data:
        return empty_figure("No sweep results yet: runs need logged evaluations "
                            "(tick 'paper reference points' to see the paper's numbers).", title)
    _layout(fig, title, height=420)
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(title=x_title, type="log" if log_x else "linear")
    fig.update_yaxes(title="top-1 accuracy (%)")
    return fig


def accuracy_vs_params_figure(table: pd.DataFrame, kinds=("linprobe", "knn", "finetune"),
                              show_reference: bool = False) -> go.Figure:
    """Final accuracy of each run against its encoder's parameter count (log x)."""
    return _scaling_figure(table, "params", "Accuracy vs encoder parameters", "encoder parameters",
                           kinds, show_reference, log_x=True)


def accuracy_vs_epochs_figure(table: pd.DataFrame, kinds=("linprobe", "knn", "finetune"),
                              show_reference: bool = False) -> go.Figure:
    """Final accuracy of each run against the pretraining epochs it had (log x)."""
    # the paper's three models all sit at 1600 epochs: names only on hover, not overprinted
    return _scaling_figure(table, "epochs", "Accuracy vs pretraining epochs", "pretraining epochs",
                           kinds, show_reference, log_x=True, label_reference=False)


# ---------------------------------------------------------------------------------------- export
def figure_frame(fig: go.Figure) -> pd.DataFrame:
    """The data behind any figure as a long table: series, x, y (one row per plotted point), and
    y_se (the error bar's half-length) when a series draws error bars."""
    frames = []
    for trace in fig.data:
        xs = getattr(trace, "x", None)
        ys = getattr(trace, "y", None)
        if xs is None or ys is None:
            continue
        frame = pd.DataFrame({"series": trace.name or "", "x": list(xs), "y": list(ys)})
        err = getattr(getattr(trace, "error_y", None), "array", None)
        if err is not None:
            frame["y_se"] = pd.to_numeric(pd.Series(list(err), dtype=object), errors="coerce")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["series", "x", "y"])
    return pd.concat(frames, ignore_index=True)


def figure_csv(fig: go.Figure) -> str:
    """CSV text of a figure's data (what the Download CSV buttons serve)."""
    buf = io.StringIO()
    figure_frame(fig).to_csv(buf, index=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- images
def to_uint8_hwc(a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))  # CHW -> HWC
    if a.dtype != np.uint8:
        a = a.astype(np.float32)
        if a.max(initial=0) <= 1.0 + 1e-6:
            a = a * 255.0
        a = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=2)
    return a


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        return ImageFont.load_default()


def reconstruction_grid(recons: Mapping, *, max_images: int = 8, cell: int = 160,
                        title: str | None = None) -> np.ndarray:
    """Rows of original | masked | reconstruction | reconstruction + visible patches, one row per
    sampled image, labelled with its id and loss: the layout of the paper's figures.

    `recons` is what `Run.reconstructions(epoch, split)` returns: arrays `original`, `masked`,
    `reconstruction`, `pasted` (N x H x W x 3) and optionally `image_ids`, `loss` (N).
    """
    missing = [k for k in PANEL_NAMES if k not in recons]
    if missing:
        raise ValueError(f"reconstructions lack panels {missing}; have {sorted(recons)}")
    n = min(len(recons["original"]), max_images)
    if n == 0:
        raise ValueError("reconstructions hold no images")
    ids = list(recons.get("image_ids", range(n)))[:n] if recons.get("image_ids") is not None else list(range(n))
    losses = recons.get("loss")
    losses = np.asarray(losses, dtype=np.float64).reshape(-1) if losses is not None else None

    pad, label_w, head_h = 6, 150, 30 if title is None else 54
    W = label_w + 4 * (cell + pad) + pad
    H = head_h + n * (cell + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    f_small, f_head = _font(13), _font(15)
    if title:
        draw.text((pad, 6), title, fill=(20, 20, 20), font=_font(17))
    for j, panel in enumerate(("original", "masked", "reconstruction", "recon. + visible")):
        draw.text((label_w + pad + j * (cell + pad), head_h - 22), panel, fill=(40, 40, 40), font=f_head)
    for i in range(n):
        y = head_h + pad + i * (cell + pad)
        label = f"image {ids[i]}"
        draw.text((pad, y + cell // 2 - 18), label, fill=(20, 20, 20), font=f_small)
        if losses is not None and i < len(losses) and np.isfinite(losses[i]):
            draw.text((pad, y + cell // 2 + 2), f"loss {losses[i]:.4f}", fill=(90, 90, 90), font=f_small)
        for j, panel in enumerate(PANEL_NAMES):
            img = Image.fromarray(to_uint8_hwc(recons[panel][i]))
            # nearest keeps patch edges crisp at CPU-scale resolutions (64 px, 8-px patches)
            img = img.resize((cell, cell), Image.NEAREST if img.width < cell else Image.BICUBIC)
            canvas.paste(img, (label_w + pad + j * (cell + pad), y))
    return np.asarray(canvas)


def reconstruction_losses(recons: Mapping) -> pd.DataFrame:
    """Per-image loss of one epoch's sampled reconstructions."""
    n = len(recons.get("original", []))
    ids = recons.get("image_ids")
    ids = list(ids) if ids is not None else list(range(n))
    loss = recons.get("loss")
    loss = list(np.asarray(loss, dtype=np.float64).reshape(-1)) if loss is not None else [None] * n
    mask = recons.get("mask")
    ratio = [float(np.asarray(m).mean()) for m in mask] if mask is not None else [None] * n
    return pd.DataFrame({"image_id": [str(i) for i in ids[:n]],
                         "loss": np.round(np.asarray(loss[:n], dtype=float), 4),
                         "mask_ratio": ratio[:n]})


def enlarge(img, size: int) -> np.ndarray:
    """Scale an image up to `size` px on its longer side, nearest-neighbour (patches stay crisp);
    images already that large are returned unchanged."""
    a = to_uint8_hwc(img)
    h, w = a.shape[:2]
    if max(h, w) >= size:
        return a
    k = size / max(h, w)
    return np.asarray(Image.fromarray(a).resize((round(w * k), round(h * k)), Image.NEAREST))
