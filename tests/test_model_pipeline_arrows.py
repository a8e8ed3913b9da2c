"""DESIGN.md's arrows for `model` and `pipeline`, read from their source (issue 13): neither imports
a package downstream of it (`pipeline` reached `runstore` for its lock and atomic write before
`common` existed), and no import of this project's modules hides inside a function or behind an
`except ImportError`, where a breakage turns into a silent switch-off."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT = {"common", "model", "pipeline", "trainer", "evals", "inspector", "runstore", "experiments",
           "benchmarks"}
# what each package may import of the project
ALLOWED = {"model": {"common", "model"}, "pipeline": {"common", "pipeline"}}
# files allowed to import project modules inside functions (none left: pipeline's project imports
# moved to module top; FFCV and DALI, third-party, stay lazy where used)
NOT_YET_SWITCHED: set[str] = set()


def _imports(tree: ast.AST, package: str, rel: str):
    """(top-level project package, node) of every import in a module, at any depth."""
    parts = rel.removesuffix(".py").split("/")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: resolve against this file's package
                base = parts[:-1] if node.level == 1 else parts[:-node.level]
                yield (base or [package])[0], node
            elif node.module:
                yield node.module.split(".")[0], node


def _modules(package: str):
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        yield rel, ast.parse(path.read_text(encoding="utf-8"), filename=rel)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_arrows(package):
    wrong = [f"{rel}:{node.lineno} imports {top}" for rel, tree in _modules(package)
             for top, node in _imports(tree, package, rel)
             if top in PROJECT and top not in ALLOWED[package]]
    assert not wrong, wrong


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_project_imports_are_at_module_top_and_never_optional(package):
    wrong = []
    for rel, tree in _modules(package):
        if rel in NOT_YET_SWITCHED:
            continue
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                wrong += [f"{rel}:{n.lineno} imports {top} inside {fn.name}()"
                          for top, n in _imports(fn, package, rel) if top in PROJECT]
            if isinstance(fn, ast.Try) and any(_catches_import_error(h) for h in fn.handlers):
                wrong += [f"{rel}:{n.lineno} imports {top} under except ImportError"
                          for top, n in _imports(ast.Module(body=fn.body, type_ignores=[]), package, rel)
                          if top in PROJECT]
    assert not wrong, wrong


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)
