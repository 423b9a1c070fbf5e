"""The import graph of rlaif/, read with ``ast`` (no module is imported): no circle, and the layers of DESIGN.md §1.

Every import counts — module-level and inside functions — except those under ``if TYPE_CHECKING:``, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rlaif"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can run: the whole tree minus the bodies of ``if TYPE_CHECKING:`` (their ``else`` runs)."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _targets(module: str, node: ast.AST) -> list[str]:
    """The rlaif modules an import statement names (``from pkg import sub`` names ``pkg.sub`` when that is a
    module, else ``pkg``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        found = {target for node in _runtime_nodes(tree) for target in _targets(module, node)}
        graph[module] = {target for target in found if target in MODULES and target != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that ends where it starts, or None."""
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        path, on_path, stack = [root], {root}, [iter(sorted(graph[root]))]
        while stack:
            target = next(stack[-1], None)
            if target is None:
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                stack.pop()
                continue
            if target in on_path:
                return path[path.index(target) :] + [target]
            if target not in done:
                path.append(target)
                on_path.add(target)
                stack.append(iter(sorted(graph[target])))
    return None


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_import_circle_inside_rlaif():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


# DESIGN.md §1, bottom to top: a module imports only its own layer and those below it. Everything not listed
# (rlaif.config, schema, formats, models, registry, templates, secrets, memory_plan, ...) is the floor, layer 0.
# train sits beside steps: the dataset on disk or on the Hub is the only contract between the two halves.
LAYERS = {
    "rlaif.backends": 1,
    "rlaif.report": 1,  # reads run files (floor only), so rlaif.train.cli can write a report
    "rlaif.steps": 2,
    "rlaif.train": 2,
    "rlaif.pipeline": 3,
    "rlaif.loop": 4,
    "rlaif.judge_eval_cli": 4,  # a command module beside the loop: uses pipeline, registered by cli
    "rlaif.verify_cli": 4,  # `rlaif verify`: a command module, registered by cli
    "rlaif.cli": 5,
}


def _layer(module: str) -> tuple[str, int]:
    return next(((name, rank) for name, rank in LAYERS.items() if _under(module, name)), ("floor", 0))


def test_every_import_points_down_the_layers():
    wrong = []
    for module, targets in import_graph().items():
        (layer, rank) = _layer(module)
        for target in sorted(targets):
            (other, other_rank) = _layer(target)
            if other_rank > rank or (other_rank == rank and other != layer):
                wrong.append(f"{module} ({layer}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_train_reaches_backends_only_through_the_protocol():
    # Generation for rollouts comes through rlaif.backends.base (the protocol, its registry, shared helpers):
    # an engine module is built by registry name or handed in, never imported by train.
    reached = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _under(module, "rlaif.train")
        for target in targets
        if _under(target, "rlaif.backends") and target != "rlaif.backends.base"
    )
    assert not reached, reached


def test_the_walk_sees_function_level_imports_and_skips_type_checking_blocks():
    graph = import_graph()
    assert "rlaif.train.rl.ppo" in graph["rlaif.train.recipes"]  # imported inside recipes.ppo()
    assert "rlaif.train.rl.rollout" not in graph["rlaif.train.rl.shared_base"]  # under TYPE_CHECKING only
    cycle = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycle == ["a", "b", "c", "a"]
