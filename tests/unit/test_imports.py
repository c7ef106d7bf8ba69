"""The import graph: no cycle inside workers/, and schemas/ stays pure (imports no runtime package).

The graph is built from the source (AST), not by importing: every ``import`` and ``from ...
import`` counts, including those inside functions and under ``TYPE_CHECKING``, with relative
imports resolved against the importing module's package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("workers", "producers", "card_bridge", "simulator", "eeszt_gw")


def modules_of(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package is its __init__)."""
    out: dict[str, Path] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports (``from a import b`` gives both a and a.b)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def graph_of(package: str) -> dict[str, set[str]]:
    """Edges between the modules of ``package`` only."""
    mods = modules_of(package)
    return {m: {n for n in imported_names(m, p) if n in mods and n != m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    # Given a graph with a cycle and one without
    # When / Then: the finder names the cycle and accepts the tree
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_imports_resolve_against_the_importing_package(tmp_path):
    # Given a module in a subpackage with relative imports of one and two dots
    src = tmp_path / "mod.py"
    src.write_text("from ..errors import X\nfrom .sibling import y\nfrom . import other\n")
    # When its imports are read as if it were workers.logins.mod
    names = imported_names("workers.logins.mod", src)
    # Then each one is the absolute module name
    assert {"workers.errors", "workers.logins.sibling", "workers.logins.other"} <= names


def test_workers_has_no_import_cycle():
    # Given the import graph of every module under workers/
    graph = graph_of("workers")
    assert "workers.logins.tokens" in graph and "workers.pipeline" in graph
    # When it is searched for a cycle
    cycle = find_cycle(graph)
    # Then there is none
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_schemas_import_nothing_of_the_runtime_packages():
    # Given every module under schemas/
    offending = []
    for module, path in modules_of("schemas").items():
        # When its imports are listed
        for name in imported_names(module, path):
            # Then none names workers, producers, card_bridge, simulator or eeszt_gw
            if name.split(".", 1)[0] in RUNTIME_PACKAGES:
                offending.append(f"{module} imports {name}")
    assert offending == []


def test_safe_url_is_defined_once_and_every_package_uses_that_one():
    # Given every module of the runtime packages and schemas
    definitions = []
    for package in ("schemas", *RUNTIME_PACKAGES):
        for module, path in modules_of(package).items():
            tree = ast.parse(path.read_text(), filename=str(path))
            # When its function definitions are listed
            definitions += [module for node in ast.walk(tree)
                            if isinstance(node, ast.FunctionDef) and node.name == "safe_url"]
    # Then safe_url is defined once, in eeszt_gw.amqp, and masks the password
    assert definitions == ["eeszt_gw.amqp"]
    from eeszt_gw.amqp import safe_url

    assert safe_url("amqps://his-a:s3cret@[::1]:5671/v") == "amqps://his-a:***@[::1]:5671/v"
    assert safe_url("amqp://[::1") == "<unparseable URL>"


#: Modules whose import means I/O: networking, brokers, HTTP, files by path.
IO_MODULES = ("pika", "ssl", "socket", "urllib.request", "http", "requests", "urllib3", "pycurl",
              "subprocess", "sqlite3", "shutil", "tempfile")


def test_schemas_does_no_io():
    # Given every module under schemas/
    offending = []
    for module, path in modules_of("schemas").items():
        # When its imports are listed
        for name in imported_names(module, path):
            # Then none is a networking, broker, HTTP, process or file-system module
            if any(name == io or name.startswith(io + ".") for io in IO_MODULES):
                offending.append(f"{module} imports {name}")
    assert offending == []


#: The two modules of eeszt_gw every process shares: leaves, importing only schemas.
SHARED_LEAVES = ("eeszt_gw.amqp", "eeszt_gw.config")


def test_the_shared_modules_are_leaves_and_the_only_part_of_eeszt_gw_processes_import():
    # Given the shared modules, and every module of the process packages
    offending = []
    for leaf in SHARED_LEAVES:
        path = modules_of("eeszt_gw")[leaf]
        for name in imported_names(leaf, path):
            # Then a shared module imports no runtime package but the other shared module
            top = name.split(".", 1)[0]
            if top in RUNTIME_PACKAGES and not name.startswith(SHARED_LEAVES):
                offending.append(f"{leaf} imports {name}")
    for package in ("workers", "producers", "card_bridge", "simulator"):
        for module, path in modules_of(package).items():
            for name in imported_names(module, path):
                # And a process package takes from eeszt_gw only the shared modules
                if name.split(".", 1)[0] == "eeszt_gw" and name != "eeszt_gw" \
                        and not name.startswith(SHARED_LEAVES):
                    offending.append(f"{module} imports {name}")
    assert offending == []


def test_the_pipeline_decides_and_outcomes_settle():
    # Given the pipeline's source
    tree = ast.parse((ROOT / "workers" / "pipeline.py").read_text())
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    # Then it sends no reply, records no audit event and tells no observer itself: each outcome
    # is settled by one method of workers.outcomes.Outcomes (the reply, the audit event, the
    # dead letter, the retry or park, the metrics)
    direct = {c for c in calls if c.endswith(("outbox.reply", "observer.outcome", "audit.record"))
              or c == "self._audit"}
    assert direct == set()
    # And those methods exist there
    outcomes = ast.parse((ROOT / "workers" / "outcomes.py").read_text())
    methods = {n.name for n in ast.walk(outcomes) if isinstance(n, ast.FunctionDef)}
    assert {"_accept", "_reject", "_fail", "_park", "_retry_later", "_waiting", "_refuse_invalid",
            "_refuse_tenant", "_defer_twin", "_received", "_submitted"} <= methods
