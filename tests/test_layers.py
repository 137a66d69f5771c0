"""Imports flow one way (README, Layout): data -> model -> train -> tune -> report -> cli.

Every ``nanopet`` import of every module, at the top or inside a function, goes to its own layer or one below.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nanopet"
# lowest first; a module imports only from its own layer and the layers before it
LAYERS = [
    {"errors", "schema", "options"},  # the typed schema of the files users write, options files, the documented defaults
    {"data"},
    {"kernels", "model", "composition"},
    {"checkpoints", "runtime"},
    {"train", "loss", "schedule"},  # the trainer, its loss and metrics, its learning-rate schedule
    {"calculator", "export", "runs"},  # runs: options trained over seeds, summarised on the test set
    {"tune"},
    {"report"},
    {"retrain", "compare_losses", "evaluate"},  # commands' work: a study's best trial, its metrics
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def part_of(module: str) -> str:
    """The layer name of a dotted module inside the package: nanopet.tune.storage -> tune."""
    return module.split(".")[1]


def imported(path: Path) -> set[str]:
    """The ``nanopet.*`` modules ``path`` imports (relative imports resolved)."""
    here = ["nanopet", *path.relative_to(PACKAGE).with_suffix("").parts]
    if here[-1] == "__init__":
        here.pop()
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m.startswith("nanopet.") and m.split(".")[1] in RANK}


def test_every_module_has_a_layer():
    names = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py")}
    assert names - {"__init__"} <= set(RANK), f"modules without a layer: {sorted(names - {'__init__'} - set(RANK))}"


def test_imports_flow_one_way():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the public API gathers from every layer
        own = path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]
        for module in sorted(imported(path)):
            if RANK[part_of(module)] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not upward, "imports back up the layers:\n" + "\n".join(upward)


def module_name(path: Path) -> str:
    parts = ["nanopet", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_itself_back_through_others():
    """No import circle between the package's modules, counting imports inside functions (which would tie one)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if path.name != "__main__.py"}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module in imported(path):
            while module and module not in modules:  # nanopet.tune.space.SearchSpace -> nanopet.tune.space
                module = module.rpartition(".")[0]
            if module and module != name and not name.startswith(module + "."):  # a package's own submodules
                targets.add(module)
        graph[name] = targets - {"nanopet"}
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                circles.append(" -> ".join(stack[stack.index(child):] + [child]))
            elif child not in state:
                visit(child, stack + [child])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)
