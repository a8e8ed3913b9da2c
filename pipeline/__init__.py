"""Image folders in, batches out: FFCV conversion, the FFCV / DALI / torch loaders, the sample dataset.

``from pipeline import make_loader, to_model_input, IMAGENET_MEAN, IMAGENET_STD`` (see
docs/INTERFACES.md).

The names are resolved lazily (PEP 562) so that ``python -m pipeline.sample`` /
``pipeline.build_ffcv`` / ``pipeline.beton`` start without importing torch and the loaders.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "make_loader": ".loaders",
    "Loader": ".loaders",
    "BACKENDS": ".loaders",
    "IMAGENET_MEAN": ".loaders.transforms",
    "IMAGENET_STD": ".loaders.transforms",
    "to_model_input": ".loaders.transforms",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
