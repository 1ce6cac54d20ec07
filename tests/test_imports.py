"""The packages' imports flow one way, bench -> methods, worlds -> rewards -> models, with no cycle, and no registered
method imports another (they share code through methods/toolkit/)."""

import ast
from pathlib import Path

import pytest

from methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "worlds", "rewards", "models")
MAY_IMPORT = {
    "bench": {"bench", "methods", "worlds", "rewards", "models"},
    "methods": {"methods", "rewards", "models"},
    "worlds": {"worlds", "rewards", "models"},
    "rewards": {"rewards", "models"},
    "models": {"models"},
}
REGISTERED = {f"methods.{method.__module__.rsplit('.', 1)[-1]}" for method in METHODS.values()}
COMPOSED = {"methods.pipeline": "methods"}
"""The one method that builds another: the pipeline's second stage is any reward-driven method of the registry."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(module: str) -> set[str]:
    """The project modules `module` imports, at module level or inside functions (each is a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            names = [n for n in names if n in MODULES] or [node.module]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_the_graph_sees_every_package_and_its_known_arrows():
    assert {m.split(".")[0] for m in MODULES} == set(PACKAGES) and set(MODULES) >= REGISTERED
    assert "methods.toolkit.policy_gradient" in GRAPH["methods.ddpo"] and "worlds" in GRAPH["bench.cell"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_one_way(module):
    package = module.split(".")[0]
    against = sorted(i for i in GRAPH[module] if i.split(".")[0] not in MAY_IMPORT[package])
    assert not against, f"{module} imports {against}: {package} may import only {sorted(MAY_IMPORT[package])}"


@pytest.mark.parametrize("module", sorted(REGISTERED))
def test_no_registered_method_imports_another(module):
    others = sorted((GRAPH[module] & (REGISTERED - {module})) | (GRAPH[module] & {"methods"} - {COMPOSED.get(module)}))
    assert not others, f"{module} imports {others}; shared code belongs in methods/toolkit/"


def test_no_import_cycle():
    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for nxt in GRAPH[module]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    # the registry imports every method; the pipeline reaches its second stage through the registry
    cycles = [c for m in sorted(GRAPH) if (c := cycle_from(m)) and not set(c) <= {"methods", *COMPOSED}]
    assert not cycles, f"import cycle: {' -> '.join(cycles[0])}"


def test_bench_reaches_a_world_only_through_its_registry_and_protocols():
    """A world is one package (worlds/<name>/: data, prompt language, build, rewards); the harness asks it through
    worlds/__init__.py and worlds/base.py only, so a world added from outside needs nothing from bench."""
    for module in (m for m in MODULES if m.split(".")[0] == "bench"):
        inner = sorted(i for i in GRAPH[module] if i.startswith("worlds.") and i != "worlds.base")
        assert not inner, f"{module} imports {inner}: bench may import only worlds and worlds.base"
