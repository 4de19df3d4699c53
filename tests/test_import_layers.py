"""Import layers of wmpo_core: no circle among its parts, and no part importing one above its own.

The layers (bottom to top) are written out in ``LAYERS``; ``docs/ARCHITECTURE`` says the same in words.
A part is a subpackage (``wmpo_core.policy``) or a top-level module (``wmpo_core.stats``); a
module of a ``commands`` package (one `wmpo` verb, or what a part's verbs share) sits in the top
layer whichever folder holds it, since a command may compose anything. Every import statement
counts, also one inside a function: a lazy import is still a dependency. Imports are read with the stdlib ``ast``; nothing is imported.

A known upward edge is allowed only when ``ALLOWED_UPWARD`` names it with the reason and what
removes it; an entry that no longer matches any import fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "wmpo_core"

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    # imports nothing from wmpo_core (or only from this layer)
    ("foundation", frozenset({"__init__", "config_io", "io_utils", "stats", "canary", "control"})),
    # bytes on disk and the simulator: episodes and bags, signed packages, MuJoCo tasks
    ("data, packages, simulator", frozenset({"data", "registry", "sim"})),
    # models (the policy is built from a package the registry verified)
    ("models", frozenset({"policy", "world_model"})),
    ("reward model", frozenset({"reward"})),  # trained on the world model's imagined replays
    ("reinforcement learning", frozenset({"rl"})),
    # the steps of a run defined once (collect, link data, world model, reward, GRPO, gate, export, push)
    ("pipeline", frozenset({"pipeline"})),
    # compositions of everything below: the `wmpo` verbs and the runs made of them
    ("commands and runs", frozenset({"loop", "demo", "robot_loop", "report", "cli", "commands"})),
)
TOP = len(LAYERS) - 1

# (importing module, imported module or package) -> why it is allowed for now and what removes it.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("wmpo_core.data.sim_bags", "wmpo_core.policy.loading"):
        "collecting episodes in the simulator runs a policy: an orchestration step living in data/; "
        "moves with the pipeline's collect step",
}

# Imports within one layer that close a circle, allowed for now: (importer, imported) -> reason.
ALLOWED_CIRCLE: dict[tuple[str, str], str] = {}


def core_modules(core: Path = CORE) -> dict[str, Path]:
    """Every module of the core by its dotted name."""
    root = core.parent
    out = {}
    for path in sorted(core.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The wmpo_core modules ``name`` imports, anywhere in the file (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from wmpo_core.data import topics` imports the module wmpo_core.data.topics
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "wmpo_core" or t.startswith("wmpo_core."))
    return found


def is_command(module: str) -> bool:
    """A module of a ``commands`` package (one `wmpo` verb, or what a part's verbs share), or the package."""
    return "commands" in module.split(".")[1:]


def part_of(module: str) -> str:
    """The part a module belongs to: ``wmpo_core.<sub>``, or the module itself for a command module."""
    parts = module.split(".")
    if is_command(module):
        return module
    return ".".join(parts[:2]) if len(parts) > 1 else "wmpo_core.__init__"


def layer_of(module: str) -> int:
    """Index into LAYERS (ValueError for a part no layer names)."""
    parts = module.split(".")
    if is_command(module):
        return TOP
    key = parts[1] if len(parts) > 1 else "__init__"
    for i, (_, members) in enumerate(LAYERS):
        if key in members:
            return i
    raise ValueError(f"{module}: its part {key!r} is in no layer of LAYERS")


def import_edges(core: Path = CORE) -> dict[tuple[str, str], None]:
    """(importer, imported) for every import between two different wmpo_core modules."""
    modules = core_modules(core)
    known = set(modules)
    edges: dict[tuple[str, str], None] = {}
    for name, path in modules.items():
        for target in sorted(imported_modules(name, path, known)):
            if target != name:
                edges[(name, target)] = None
    return edges


def upward_edges(edges, allowed=ALLOWED_UPWARD) -> list[str]:
    """Imports from a layer into one above it that ALLOWED_UPWARD does not name."""
    bad = []
    for src, dst in edges:
        if (src, dst) in allowed:
            continue
        if layer_of(dst) > layer_of(src):
            bad.append(f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})")
    return sorted(bad)


def part_cycles(edges, allowed=(*ALLOWED_UPWARD, *ALLOWED_CIRCLE)) -> list[list[str]]:
    """Strongly connected groups of more than one part (each a circle), with the imports that close them."""
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        if (src, dst) in allowed:
            continue
        a, b = part_of(src), part_of(dst)
        graph.setdefault(a, set())
        graph.setdefault(b, set())
        if a != b:
            graph[a].add(b)
    # Tarjan's algorithm, iterative so that depth is no concern
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def describe_cycle(group: list[str], edges) -> str:
    """The group and the module imports between its parts."""
    members = set(group)
    links = sorted(f"{s} -> {d}" for s, d in edges
                   if part_of(s) in members and part_of(d) in members and part_of(s) != part_of(d))
    return f"circle among {group}: " + "; ".join(links)


@pytest.fixture(scope="module")
def edges():
    return import_edges()


def test_every_core_module_has_a_layer():
    unplaced = []
    for name in core_modules():
        try:
            layer_of(name)
        except ValueError as exc:
            unplaced.append(str(exc))
    assert not unplaced, "place these in LAYERS (tests/test_import_layers.py):\n" + "\n".join(unplaced)


def test_no_core_module_imports_a_layer_above_its_own(edges):
    bad = upward_edges(edges)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circle_among_core_parts(edges):
    groups = part_cycles(edges)
    assert not groups, "\n".join(describe_cycle(g, edges) for g in groups)


def test_every_allowed_upward_import_still_exists_and_still_points_up(edges):
    stale = [f"{s} -> {d}" for s, d in ALLOWED_UPWARD if (s, d) not in edges or layer_of(d) <= layer_of(s)]
    assert not stale, "remove from ALLOWED_UPWARD (no longer imported, or not upward):\n" + "\n".join(stale)


def test_every_allowed_circle_import_still_exists(edges):
    present = set(core_modules())
    # an entry naming a module this tree does not hold yet (or no more) is not checked here
    stale = [f"{s} -> {d}" for s, d in ALLOWED_CIRCLE if {s, d} <= present and (s, d) not in edges]
    assert not stale, "remove from ALLOWED_CIRCLE (no longer imported):\n" + "\n".join(stale)


def test_policy_and_registry_do_not_import_each_other_both_ways(edges):
    """The registry knows bytes, hashes, manifests and signatures; only the policy side builds models."""
    registry_to_policy = sorted(f"{s} -> {d}" for s, d in edges
                                if part_of(s) == "wmpo_core.registry" and part_of(d) == "wmpo_core.policy"
                                and (s, d) not in ALLOWED_UPWARD)
    assert not registry_to_policy, registry_to_policy


def test_core_imports_no_ros_package():
    """wmpo_core runs on a workstation without ROS: the ROS package sits above it, never below."""
    offenders = []
    for name, path in core_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                offenders += [f"{name} imports {t}" for t in targets if t.split(".")[0] == "wmpo_ros"]
    assert not offenders, offenders


def _copy_core(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(CORE, tmp_path / "wmpo_core", ignore=shutil.ignore_patterns("__pycache__", "configs", "recipes"))
    return tmp_path / "wmpo_core"


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n\n" + line + "\n")


def test_the_checks_catch_a_circle_and_an_upward_import_in_a_copy(tmp_path):
    """The checks themselves on a broken copy of the core: they must not pass everything."""
    core = _copy_core(tmp_path)
    assert not part_cycles(import_edges(core)) and not upward_edges(import_edges(core))  # as the tree is
    # the old circle: the registry building a model again
    _append(core / "registry" / "verify.py", "def _shapes():\n    import wmpo_core.policy  # noqa: F401\n")
    edges = import_edges(core)
    assert part_cycles(edges) == [["wmpo_core.policy", "wmpo_core.registry"]]
    assert upward_edges(edges) == ["wmpo_core.registry.verify (data, packages, simulator) imports "
                                   "wmpo_core.policy (models)"]
    # a circle inside one layer: the world model reaching for the policy that (here) reaches back
    core = _copy_core(tmp_path / "second")
    _append(core / "world_model" / "vae.py", "from wmpo_core.policy import loading  # noqa: F401")
    _append(core / "policy" / "placement.py", "from ..world_model import vae  # noqa: F401")
    edges = import_edges(core)
    assert ("wmpo_core.policy.placement", "wmpo_core.world_model.vae") in edges  # relative import resolved
    assert part_cycles(edges) == [["wmpo_core.policy", "wmpo_core.world_model"]]
    assert not upward_edges(edges)  # same layer: only the circle check sees it
