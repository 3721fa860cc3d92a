"""The package's import structure, read from the source with `ast` (nothing is imported): no cycle
among `omniagent_jax` modules, counting imports inside functions too; the house layering
(media -> processing -> model -> engine -> agent -> train / eval / demo); the JAX-free rooms; and the
450-line limit on every file."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = "omniagent_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 450
JAX_FREE = ("agent", "media", "processing", "toy")
# The toy room is JAX-free (world, expert, tokenizer: numpy + PyAV) except its training pipeline package.
JAX_FREE_EXCEPT = ("omniagent_jax.toy.pipeline",)
JAX_LIBRARIES = {"jax", "jaxlib", "flax", "optax", "orbax"}
# A room may import only rooms of a lower or equal rank.
RANKS = {"media": 0, "processing": 1, "model": 2, "engine": 3, "agent": 4, "train": 5, "eval": 5, "demo": 5, "toy": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = all_modules()


def imported_names(path: Path) -> list[tuple[str, int]]:
    """Every absolute module name an import statement of `path` names (at any depth: function-level
    imports count), with its line. `from pkg import x` names the module `pkg.x` when there is one (the
    import system loads it whether or not `pkg` has finished initialising), else `pkg`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                out.append((submodule if submodule in MODULES else source, node.lineno))
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported omniagent_jax module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        for target, line in imported_names(path):
            if target in MODULES and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def all_cycles(graph: dict[str, dict[str, int]], limit: int = 20) -> list[list[str]]:
    """Cycles found one at a time, each then broken at its closing import, so one report lists them all."""
    graph = {k: dict(v) for k, v in graph.items()}
    cycles = []
    while len(cycles) < limit and (cycle := find_cycle(graph)):
        cycles.append(cycle)
        del graph[cycle[-2]][cycle[-1]]
    return cycles


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def test_cycle_finder_finds_cycles_and_accepts_a_dag():
    graph = {"a": {"b": 1}, "b": {"c": 1, "a": 2}, "c": {"a": 1}, "d": {"a": 1}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert all_cycles(graph) == [["a", "b", "a"], ["a", "b", "c", "a"]]
    assert find_cycle({"a": {"b": 1, "c": 1}, "b": {"c": 1}, "c": {}}) is None


def test_imports_resolve_to_modules_and_packages():
    graph = import_graph()
    # `from omniagent_jax.model.thinker import X` names the module; `from omniagent_jax import model`
    # names the subpackage; function-level imports count.
    assert {"omniagent_jax.model.thinker", "omniagent_jax.model.config"} <= set(graph["omniagent_jax.model"])
    assert "omniagent_jax.model.jax_checkpoint" in graph["omniagent_jax.policy_flags"]  # imported inside a function


def test_no_import_cycle():
    graph = import_graph()
    cycles = all_cycles(graph)
    report = ["  " + " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(c)) + f" -> {c[-1]}" for c in cycles]
    if cycles:
        why = "a submodule importing a name its own package re-exports closes one: import from the submodule itself"
        pytest.fail(f"import cycles ({why}):\n" + "\n".join(report))


def test_rooms_import_only_lower_rooms():
    bad = []
    for name, edges in import_graph().items():
        mine = room(name)
        for target, line in edges.items():
            theirs = room(target)
            if mine and theirs and RANKS[theirs] > RANKS[mine]:
                bad.append(f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports {target}")
    assert not bad, "imports against the layering media -> processing -> model -> engine -> agent -> train:\n" + "\n".join(bad)


@pytest.mark.parametrize("room_name", JAX_FREE)
def test_jax_free_rooms_import_no_jax(room_name):
    bad = []
    for name, path in MODULES.items():
        if room(name) != room_name or name.startswith(JAX_FREE_EXCEPT):
            continue
        for target, line in imported_names(path):
            if target.split(".")[0] in JAX_LIBRARIES:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_file_over_the_line_limit():
    lines = {str(p.relative_to(ROOT.parent)): len(p.read_text(encoding="utf-8").splitlines()) for p in MODULES.values()}
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
