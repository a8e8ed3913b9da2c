"""Where the real photographs the tests and CPU experiments use live: never copied into the repo.

The team's shared folder sits beside the checkout (``<repo>/../shared``, as on the development
machines and in CI); ``MAEPIPE_IMAGENETTE`` points elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def imagenette_dir() -> Path:
    """Imagenette (10 ImageNet classes, ``train/<wnid>/*.JPEG``, ``val/...``), read in place."""
    env = os.environ.get("MAEPIPE_IMAGENETTE")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "imagenette"
