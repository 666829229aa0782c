"""The architecture holds (docs/architecture.md): the package's import graph has no cycle,
every import follows the documented layer table, function-level imports say why, the
capability table in the docs is the code's, and the documented recipe for a new layer with
running statistics works as written."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from arraynorm._array_api import capability_table

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "arraynorm"
DOC = ROOT / "docs" / "architecture.md"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package by dotted name, with whether it is a package __init__."""
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _imports(mods: dict[str, tuple[Path, bool]]) -> dict[str, dict[str, list[int]]]:
    """module -> {imported package module: line numbers}, for every import statement,
    at module level or inside a function (a function-level import is an edge too: it is
    what used to hide the cycle between compose and the kernels)."""

    def owner(name: str) -> str:
        while name not in mods:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, dict[str, list[int]]] = {m: {} for m in mods}
    for mod, (path, is_pkg) in mods.items():
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                        if node.level else node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            for t in targets:
                if t.split(".")[0] == "arraynorm" and owner(t) != mod:
                    graph[mod].setdefault(owner(t), []).append(node.lineno)
    return graph


def _cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _layer_table() -> dict[str, int]:
    """The doc's layer table: module (or package) name -> layer number."""
    layers = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(\d+) [^|]*\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", m.group(2)):
                layers["arraynorm" if name == "arraynorm" else f"arraynorm.{name}"] = int(m.group(1))
    return layers


def _layer_of(mod: str, table: dict[str, int]) -> int | None:
    name = mod
    while name not in table and "." in name:
        name = name.rsplit(".", 1)[0]
    return table.get(name)


def test_the_package_import_graph_has_no_cycle():
    graph = _imports(_modules())
    assert "arraynorm._kernels.numpy_fused" in graph and graph["arraynorm.compose"]
    assert _cycles(graph) == []


def test_a_cycle_is_detected():
    """The detector itself, on the shape of the old compose ↔ kernels cycle."""
    graph = {"compose": {"kernels": [1]}, "kernels": {"fused": [1]}, "fused": {"compose": [1]},
             "partition": {}}
    assert _cycles(graph) == [["compose", "fused", "kernels"]]


def test_every_module_has_a_layer_and_imports_only_from_its_layer_or_below():
    table = _layer_table()
    assert len(set(table.values())) >= 8, table
    graph = _imports(_modules())
    unplaced = [m for m in graph if _layer_of(m, table) is None]
    assert unplaced == [], f"modules missing from the layer table in {DOC.name}: {unplaced}"
    upward = [f"{m} (layer {_layer_of(m, table)}) imports {t} (layer {_layer_of(t, table)}) "
              f"at line {lines[0]}"
              for m, targets in graph.items() for t, lines in targets.items()
              if _layer_of(t, table) > _layer_of(m, table)]
    assert upward == []


def test_function_level_imports_say_why():
    """Imports belong at module level; one inside a function (a heavy optional dependency)
    carries a comment on its line or the line before saying so."""
    silent = []
    for mod, (path, _) in _modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        here, before = lines[inner.lineno - 1], lines[inner.lineno - 2]
                        if "#" not in here and "#" not in before:
                            silent.append(f"{mod}:{inner.lineno}")
    assert silent == []


def test_the_documented_capability_table_is_the_codes():
    doc = DOC.read_text(encoding="utf-8")
    block = doc.split("<!-- capability-table -->")[1].split("<!-- /capability-table -->")[0]
    assert block.strip() == capability_table()


def _recipe() -> str:
    doc = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    return next(b for b in blocks if "class GroupRMSNorm" in b)


def test_the_documented_layer_recipe_runs_and_computes_group_rms_with_running_statistics():
    """Oracle: float64 NumPy — group RMS in training, the momentum average of the batch mean
    of each group's mean square, and x / sqrt(running + eps) per group in eval."""
    namespace: dict = {}
    exec(compile(_recipe(), str(DOC), "exec"), namespace)  # noqa: S102 - the doc's own code
    layer = namespace["GroupRMSNorm"](2, 6, eps=1e-5, momentum=0.25)
    rng = np.random.default_rng(0)
    running = np.ones(2)
    for _ in range(3):
        x = rng.standard_normal((5, 6, 4)) * np.array([1.0, 1, 1, 3, 3, 3])[:, None]
        y = layer(x)
        g = x.reshape(5, 2, 12)
        ms = (g ** 2).mean(axis=2, keepdims=True)
        np.testing.assert_allclose(y, (g / np.sqrt(ms + 1e-5)).reshape(x.shape), rtol=1e-12)
        running = 0.75 * running + 0.25 * ms[..., 0].mean(axis=0)
        dx = layer.backward(np.ones_like(y))
        assert dx.shape == x.shape and layer.grads["weight"].shape == (6,)
    np.testing.assert_allclose(layer.running_mean_square, running, rtol=1e-12)
    layer.eval()
    x = rng.standard_normal((3, 6, 4))
    want = x / np.sqrt(np.repeat(running, 3) + 1e-5)[None, :, None]
    np.testing.assert_allclose(layer(x), want, rtol=1e-12)
    assert layer.num_batches_tracked == 3
