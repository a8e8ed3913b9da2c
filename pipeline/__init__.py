"""Image folders in, batches out: FFCV conversion, the FFCV / DALI / torch loaders, the sample dataset.

``from pipeline import make_loader, IMAGENET_MEAN, IMAGENET_STD`` (see docs/INTERFACES.md).
"""
from .loaders import BACKENDS, Loader, make_loader
from .loaders.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["make_loader", "Loader", "BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD"]
