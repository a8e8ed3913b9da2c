"""The inspector's only door to run stores: find runs, open them lazily, read them defensively.

Why a separate module: the app must (a) start in seconds on a folder with many runs, so nothing is
read until a run is shown, (b) never turn a user-supplied name into a path, so every name is looked up
in the list `runstore.list_runs` returned, and (c) keep working on half-written or crashed runs, so
every read is wrapped and degrades to an empty table plus a note. All reading goes through `runstore`;
this module never touches zarr itself and never writes. A run that cannot be read (bad YAML, a
corrupt store, a file linking outside the root) is one "broken" row naming the reason, and damage
the readers worked around (a corrupt chunk) is listed as the run's problems: the user sees both in
the UI, not only in the server log, and every other run keeps working.
"""
from __future__ import annotations

import html
import logging
import operator
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

import runstore
from common.paths import is_within

from .views import evals_in_percent

log = logging.getLogger(__name__)

# Column order of the runs table (the first thing a user sees).
SUMMARY_COLUMNS = [
    "name", "status", "model", "dataset", "epochs", "last_loss",
    "best_linprobe", "best_knn", "images_per_s", "params", "problems",
]


TERMINAL = ("finished", "crashed", "preempted")
BROKEN = "broken"
# reads whose failure makes a run "broken" (reconstructions are optional and reported where shown)
_ESSENTIAL = ("config", "status", "metrics", "evals", "checkpoints")
# what the catalog reads of a `runstore.Run`, by the name its problems are filed under
_READERS = {
    "config": operator.attrgetter("config"),
    "status": operator.attrgetter("status"),
    "status_info": runstore.Run.status_info,
    "metrics": runstore.Run.metrics,
    "evals": runstore.Run.evals,
    "checkpoints": runstore.Run.checkpoints,
    "reconstruction_epochs": runstore.Run.reconstruction_epochs,
    "reconstructions": runstore.Run.reconstructions,
}


def one_line(text: Any, limit: int = 300) -> str:
    """Error text for a table cell: whitespace collapsed (YAML errors span lines), shortened."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


class UnknownRunError(KeyError):
    """A run name that is not one of the runs found under the runs root."""


class RunCatalog:
    """Runs under one root, opened on demand and re-listed on refresh.

    `names()` is cheap after the first listing; `get(name)` only accepts names from that listing.
    """

    def __init__(self, root: str | os.PathLike, ttl: float = 3.0, summary_ttl: float = 60.0):
        self.root = Path(root).expanduser()
        self.ttl = ttl
        self.summary_ttl = summary_ttl
        self._cache: dict = {}
        self._summaries: dict = {}
        self._runs: dict[str, Any] = {}
        self._problems: dict[str, dict[str, tuple[bool, list[str]]]] = {}  # name -> what -> (failed, lines)
        self._errors: dict[tuple[str, str], str] = {}  # (name, what) -> why its last read failed
        self._lock = threading.Lock()
        self.error: str | None = None
        self.refresh()

    # ------------------------------------------------------------------ listing
    def refresh(self, forget: bool = False) -> list[str]:
        """Re-list the runs root (new runs appear, deleted ones go); `forget`: drop remembered
        summaries too (the Refresh button). Never raises."""
        if forget:
            self._summaries = {}
        runs: dict[str, Any] = {}
        self.error = None
        if self.root.is_dir():
            try:
                found = runstore.list_runs(self.root)
            except Exception as exc:  # noqa: BLE001 - whatever one broken store raises must not take the app down
                log.exception("listing runs under %s failed", self.root)
                self.error = f"Could not list runs under {self.root}: {exc}"
                found = []
            for run in found:
                name = self._name_of(run)
                if name:
                    runs[name] = run
        with self._lock:
            self._runs = runs
            self._cache.clear()
            self._problems = {n: p for n, p in self._problems.items() if n in runs}
        return self.names()

    def _name_of(self, run: runstore.Run) -> str:
        """A run's name: its folder relative to the root (sweeps nest runs, and two sweeps may both
        hold a `run1`); the run's own name when the root itself is the run."""
        try:
            rel = run.path.resolve().relative_to(self.root.resolve())
        except ValueError:  # list_runs never leaves the root; a name is still better than none
            return run.name
        return rel.as_posix() if rel.parts else run.name

    def sweeps(self) -> dict[str, Path]:
        """Sweep folders (runstore sweep tables) at the root, one or two levels down: name -> path."""
        found: dict[str, Path] = {}
        if not self.root.is_dir():
            return found
        root = self.root.resolve()
        try:
            dirs = [root] + sorted(c for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError as exc:
            log.warning("listing sweeps under %s failed: %s", self.root, exc)
            return found
        for d in dirs:
            if not is_within(d, root):  # a link out of the runs root: never followed
                continue
            try:
                sweeps = runstore.list_sweeps(d)
            except (OSError, ValueError) as exc:  # one unreadable folder must not hide the others
                log.warning("listing sweeps under %s failed: %s", d, exc)
                continue
            for sw in sweeps:
                real = Path(sw).resolve()
                if not is_within(real, root):
                    continue
                rel = real.relative_to(root).as_posix()
                found.setdefault(rel if rel != "." else real.name, real)
        return found

    def sweep_table(self, name: str) -> pd.DataFrame:
        """A listed sweep's table (one row per point), or an empty frame; unknown names raise."""
        sweeps = self.sweeps()
        if name not in sweeps:
            raise UnknownRunError(f"no sweep named {name!r} under {self.root}")
        try:
            return runstore.sweep(sweeps[name])
        except Exception as exc:  # noqa: BLE001 - a damaged sweep table is an empty plot, not a dead app
            log.warning("sweep %s: reading failed: %s", name, exc)
            return pd.DataFrame()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    def empty_message(self) -> str | None:
        """A helpful note when there is nothing to show, else None."""
        if self.error:
            return self.error
        if not self.root.exists():
            return (f"The runs folder `{self.root}` does not exist yet. Train a run first, e.g. "
                    "`python -m trainer.pretrain --config configs/demo.yaml`, or point the inspector at "
                    "another folder with `--runs DIR`.")
        if not self.root.is_dir():
            return f"`{self.root}` is not a folder. Pass the folder that holds your runs with `--runs DIR`."
        if not self.names():
            return (f"No runs found under `{self.root}` yet. A run is a folder with `config.yaml` and its "
                    "zarr stores; start one with `python -m trainer.pretrain --config configs/demo.yaml` "
                    "and press Refresh.")
        return None

    def get(self, name: str):
        """The Run for a listed name. Raises UnknownRunError for anything else (no path joining)."""
        with self._lock:
            run = self._runs.get(name)
        if run is None:
            raise UnknownRunError(f"no run named {name!r} under {self.root}")
        return run

    def valid(self, names: Iterable[str] | str | None) -> list[str]:
        """Keep only listed names, in the given order (used for every UI selection)."""
        if names is None:
            return []
        if isinstance(names, str):
            names = [names]
        known = set(self.names())
        return [n for n in names if isinstance(n, str) and n in known]

    # ------------------------------------------------------------------ reads
    def _read(self, name: str, what: str, *args, default: Any = None):
        """`_READERS[what](run, *args)` (`default` if it fails), remembered for `ttl` seconds: one
        refresh renders several views from the same tables, and a long-lived app must still follow
        a run that is training."""
        run = self.get(name)
        key = (name, what, args)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        failed, lines = False, []
        try:
            value = _READERS[what](run, *args)
            if isinstance(value, pd.DataFrame):  # damage the reader worked around (corrupt chunks)
                lines = [one_line(w) for w in value.attrs.get("runstore_warnings", [])]
        except Exception as exc:  # noqa: BLE001 - any damage to one run's files (zarr, YAML, JSON, codecs,
            # links out of the root) is shown as that run's problem; the rest of it and every other run still work
            log.warning("run %s: %s%s failed: %s", name, what, args, exc)
            value = default
            failed, lines = True, [one_line(exc)]
        lines = [self._relative(line) for line in lines]
        with self._lock:
            if what in _ESSENTIAL:
                self._problems.setdefault(name, {})[what] = (failed, lines)
            if failed:
                self._errors[(name, what)] = lines[0]
            else:
                self._errors.pop((name, what), None)
        with self._lock:
            if len(self._cache) > 512:
                self._cache.clear()
            self._cache[key] = (now, value)
        return value

    def _relative(self, text: str) -> str:
        """Paths in a message relative to the runs root: shorter, and the root is shown above anyway."""
        for prefix in {f"{self.root.resolve()}{os.sep}", f"{self.root.absolute()}{os.sep}"}:
            text = text.replace(prefix, "")
        return text

    def last_error(self, name: str, what: str) -> str | None:
        """Why the latest `what` read of this run failed (one line), or None."""
        with self._lock:
            return self._errors.get((name, what))

    def problems(self, name: str) -> tuple[bool, list[str]]:
        """(broken, lines) from the latest reads of this run: broken when an essential read failed."""
        with self._lock:
            entries = list(self._problems.get(name, {}).values())
        lines = list(dict.fromkeys(line for _, ls in entries for line in ls))
        return any(failed for failed, _ in entries), lines

    def problems_message(self, names: Iterable[str] | None = None) -> str | None:
        """A markdown note listing the runs with problems (for the banner), else None."""
        out = []
        for n in (names if names is not None else self.names()):
            broken, lines = self.problems(n)
            if lines:
                # escaped: YAML errors quote text such as '<stream end>' that markdown would eat as HTML
                out.append(f"- `{n}`{' (broken)' if broken else ''}: " + html.escape("; ".join(lines)))
        if not out:
            return None
        return "**Some runs could not be read completely** (the rest of each run is shown):\n" + "\n".join(out)

    def config(self, name: str) -> dict:
        cfg = self._read(name, "config")
        return cfg if isinstance(cfg, dict) else {}

    def status(self, name: str) -> str:
        return self._read(name, "status") or "unknown"

    def metrics(self, name: str) -> pd.DataFrame:
        return self._read(name, "metrics", default=pd.DataFrame())

    def evals(self, name: str) -> pd.DataFrame:
        return self._read(name, "evals", default=pd.DataFrame())

    def checkpoints(self, name: str) -> list[dict]:
        """Checkpoints of a run whose files exist inside the run's folder (others are not offered)."""
        rows = self._read(name, "checkpoints", default=pd.DataFrame()).to_dict("records")
        run_dir = self.run_dir(name)
        out = []
        for row in rows:
            p = Path(row["path"])  # absolute: Run.checkpoints resolves the index's relative paths
            if not is_within(p, run_dir):
                log.warning("run %s: checkpoint %s lies outside the run folder; ignored", name, p)
                continue
            if p.is_file():
                out.append({**row, "path": str(p)})
        return out

    def run_dir(self, name: str) -> Path:
        return self.get(name).path

    def reconstruction_epochs(self, name: str, split: str) -> list[int]:
        return self._read(name, "reconstruction_epochs", split, default=[])

    def reconstructions(self, name: str, epoch: int, split: str) -> dict | None:
        """One epoch's reconstructions, or None when they cannot be read (`last_error` says why)."""
        return self._read(name, "reconstructions", int(epoch), split)

    def summary(self, name: str) -> dict:
        """One row of the runs table, derived from config, status, metrics and evals as
        `Run.summary()` does, but from the catalog's cached reads, so each store is read once and a
        failed read is filed as the run's problem."""
        s = summarize(name, self.config(name), self.status(name), self.metrics(name), self.evals(name),
                      self._read(name, "status_info", default={}))
        broken, lines = self.problems(name)
        if broken:
            s["status"] = BROKEN
        s["problems"] = "; ".join(lines)
        return s

    def summaries(self, names: Iterable[str] | None = None) -> list[dict]:
        """Summaries of many runs. Finished/crashed runs are remembered until their status file
        changes (for `summary_ttl` s at most: eval CLIs may still append to a finished run; the
        Refresh button forgets them), and the others are read a few at a time (zarr reads mostly wait
        on I/O)."""
        names = self.valid(names) if names is not None else self.names()
        now = time.monotonic()
        out: dict[str, dict] = {}
        todo = []
        for n in names:
            sig = self._terminal_signature(n)
            hit = self._summaries.get(n)
            if sig is not None and hit is not None and hit[0] == sig and now - hit[2] < self.summary_ttl:
                out[n] = hit[1]
            else:
                todo.append((n, sig))
        if todo:
            with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
                for (n, sig), s in zip(todo, pool.map(self.summary, [n for n, _ in todo])):
                    out[n] = s
                    if sig is not None and s.get("status") in TERMINAL:
                        self._summaries[n] = (sig, s, now)
        return [out[n] for n in names]

    def _terminal_signature(self, name: str):
        """(path, mtime, size) of the run's status file: unchanged means a finished run is unchanged."""
        d = self.run_dir(name)
        try:
            st = (d / "status.json").stat()
        except OSError:
            return None
        return (str(d), st.st_mtime_ns, st.st_size)


# ---------------------------------------------------------------------------------------------
def summarize(name: str, cfg: dict, status: str, metrics: pd.DataFrame, evals: pd.DataFrame,
              status_doc: dict | None = None) -> dict:
    """One row of the runs table: runstore's summary of the tables, accuracies in percent (the
    paper's unit), '?' for what is unknown. `status_doc` (status.json) gives the epochs a
    `budget_minutes` fixed, which are the run's planned epochs."""
    s = runstore.summarize(cfg, metrics, evals_in_percent(evals), status_doc)
    done, planned = s["epochs_done"], s["epochs_planned"]
    return {
        "name": name,
        "status": status,
        "model": s["model"] or "?",
        "dataset": s["dataset"] or "?",
        "epochs": f"{done if done is not None else 0}/{planned if planned is not None else '?'}",
        "epochs_done": done,
        "epochs_planned": planned,
        **{k: s[k] for k in ("last_loss", "best_linprobe", "best_knn", "images_per_s")},
        "params": None,
    }
