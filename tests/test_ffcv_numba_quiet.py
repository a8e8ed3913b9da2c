"""The FFCV back end drops numba's harmless dispatcher-finalizer KeyError trace, and nothing else."""
from __future__ import annotations

import gc
import sys
import weakref

import pytest

from pipeline.loaders import ffcv_loader


def _raiser(filename: str, name: str):
    """A function defined as if in `filename` that raises KeyError, as numba's finalizer does."""
    scope: dict = {}
    exec(compile(f"def {name}():\n    raise KeyError('overload')\n", filename, "exec"), scope)
    return scope[name]


class _Owner:
    pass


def _die_with(callback) -> None:
    owner = _Owner()
    weakref.finalize(owner, callback)
    del owner          # the finalizer runs now; its exception goes to sys.unraisablehook
    gc.collect()


@pytest.fixture
def seen(monkeypatch):
    got = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: got.append(u.exc_type))
    ffcv_loader._quiet_numba_finalizer()
    ffcv_loader._quiet_numba_finalizer()      # idempotent: one filter, not a chain of them
    assert getattr(sys.unraisablehook, "_drops_numba_finalizer_keyerror", False)
    return got


def test_numba_dispatcher_finalizer_keyerror_is_dropped(seen):
    _die_with(_raiser("/venv/site-packages/numba/core/dispatcher.py", "finalizer"))
    assert seen == []


@pytest.mark.parametrize("filename, name", [
    ("/venv/site-packages/numba/core/dispatcher.py", "other"),     # another function of numba
    ("/work/project/dispatcher.py", "finalizer"),                   # someone else's finalizer
])
def test_every_other_unraisable_still_reaches_the_previous_hook(seen, filename, name):
    _die_with(_raiser(filename, name))
    assert seen == [KeyError]


def test_other_exception_types_from_numba_finalizer_still_reach_the_previous_hook(seen):
    scope: dict = {}
    exec(compile("def finalizer():\n    raise RuntimeError('x')\n",
                 "/venv/site-packages/numba/core/dispatcher.py", "exec"), scope)
    _die_with(scope["finalizer"])
    assert seen == [RuntimeError]
