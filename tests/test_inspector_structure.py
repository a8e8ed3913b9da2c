"""The inspector's shape as issue 13 asks it: every Gradio handler is a module-level function of
`inspector.app` (bound to the shared state with functools.partial), never a closure or a lambda; no
function longer than 80 lines; a broad `except` only with a comment saying why."""
from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path

import inspector.app as app
from inspector import build_app

PACKAGE = Path(app.__file__).resolve().parent
MAX_LINES = 80


def _sources():
    for path in sorted(PACKAGE.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        yield path.name, text, ast.parse(text, filename=path.name)


def test_handlers_are_module_functions_bound_with_partial(tmp_path):
    demo = build_app(tmp_path)
    handlers = [block_fn.fn for block_fn in demo.fns.values()]
    assert len(handlers) > 10
    for handler in handlers:
        fn = handler.func if isinstance(handler, functools.partial) else handler
        assert inspect.isfunction(fn) and fn.__closure__ is None, handler
        assert fn.__module__ == app.__name__ and getattr(app, fn.__name__) is fn, handler  # module level
        if isinstance(handler, functools.partial):
            assert handler.args[:1] == (demo.inspector_state,)


def test_no_function_is_longer_than_80_lines():
    long = [f"{name}:{node.lineno} {node.name}() {node.end_lineno - node.lineno + 1} lines"
            for name, _, tree in _sources() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, long


def test_broad_excepts_say_why():
    silent = []
    for name, text, tree in _sources():
        lines = text.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ExceptHandler):
                continue
            broad = node.type is None or (isinstance(node.type, ast.Name)
                                          and node.type.id in ("Exception", "BaseException"))
            if broad and "#" not in lines[node.lineno - 1]:
                silent.append(f"{name}:{node.lineno}")
    assert not silent, silent
