"""The package layout: data flows one way, no import circle, Ray behind one boundary.

Every ``import`` in ``sah/`` counts, at module level, inside functions and under
``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
SAH = ROOT / "sah"

# Lowest first. A module may import its own layer (without circles) and the layers below.
LAYERS: List[List[str]] = [
    ["sah.infra"],
    ["sah.mask", "sah.mask_rows", "sah.layer_types", "sah.context", "sah.estimator", "sah.patterns", "sah.objectives",
     "sah.resources", "sah.maskers", "sah.per_head_native", "sah.layer_config",
     "sah.attention", "sah.plotting"],
    ["sah.recording"],
    ["sah.evaluate", "sah.allocation", "sah.inmodel", "sah.speed"],
    ["sah.study"],
    ["sah.runs"],
    ["sah.tuning"],
    ["sah.cli"],
    ["sah"],  # the package itself: the public face, above everything
]


def _modules() -> Dict[str, Path]:
    out = {}
    for path in SAH.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The sah modules ``name`` imports (a ``from package import module`` counts the module)."""
    found: Set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    best, depth = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    return best


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_layer():
    assert [m for m in _modules() if _layer(m) < 0] == []


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_no_import_points_upward():
    upward = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
              if _layer(b) > _layer(a)]
    assert upward == []


def test_only_the_tuning_package_imports_ray():
    importers = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(name)
    assert importers and all(m.startswith("sah.tuning") for m in importers), sorted(importers)


def test_no_source_file_is_too_long_and_no_package_dominates():
    lines = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {n: c for n, c in lines.items() if c > 450} == {}
    total = sum(lines.values())
    packages: Dict[str, int] = defaultdict(int)
    for name, count in lines.items():
        parts = name.split(".")
        # sah/<package>/...; the top-level modules count as one group
        packages[parts[1] if len(parts) > 2 or _modules()[name].name == "__init__.py"
                 and len(parts) == 2 else "<top level>"] += count
    share = {p: round(c / total, 3) for p, c in packages.items() if c / total > 0.25}
    assert share == {}


def test_light_packages_import_neither_torch_nor_ray():
    code = ("import sys, sah, sah.study, sah.runs, sah.resources, sah.infra\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray'))\n"
            "print(heavy[:5])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
