"""The house's import rules, read from the code (function-level imports included).

Layers, lowest first: ``config``/``utils`` -> ``survival`` -> ``data``, ``models`` -> ``vqa``, ``tabgen`` ->
``train``, ``infer`` -> ``workflows`` -> ``cli``. A module imports only from its own layer or below;
``data`` and ``models`` never import each other, ``infer`` never imports ``train``; no import circle
between packages or between modules.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ctvl"
LAYER = {"config": 0, "utils": 0, "survival": 1, "data": 2, "models": 2, "vqa": 3, "tabgen": 3, "train": 4, "infer": 4,
         "workflows": 5, "cli": 6}
APART = [("data", "models"), ("models", "data"), ("infer", "train"), ("train", "infer")]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ctvl module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ctvl")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ctvl"):
            found |= {f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}") else node.module
                      for a in node.names}
    return found


def _is_module(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ctvl"


GRAPH = {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def test_every_area_has_a_layer():
    assert {_area(m) for m in GRAPH} - {"ctvl"} <= set(LAYER)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _area(m) != "ctvl"))
def test_no_import_runs_up_the_layers(module):
    area = _area(module)
    wrong = sorted(dep for dep in GRAPH[module] if _area(dep) != "ctvl"
                   and (LAYER[_area(dep)] > LAYER[area] or (area, _area(dep)) in APART))
    assert not wrong, f"{module} imports {wrong} (layer {area} -> higher or separate layers)"


def _cycle(edges: dict[str, set[str]]):
    """One cycle of a directed graph as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_circle_between_areas():
    edges = {}
    for module, deps in GRAPH.items():
        edges.setdefault(_area(module), set()).update(_area(d) for d in deps if _area(d) != _area(module))
    edges.pop("ctvl", None)
    assert _cycle(edges) is None


def test_no_circle_between_modules():
    edges = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()}
    assert _cycle(edges) is None


def _functions_calling(attr: str) -> set[str]:
    """``module.function`` of every function (outermost def) in ctvl that calls ``<something>.attr(...)``."""
    found = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if any(isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == attr
                   for c in ast.walk(node)):
                found.add(f"{_module_name(path)}.{node.name}")
    return found


def test_one_training_loop_calls_backward():
    """Stages 0-2 and encoder pre-training train in ``train.loop.fit``; the engines wrap ``backward``.

    The one other caller is the survival layer's scikit-learn-style DeepSurv/DeepHit baselines
    and treatment models (``survival.network_fit.fit_network``): the survival layer sits below ``train``
    and cannot use its loop.
    """
    callers = {f for f in _functions_calling("backward") if not f.startswith("ctvl.train.engine.")}
    assert callers == {"ctvl.train.loop.fit", "ctvl.survival.network_fit.fit_network"}
