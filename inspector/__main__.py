"""`python -m inspector --runs DIR`: open the MAE inspector on a folder of runs."""
from __future__ import annotations

import argparse
import os
import sys

from .limits import DEFAULT_MAX_PARAMS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m inspector",
        description="Local web app to audit MAE runs: run table and status, reconstructions per epoch "
                    "(epoch slider), live re-masking of any image with a run's checkpoint, loss/lr/"
                    "accuracy/throughput curves with CSV export, and accuracy-vs-size/epochs scaling "
                    "plots with the MAE paper's reference points. Reads run stores, never writes them.")
    p.add_argument("--runs", default="runs", help="folder that holds the run folders (default: runs/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only; anything else warns: "
                        "there is no login)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: the first free one from 7860)")
    p.add_argument("--open", action="store_true", help="open the app in the default browser")
    p.add_argument("--live-max-params", type=float, default=DEFAULT_MAX_PARAMS,
                   help="largest model (parameters, e.g. 3.5e8) that live masking will load on CPU "
                        f"(default {DEFAULT_MAX_PARAMS:.0e})")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .app import launch  # here, not at the top: --help answers without loading gradio and torch
    try:
        launch(args.runs, host=args.host, port=args.port, open_browser=args.open,
               max_params=int(args.live_max_params))
    except OSError as exc:  # port taken, address not available
        where = f"{args.host}:{args.port}" if args.port else args.host
        print(f"error: cannot serve the inspector on {where}: {exc}. Pick another --port "
              "(or leave it out to take the first free one from 7860).", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
