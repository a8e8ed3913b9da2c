"""The Gradio Blocks app: Runs, Reconstructions, Live masking, Curves and Scaling tabs.

Why it is shaped like this: building the UI reads nothing (the page's load event and the Refresh
button fill it), so the server is up in seconds however many runs there are. Every handler takes run
names from the browser, which are checked against `RunCatalog` (the listing `runstore.list_runs` made)
before anything is read: a name is never turned into a path. Images leave as arrays (Gradio caches
them); CSV exports are written to a private temp folder. Nothing here writes a run store.

Layout: one builder per tab (`_runs_tab`, `_recons_tab`, ...) makes its components and returns them;
`_wire_*` connect them to handlers, module-level functions of (state, *inputs) bound with
`functools.partial`, so every handler can be called and tested without a browser.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pandas as pd

from model import encoder_param_count, kwargs_from_config

from . import views
from .catalog import RunCatalog, UnknownRunError
from .limits import REFRESH_SECONDS
from .live import DEFAULT_MAX_PARAMS, LiveError, ModelCache, load_image, mask_image, model_image_size, preprocess

log = logging.getLogger(__name__)

LIVE_DISPLAY_PX = 256
CURVES = ("loss", "lr", "evals", "throughput")
SCALING = ("params", "epochs")

CSS = """
#inspector-empty {border-left: 4px solid #f59e0b; padding: 8px 12px; background: #fffbeb}
.panel-img img {image-rendering: pixelated}
"""


class InspectorState:
    """Server-side objects shared by all browser sessions: the run catalog, the model cache, caches."""

    def __init__(self, runs_dir, max_params: int = DEFAULT_MAX_PARAMS):
        self.catalog = RunCatalog(runs_dir)
        self.models = ModelCache(max_params=max_params)
        self.csv_dir = Path(tempfile.mkdtemp(prefix="mae-inspector-csv-"))

    def run_or_error(self, name):
        try:
            return self.catalog.get(name)
        except UnknownRunError:
            raise gr.Error(f"Unknown run {name!r}. Press Refresh to re-list the runs folder.") from None

    def write_csv(self, key: str, fig) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80]
        path = self.csv_dir / f"{safe}.csv"
        path.write_text(views.figure_csv(fig))
        return str(path)

    def encoder_params(self, name: str) -> float | None:
        """Trainable encoder parameters of a run's model (the paper's x axis; the number the trainer
        and the sweep report), from its config on the meta device; None when it cannot be counted."""
        return run_encoder_params(self.catalog.config(name))


def run_encoder_params(cfg: dict) -> float | None:
    """`model.encoder_param_count` of a run's stored config; None for a config naming no model or
    whose `model` / `data` entry is not a section (a hand-edited config.yaml: the run is still listed)."""
    try:
        kwargs = kwargs_from_config(cfg)
    except ValueError as exc:
        log.info("cannot count parameters: %s", exc)
        return None
    model_name = (cfg.get("model") or {}).get("name")
    if not model_name:
        return None
    # JSON keys the cache; default=str: a value YAML parsed to a date or similar still gives a key
    return _count_encoder_params(json.dumps({"model": {"name": model_name, **kwargs}}, sort_keys=True, default=str))


@functools.lru_cache(maxsize=256)
def _count_encoder_params(key: str) -> float | None:
    """Encoder parameters of a run config (JSON); None for a model this version cannot build."""
    cfg = json.loads(key)
    try:
        try:
            return float(encoder_param_count(cfg))
        except TypeError:  # keywords of another version's constructor: count the preset itself
            return float(encoder_param_count({"model": {"name": cfg["model"]["name"]}}))
    except (KeyError, ValueError, TypeError) as exc:  # unknown model name, impossible sizes
        log.info("model %s: cannot count parameters: %s", cfg["model"]["name"], exc)
        return None


# ===================================================================================== handlers
def _refresh(state: InspectorState, selected, rec_name=None, live_name=None, forget=False):
    names = state.catalog.refresh(forget=forget)
    summaries = state.catalog.summaries(names)
    # nothing to show explains itself; otherwise runs that could not be read completely are named
    msg = state.catalog.empty_message() or state.catalog.problems_message(names)
    for s in summaries:
        if s.get("params") is None:
            s["params"] = state.encoder_params(s["name"])
    table = views.runs_table(summaries).rename(columns=views.RUNS_TABLE_HEADERS)
    selected = state.catalog.valid(selected) or names[-1:]
    running = any(s.get("status") == "running" for s in summaries)
    primary = selected[0] if selected else None
    rec_name = rec_name if rec_name in names else primary
    live_name = live_name if live_name in names else primary
    status = (f"{len(names)} run(s) under `{state.catalog.root}`"
              + (" · a run is training: auto-refresh every "
                 f"{REFRESH_SECONDS}s" if running else ""))
    return (
        gr.update(value=msg or "", visible=bool(msg)),
        table,
        gr.update(choices=names, value=selected),
        gr.update(choices=names, value=rec_name),
        gr.update(choices=names, value=live_name),
        gr.Timer(active=running),
        status,
    )


def _recon_epochs(state, name, split):
    return state.catalog.reconstruction_epochs(name, split) if name else []


def _recon_controls(state: InspectorState, name, split, epoch, follow=True):
    """Re-range the epoch slider for a run/split. It follows the newest epoch (a training run adds
    epochs) unless the user moved it back to an older one that still exists."""
    if not name:
        return gr.update(minimum=0, maximum=1, value=0, interactive=False), "No run selected."
    state.run_or_error(name)
    epochs = _recon_epochs(state, name, split)
    if not epochs:
        return (gr.update(minimum=0, maximum=1, value=0, interactive=False),
                f"Run `{name}` has no `{split}` reconstructions yet.")
    value = epoch if (not follow and epoch in epochs) else epochs[-1]
    lo, hi = epochs[0], epochs[-1]
    if lo == hi:
        hi = lo + 1  # a slider needs a range; values snap to logged epochs
    steps = np.diff(epochs)
    step = int(np.gcd.reduce(steps)) if len(steps) else 1
    return (gr.update(minimum=lo, maximum=hi, value=value, step=max(step, 1), interactive=len(epochs) > 1),
            f"{len(epochs)} epoch(s) with `{split}` reconstructions: {epochs[0]} ... {epochs[-1]}")


def _recon_view(state: InspectorState, name, split, epoch):
    if not name:
        return None, pd.DataFrame(), "No run selected."
    state.run_or_error(name)
    epochs = _recon_epochs(state, name, split)
    if not epochs:
        return None, pd.DataFrame(), f"Run `{name}` has no `{split}` reconstructions yet."
    e = min(epochs, key=lambda x: abs(x - float(epoch if epoch is not None else epochs[-1])))
    recons = state.catalog.reconstructions(name, e, split)
    if recons is None:
        why = state.catalog.last_error(name, "reconstructions")
        return None, pd.DataFrame(), (f"Reconstructions of epoch {e} could not be read: {why}" if why else
                                      f"Reconstructions of epoch {e} could not be read (still being written?).")
    try:
        grid = views.reconstruction_grid(recons, title=f"{name} · {split} · epoch {e}")
    except ValueError as exc:
        return None, pd.DataFrame(), f"Epoch {e}: {exc}"
    table = views.reconstruction_losses(recons)
    mean = pd.to_numeric(table["loss"], errors="coerce").mean()
    return grid, table, f"Epoch **{e}** ({split}): mean loss {mean:.4f} over {len(table)} image(s)."


def _curves(state: InspectorState, selected, x_axis, log_loss):
    names = state.catalog.valid(selected)
    metrics = {n: state.catalog.metrics(n) for n in names}
    evals = {n: state.catalog.evals(n) for n in names}
    x = x_axis or "step"
    figs = {
        "loss": views.loss_figure(metrics, x=x, log_y=bool(log_loss)),
        "lr": views.lr_figure(metrics, x=x),
        "evals": views.eval_figure(evals, ("linprobe", "linprobe_full", "knn", "finetune")),
        "throughput": views.throughput_figure(metrics, x=x),
    }
    csvs = [state.write_csv(f"{k}", figs[k]) for k in CURVES]
    return [figs[k] for k in CURVES] + csvs


ALL_RUNS = "all runs (newest evaluation of each setting)"


def _scaling_sources(state: InspectorState, current=None):
    choices = [ALL_RUNS] + [f"sweep: {n}" for n in state.catalog.sweeps()]
    return gr.update(choices=choices, value=current if current in choices else ALL_RUNS)


def _scaling(state: InspectorState, kinds, show_reference, source=ALL_RUNS):
    rows = []
    if source and source != ALL_RUNS and str(source).startswith("sweep: "):
        try:
            rows = views.sweep_scaling_rows(state.catalog.sweep_table(str(source)[len("sweep: "):]))
        except UnknownRunError:
            raise gr.Error(f"Unknown sweep {source!r}; press Refresh.") from None
    for name in (state.catalog.names() if not source or source == ALL_RUNS else []):
        s = state.catalog.summary(name)
        params = s.get("params") or state.encoder_params(name)
        epochs = s.get("epochs_done")
        for point in views.final_evals(state.catalog.evals(name)):
            rows.append({"run": name, "model": s.get("model"), "params": params,
                         "epochs": epochs, **point})
    table = views.scaling_table(rows)
    kinds = kinds or ["linprobe", "knn"]
    f1 = views.accuracy_vs_params_figure(table, kinds, bool(show_reference))
    f2 = views.accuracy_vs_epochs_figure(table, kinds, bool(show_reference))
    shown = table.copy()
    if not shown.empty:
        for col in ("top1", "top1_se"):
            shown[col] = pd.to_numeric(shown[col], errors="coerce").round(2)
        shown["params"] = [views.format_params(p) for p in shown["params"]]
    return f1, f2, shown, state.write_csv("scaling_params", f1), state.write_csv("scaling_epochs", f2)


def _ckpt_label(c: dict) -> str:
    parts = [Path(c["path"]).name]
    if c.get("epoch") is not None:
        parts.append(f"epoch {c['epoch']}")
    if c.get("step") is not None:
        parts.append(f"step {c['step']}")
    if c.get("tag"):
        parts.append(str(c["tag"]))
    return " · ".join(parts)


def _sample_choices(state: InspectorState, name) -> list[tuple[str, str]]:
    """Sampled images of a run's latest reconstructions: (label, "split:epoch:index")."""
    out = []
    for split in ("val", "train"):
        epochs = _recon_epochs(state, name, split)
        if not epochs:
            continue
        recons = state.catalog.reconstructions(name, epochs[-1], split)
        if not recons or "original" not in recons:
            continue
        ids = recons.get("image_ids")
        for i in range(len(recons["original"])):
            label = f"{split} image {ids[i] if ids is not None and i < len(ids) else i}"
            out.append((label, f"{split}:{epochs[-1]}:{i}"))
    return out


def _live_controls(state: InspectorState, name):
    if not name:
        return gr.update(choices=[], value=None), gr.update(choices=[], value=None), "No run selected."
    state.run_or_error(name)
    ckpts = state.catalog.checkpoints(name)
    ck_choices = [(_ckpt_label(c), Path(c["path"]).name) for c in ckpts]
    samples = _sample_choices(state, name)
    note = "" if ckpts else f"Run `{name}` has no checkpoint files yet."
    return (gr.update(choices=ck_choices, value=ck_choices[-1][1] if ck_choices else None),
            gr.update(choices=samples, value=samples[0][1] if samples else None), note)


def _live_image(state: InspectorState, name, upload, sample):
    """(PIL image, caption source) for live masking: the upload if there is one, else a sampled image."""
    if upload is not None:
        return load_image(upload), f"upload {Path(str(upload)).name}"
    if not sample:
        raise LiveError("Upload an image or pick a sampled one.")
    m = re.fullmatch(r"(train|val):(\d+):(\d+)", str(sample))
    if not m:
        raise LiveError("Unknown sample image; press Refresh.")
    split, epoch, idx = m.group(1), int(m.group(2)), int(m.group(3))
    recons = state.catalog.reconstructions(name, epoch, split)
    if recons is None or idx >= len(recons["original"]):
        raise LiveError("That sampled image is no longer available; press Refresh.")
    ids = recons.get("image_ids")
    source = f"{split} image {ids[idx] if ids is not None and idx < len(ids) else idx}"
    return load_image(views.to_uint8_hwc(recons["original"][idx])), source


def _live(state: InspectorState, name, ckpt_name, upload, sample, ratio_pct, sampler, seed):
    try:
        if not name:
            raise LiveError("Pick a run first.")
        state.run_or_error(name)
        ckpts = {Path(c["path"]).name: c["path"] for c in state.catalog.checkpoints(name)}
        if ckpt_name not in ckpts:
            raise LiveError("Pick one of the run's checkpoints.")
        model = state.models.get(ckpts[ckpt_name])
        img, source = _live_image(state, name, upload, sample)
        x = preprocess(img, model_image_size(model))
        res = mask_image(model, x, float(ratio_pct) / 100.0, sampler or "random", int(seed or 0))
    except LiveError as exc:
        raise gr.Error(str(exc)) from None
    # small CPU-scale images are enlarged (nearest: patch edges stay visible) for display only
    p = {k: views.enlarge(v, LIVE_DISPLAY_PX) for k, v in res.panels.items()}
    return p["original"], p["masked"], p["reconstruction"], p["pasted"], f"{source} · {res.caption()}"


def _recon_moved(state: InspectorState, name, split, epoch):
    """The slider moved: show that epoch, and follow new epochs only if it is at the newest."""
    epochs = _recon_epochs(state, name, split)
    return (*_recon_view(state, name, split, epoch), not epochs or epoch >= epochs[-1])


def _follow():
    """A new run or split was picked: its slider tracks the newest epoch again."""
    return True


def _on(fn, state: InspectorState, **fixed):
    """`fn` bound to the shared state as a Gradio handler (named after `fn` in the app's API list)."""
    handler = functools.partial(fn, state, **fixed)
    handler.__name__ = fn.__name__.lstrip("_")
    return handler


# ===================================================================================== layout
def _header() -> SimpleNamespace:
    with gr.Row(equal_height=True):
        gr.Markdown("## MAE inspector\nRuns, reconstructions, live masking, curves and scaling "
                    "from the run stores (read-only).")
        refresh = gr.Button("Refresh", variant="primary", scale=0, min_width=120, elem_id="refresh")
    return SimpleNamespace(refresh=refresh, status=gr.Markdown(elem_id="status"),
                           empty=gr.Markdown(visible=False, elem_id="inspector-empty"),
                           timer=gr.Timer(REFRESH_SECONDS, active=False))


def _runs_tab() -> SimpleNamespace:
    with gr.Tab("Runs", id="runs"):
        table = gr.Dataframe(label="Runs (status from each store's last write)",
                             interactive=False, wrap=True, elem_id="runs-table")
        selected = gr.CheckboxGroup(label="Show / overlay these runs in Curves", elem_id="run-select")
    return SimpleNamespace(table=table, selected=selected)


def _recons_tab() -> SimpleNamespace:
    with gr.Tab("Reconstructions", id="recons"):
        with gr.Row():
            run = gr.Dropdown(label="Run", elem_id="rec-run")
            split = gr.Radio(["val", "train"], value="val", label="Split", elem_id="rec-split")
            epoch = gr.Slider(0, 1, value=0, step=1, label="Epoch", elem_id="rec-epoch")
        note = gr.Markdown(elem_id="rec-note")
        img = gr.Image(label="original | masked | reconstruction | reconstruction + visible",
                       show_label=False, type="numpy", format="png", interactive=False,
                       elem_id="rec-grid", elem_classes="panel-img")
        loss = gr.Dataframe(label="Per-image loss", interactive=False, elem_id="rec-loss")
        follow = gr.State(True)  # per browser session: does the slider track the newest epoch?
    return SimpleNamespace(run=run, split=split, epoch=epoch, note=note, img=img, loss=loss, follow=follow,
                           ins=[run, split, epoch], view=[img, loss, note])


def _live_tab() -> SimpleNamespace:
    with gr.Tab("Live masking", id="live"):
        with gr.Row():
            run = gr.Dropdown(label="Run", elem_id="live-run")
            ckpt = gr.Dropdown(label="Checkpoint", elem_id="live-ckpt")
            sample = gr.Dropdown(label="Sampled image", elem_id="live-sample")
        with gr.Row():
            upload = gr.File(label="...or upload an image (JPEG/PNG, max 20 MiB)",
                             file_types=["image"], type="filepath", elem_id="live-upload")
            with gr.Column():
                ratio = gr.Slider(10, 90, value=75, step=5, label="Mask ratio (%)", elem_id="live-ratio")
                sampler = gr.Radio(["random", "block", "grid"], value="random", label="Sampler",
                                   elem_id="live-sampler")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="live-seed")
                go = gr.Button("Mask and reconstruct", variant="primary", elem_id="live-go")
        note = gr.Markdown(elem_id="live-note")
        with gr.Row():
            panels = [gr.Image(label=lbl, type="numpy", format="png", interactive=False,
                               elem_id=f"live-{key}", elem_classes="panel-img")
                      for key, lbl in (("original", "original"), ("masked", "masked input"),
                                       ("reconstruction", "reconstruction"), ("pasted", "reconstruction + visible"))]
    return SimpleNamespace(run=run, ckpt=ckpt, sample=sample, ratio=ratio, sampler=sampler, seed=seed, go=go,
                           note=note, ins=[run, ckpt, upload, sample, ratio, sampler, seed], outs=panels + [note])


def _curves_tab(selected) -> SimpleNamespace:
    with gr.Tab("Curves", id="curves"):
        with gr.Row():
            x_axis = gr.Radio(["step", "epoch"], value="step", label="x axis", elem_id="x-axis")
            log_loss = gr.Checkbox(False, label="log-scale loss")
        plots, downloads = [], []
        for key, label in (("loss", "Loss"), ("lr", "Learning rate"),
                           ("evals", "Linear probe / kNN vs epoch"), ("throughput", "Images/s and data wait")):
            plots.append(gr.Plot(label=label, elem_id=f"plot-{key}"))
            downloads.append(gr.DownloadButton(f"Download {label} CSV", size="sm", elem_id=f"csv-{key}"))
    return SimpleNamespace(x_axis=x_axis, log_loss=log_loss, ins=[selected, x_axis, log_loss],
                           outs=plots + downloads)


def _scaling_tab() -> SimpleNamespace:
    with gr.Tab("Scaling", id="scaling"):
        with gr.Row():
            kinds = gr.CheckboxGroup(["linprobe", "linprobe_full", "knn", "finetune"],
                                     value=["linprobe", "knn", "finetune"], label="Evaluations", elem_id="sc-kinds")
            source = gr.Dropdown([ALL_RUNS], value=ALL_RUNS, label="Points from", elem_id="sc-source")
            ref = gr.Checkbox(False, label="Show the MAE paper's ImageNet reference points (ViT-B/L/H)",
                              elem_id="sc-ref")
        outs = [gr.Plot(label="Accuracy vs parameters", elem_id="plot-sc-params"),
                gr.Plot(label="Accuracy vs epochs", elem_id="plot-sc-epochs"),
                gr.Dataframe(label="Points (newest evaluation of each run and setting; top1_se: ±1 standard "
                             "error, binomial on n_val images plus the seed spread)", interactive=False,
                             elem_id="sc-table")]
        with gr.Row():
            outs += [gr.DownloadButton("Download accuracy-vs-params CSV", size="sm"),
                     gr.DownloadButton("Download accuracy-vs-epochs CSV", size="sm")]
    return SimpleNamespace(kinds=kinds, source=source, ref=ref, ins=[kinds, ref, source], outs=outs)


def _wire_refresh(demo, state, head, runs, rec, live, curves, scaling) -> None:
    """Page load, the Refresh button and the training timer re-list the runs, then redraw every tab."""
    ins = [runs.selected, rec.run, live.run]
    outs = [head.empty, runs.table, runs.selected, rec.run, live.run, head.timer, head.status]
    quiet = {"show_progress": "hidden"}
    for trigger, fn in ((demo.load, _on(_refresh, state)), (head.refresh.click, _on(_refresh, state, forget=True)),
                        (head.timer.tick, _on(_refresh, state))):
        (trigger(fn, ins, outs, **quiet)
         .then(_on(_curves, state), curves.ins, curves.outs, **quiet)
         .then(_on(_scaling_sources, state), [scaling.source], [scaling.source], **quiet)
         .then(_on(_scaling, state), scaling.ins, scaling.outs, **quiet)
         .then(_on(_recon_controls, state), rec.ins + [rec.follow], [rec.epoch, rec.note], **quiet)
         .then(_on(_recon_view, state), rec.ins, rec.view, **quiet))


def _wire_tabs(state, runs, rec, live, curves, scaling) -> None:
    gr.on([runs.selected.input, curves.x_axis.change, curves.log_loss.change], _on(_curves, state),
          curves.ins, curves.outs)
    gr.on([scaling.kinds.change, scaling.ref.change, scaling.source.input], _on(_scaling, state),
          scaling.ins, scaling.outs)
    gr.on([rec.run.input, rec.split.input], _follow, None, rec.follow).then(
        _on(_recon_controls, state), rec.ins + [rec.follow], [rec.epoch, rec.note]).then(
        _on(_recon_view, state), rec.ins, rec.view)
    # input: while dragging (only the last pending one runs); release: pointer up or number typed
    gr.on([rec.epoch.input, rec.epoch.release], _on(_recon_moved, state), rec.ins, rec.view + [rec.follow],
          trigger_mode="always_last", show_progress="minimal")
    live.run.change(_on(_live_controls, state), [live.run], [live.ckpt, live.sample, live.note])
    gr.on([live.go.click, live.ratio.release, live.sampler.input, live.seed.submit], _on(_live, state),
          live.ins, live.outs)


def build_app(runs_dir="runs", *, max_params: int = DEFAULT_MAX_PARAMS) -> gr.Blocks:
    """The Blocks app for one runs folder. Reads nothing until a browser loads the page."""
    state = InspectorState(runs_dir, max_params=max_params)
    with gr.Blocks(title="MAE inspector", analytics_enabled=False) as demo:
        demo.inspector_state = state  # for tests and callers that want the catalog
        head = _header()
        with gr.Tabs():
            runs, rec, live = _runs_tab(), _recons_tab(), _live_tab()
            curves, scaling = _curves_tab(runs.selected), _scaling_tab()
        _wire_refresh(demo, state, head, runs, rec, live, curves, scaling)
        _wire_tabs(state, runs, rec, live, curves, scaling)
    return demo


# ===================================================================================== launch
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def bind_warning(host: str, port: int | None = None) -> str | None:
    """The warning to show when binding anything but this machine, else None."""
    if host in LOCAL_HOSTS:
        return None
    return (f"binding the inspector to {host}: anyone who can reach this machine on port {port or 7860} "
            "can browse your runs and checkpoints (there is no login). Use --host 127.0.0.1 to keep it local.")


def launch(runs_dir="runs", host: str = "127.0.0.1", port: int | None = None, open_browser: bool = False,
           *, block: bool = True, max_params: int = DEFAULT_MAX_PARAMS, quiet: bool = False):
    """Serve the inspector for `runs_dir` on host:port and print its URL.

    `block=False` returns at once with the server running in a thread (tests, notebooks, demos);
    returns (demo, url). Binding anything but localhost prints a warning: the app has no login.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    msg = bind_warning(host, port)
    if msg:
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)
    demo = build_app(runs_dir, max_params=max_params)
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, inbrowser=open_browser, share=False,
        prevent_thread_lock=True, quiet=True, show_error=True, ssr_mode=False,
        max_file_size="20mb", footer_links=[], theme=gr.themes.Default(), css=CSS,
        enable_monitoring=False, mcp_server=False, pwa=False)
    url = url or f"http://{host}:{demo.server_port}/"
    if not quiet:
        print(f"MAE inspector for {Path(runs_dir).resolve()} at {url}", flush=True)
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
    return demo, url
