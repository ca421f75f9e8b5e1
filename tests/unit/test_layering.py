"""The package's layering: who may import whom, and no import circles.

Reads every module's imports with ``ast`` (function-level imports included), so it checks the
code as written, not what happens to be imported at run time. A new module must be placed in a
layer here before this test passes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "reprlab"

# Layers from the top down, one package group each; a module may import from its own layer and
# the layers below it, except where FORBIDDEN says otherwise.
LAYERS = {
    "entry": {"reprlab.cli", "reprlab.__main__", "reprlab"},
    "runners": {"reprlab.analyses"},  # one runner per analysis and the shared runner modules
    "api": {"reprlab.api"},  # the public functions a notebook calls; runners call them too
    "glue": {"reprlab.run"},
    "methods": {"reprlab.methods"},
    "core": {"reprlab.core"},
    "files": {"reprlab.io"},
    "substrate": {"reprlab.models", "reprlab.data", "reprlab.runtime", "reprlab.errors"},
}
ORDER = list(LAYERS)
# Third-party packages a layer must never import.
FORBIDDEN_PACKAGES = {
    "methods": {"hydra", "omegaconf"},
    "core": {"hydra", "omegaconf"},
    "files": {"hydra", "omegaconf"},
    "substrate": {"hydra", "omegaconf"},
}
# Layers below a layer that it still must not import: computation never sees files.
FORBIDDEN_LAYERS = {"methods": {"files"}, "core": {"files"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    best = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[1])
            ):
                best = (layer, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")
    return best[0]


def imports_of(module: str, path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def internal_edges() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from reprlab.x import y``: x, or x.y when
    y is itself a module)."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        targets = set()
        for name in imports_of(module, path):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name != "reprlab":
                targets.add(name)
        edges[module] = targets
    return edges


def layer_problems(layer: str, targets: set[str], names: set[str]) -> list[str]:
    """What a module of ``layer`` importing package modules ``targets`` (and, in all,
    ``names``) must not import, sorted."""
    rank = ORDER.index(layer)
    problems = []
    for target in targets:
        target_layer = layer_of(target)
        if ORDER.index(target_layer) < rank:
            problems.append(f"{target} ({target_layer}, a layer above {layer})")
        elif target_layer in FORBIDDEN_LAYERS.get(layer, set()):
            problems.append(f"{target} ({target_layer}, which {layer} must never import)")
    forbidden = FORBIDDEN_PACKAGES.get(layer, set())
    problems += [f"third-party {name}" for name in names if name.split(".")[0] in forbidden]
    return sorted(problems)


@pytest.mark.parametrize("module", sorted(modules()))
def test_each_module_imports_only_what_its_layer_may(module: str) -> None:
    layer = layer_of(module)
    names = imports_of(module, modules()[module])
    problems = layer_problems(layer, internal_edges()[module], names)
    assert not problems, f"{module} ({layer}) imports: {', '.join(problems)}"


def test_runners_never_import_each_other() -> None:
    from reprlab.analyses import RUNNERS

    runners = set(RUNNERS.values())
    edges = internal_edges()
    crossing = {m: sorted(edges[m] & runners) for m in runners if edges[m] & runners}
    assert not crossing, f"runners importing runners: {crossing}"


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components of the module graph: every one is a single
    module (package ``__init__`` re-exports of their own submodules excepted)."""
    edges = internal_edges()
    for module, targets in edges.items():  # a package may re-export its own submodules
        edges[module] = {t for t in targets if not t.startswith(module + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The checker itself can fail: a methods module importing omegaconf is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from omegaconf import OmegaConf\n    from reprlab.io.store import x\n"
    )
    names = imports_of("reprlab.bad", bad)
    assert "omegaconf.OmegaConf" in names and "reprlab.io.store" in names
    problems = layer_problems("methods", {"reprlab.io.store", "reprlab.models"}, names)
    assert "reprlab.io.store (files, which methods must never import)" in problems
    assert "third-party omegaconf.OmegaConf" in problems
    assert not any("reprlab.models" in problem for problem in problems)
