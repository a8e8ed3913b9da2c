"""The MAE inspector: a local Gradio app that reads run stores (never writes them).

`python -m inspector --runs runs/` or, from Python, `inspector.launch("runs", open_browser=False)`.
Views (`inspector.views`) are pure functions usable without Gradio.
"""
from __future__ import annotations

# `.app` (gradio, torch, the model) is imported inside the two entry points on purpose: loading it
# takes seconds, and `python -m inspector --help` imports this package before anything else.

def launch(runs_dir="runs", host: str = "127.0.0.1", port: int | None = None, open_browser: bool = False,
           **kwargs):
    """Serve the inspector on host:port, print its URL and block until Ctrl-C (block=False: return
    (demo, url) with the server running in a background thread)."""
    from .app import launch as _launch
    return _launch(runs_dir, host=host, port=port, open_browser=open_browser, **kwargs)


def build_app(runs_dir="runs", **kwargs):
    """The gradio.Blocks app for a runs folder, not launched."""
    from .app import build_app as _build
    return _build(runs_dir, **kwargs)


__all__ = ["launch", "build_app"]
