"""The shape issue 13 asks of trainer/, read from its source: project imports at module top and
never behind ``except ImportError`` (a broken ``evals`` import used to switch online evals off
without a word), no function longer than 80 lines (``_train`` was 322), no ``nonlocal`` closures."""
import ast

from .test_model_pipeline_arrows import PROJECT, _catches_import_error, _imports, _modules

MAX_LINES = 80


def test_project_imports_are_at_module_top_and_never_optional():
    wrong = []
    for rel, tree in _modules("trainer"):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                wrong += [f"{rel}:{n.lineno} imports {top} inside {node.name}()"
                          for top, n in _imports(node, "trainer", rel) if top in PROJECT]
            if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
                wrong += [f"{rel}:{node.lineno} except ImportError"]
    assert not wrong, wrong


def test_functions_are_short_and_close_over_nothing():
    long = [f"{rel}:{n.lineno} {n.name}() {n.end_lineno - n.lineno + 1} lines" for rel, tree in _modules("trainer")
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, long
    closures = [f"{rel}:{n.lineno}" for rel, tree in _modules("trainer") for n in ast.walk(tree)
                if isinstance(n, ast.Nonlocal)]
    assert not closures, closures
