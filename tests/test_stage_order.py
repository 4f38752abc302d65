"""The stage order of DEVELOPERS.md, checked on the source: a module imports only from its own stage or an earlier
one, the shared bottom modules import no stage, and no module imports another in a cycle (TYPE_CHECKING imports
included: a cycle held together by them is still one)."""

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT


PACKAGE = REPO_ROOT / "opengrok_dagster"
# Dagster-free modules at the top of the package that every stage may use; they import no stage.
FOUNDATION = ("layout", "publish", "sqlite", "settings", "redact", "offline_model")
# The pipeline's stages, bottom up: each may import the foundation, itself and the stages before it.
STAGES = (
    "tasks",
    "posts",
    "collect",
    "filtering",
    "masks",
    "distill",
    "training",
    "evaluation",
    "labelling",
    "offline",
)
# Packages of the orchestration layer above every stage, beside its modules at the top of the package (definitions,
# jobs, ...): they may import any stage, and no stage imports them.
ORCHESTRATION_PACKAGES = ("cli",)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The opengrok_dagster modules ``path`` imports: ``from package import module`` names the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("opengrok_dagster."))
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("opengrok_dagster")
        ):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & known
            found.update(submodules or {node.module})
    return found & known


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) for name, path in found.items()}


def layer(module: str) -> tuple[str, int] | None:
    """("foundation", -1), (stage, its index), or None for the orchestration modules above every stage."""
    part = module.split(".")[1] if "." in module else ""
    if part in FOUNDATION:
        return "foundation", -1
    if part in STAGES:
        return part, STAGES.index(part)
    return None


def against_the_order(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for source, targets in graph.items():
        if layer(source) is None:
            continue
        for target in targets:
            if layer(target) is None or layer(target)[1] > layer(source)[1]:
                wrong.append(f"{source} -> {target}")
    return sorted(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (or a module importing itself)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
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
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_stage_package_is_in_the_order():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(STAGES) | set(ORCHESTRATION_PACKAGES)


def test_no_import_runs_against_the_stage_order():
    assert against_the_order(import_graph()) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_see_what_they_look_for():
    graph = {
        "opengrok_dagster.posts.sources": {"opengrok_dagster.evaluation.runner"},
        "opengrok_dagster.evaluation.runner": {"opengrok_dagster.tasks.specs", "opengrok_dagster.cli"},
        "opengrok_dagster.layout": {"opengrok_dagster.tasks.specs"},
        "opengrok_dagster.collect.store": {"opengrok_dagster.collect.client"},
        "opengrok_dagster.collect.client": {"opengrok_dagster.collect.budget"},
        "opengrok_dagster.collect.budget": {"opengrok_dagster.collect.store"},
        "opengrok_dagster.cli": {"opengrok_dagster.evaluation.runner"},
    }
    assert against_the_order(graph) == [
        "opengrok_dagster.evaluation.runner -> opengrok_dagster.cli",
        "opengrok_dagster.layout -> opengrok_dagster.tasks.specs",
        "opengrok_dagster.posts.sources -> opengrok_dagster.evaluation.runner",
    ]
    assert cycles(graph) == [
        ["opengrok_dagster.cli", "opengrok_dagster.evaluation.runner"],
        ["opengrok_dagster.collect.budget", "opengrok_dagster.collect.client", "opengrok_dagster.collect.store"],
    ]


def test_a_type_checking_import_counts(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from opengrok_dagster.collect import store\n"
    )
    assert imports_of(sample, {"opengrok_dagster.collect.store", "opengrok_dagster.collect"}) == {
        "opengrok_dagster.collect.store"
    }
