"""The benchmarks stay out of the product: only `eeszt-gw bench` reaches them, and only lazily."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from eeszt_gw.cli import BENCH_EXTRA, main

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("eeszt_gw", "workers", "schemas", "producers", "card_bridge", "simulator")
SCENARIOS = ("card-login", "codepath", "publish", "batch", "scaling", "memory", "cluster")


def _imports_of_benchmarks(path: Path) -> list[str]:
    """`function` (or `<module>`) for each import of `benchmarks` in one file, static or dynamic."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []

    def named(name: str | None) -> bool:
        return bool(name) and (name == "benchmarks" or name.startswith("benchmarks."))

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child.name
            if isinstance(child, ast.Import) and any(named(a.name) for a in child.names):
                found.append(where)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and named(child.module):
                found.append(where)
            elif (isinstance(child, ast.Call) and child.args
                  and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str) and named(child.args[0].value)
                  and getattr(child.func, "attr", getattr(child.func, "id", None))
                  in ("import_module", "__import__")):
                found.append(where)
            visit(child, inner)

    visit(tree, "<module>")
    return found


def test_the_product_imports_benchmarks_only_in_the_bench_dispatcher():
    # Given every module of the product packages
    files = [f for pkg in PRODUCT for f in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 50, "the product packages were not found"
    # When their imports of `benchmarks` are collected (import, from-import, import_module)
    found = {(str(f.relative_to(ROOT)), where)
             for f in files for where in _imports_of_benchmarks(f)}
    # Then the one import is the dispatcher of `eeszt-gw bench`, inside its function
    assert found == {("eeszt_gw/cli.py", "_bench")}


def test_the_ast_walk_sees_every_kind_of_import(tmp_path):
    # Given a module importing benchmarks in each way, and one importing a look-alike name
    src = tmp_path / "m.py"
    src.write_text("import benchmarks.harness\n"
                   "def f():\n    from benchmarks.cli import register\n"
                   "def g():\n    import importlib\n    importlib.import_module('benchmarks.bare')\n"
                   "import benchmarks_other\nfrom .benchmarks import x\n")
    # When it is walked, Then the three real imports are found where they are
    assert _imports_of_benchmarks(src) == ["<module>", "f", "g"]


def test_bench_help_lists_every_scenario(capsys):
    # Given the bench extra (installed by `make venv`)
    # When `eeszt-gw bench --help` runs
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--help"])
    # Then it exits 0 and lists each scenario under `eeszt-gw bench`
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: eeszt-gw bench")
    for name in SCENARIOS:
        assert name in out


def test_a_scenario_flag_error_names_the_flag_and_the_reason(capsys):
    # When a scenario gets a bad value, Then argparse exits 2 naming the flag and the reason
    with pytest.raises(SystemExit) as stop:
        main(["bench", "batch", "--latencies", "fast"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--latencies" in err and "expected numbers separated by commas" in err


@pytest.mark.parametrize("missing", ["psutil", "matplotlib", "benchmarks"])
def test_bench_without_the_extra_exits_2_with_the_install_hint(missing, monkeypatch, capsys):
    # Given a module of the bench extra (or the benchmarks package) that cannot be found
    monkeypatch.setitem(sys.modules, missing, None)
    # When `eeszt-gw bench ...` runs, help included
    for argv in (["bench", "--help"], ["bench", "batch", "--n", "10"]):
        rc = main(argv)
        # Then it exits 2 with the install hint, naming what is missing, and prints no help
        assert rc == 2
        captured = capsys.readouterr()
        assert BENCH_EXTRA in captured.err and missing in captured.err
        assert "pip install -e '.[bench]'" in captured.err
        assert captured.out == ""


def test_the_command_loads_benchmarks_only_when_bench_runs():
    # Given a fresh interpreter
    code = ("import sys\n"
            "from eeszt_gw.cli import build_parser, main\n"
            "ns = build_parser().parse_args(['bench', 'batch', '--n', '3'])\n"
            "print('args', ns.bench_args)\n"
            "print('before', any(m == 'benchmarks' or m.startswith('benchmarks.') for m in sys.modules))\n"
            "try:\n    main(['bench', '--help'])\nexcept SystemExit as e:\n    print('rc', e.code)\n"
            "print('after', 'benchmarks.cli' in sys.modules)\n")
    # When the command's parser is built and parses a bench line, then `eeszt-gw bench --help` runs
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    # Then benchmarks were not imported until bench ran, and then it was
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("args", "before", "after", "rc"))]
    assert lines == ["args ['batch', '--n', '3']", "before False", "rc 0", "after True"]


def test_the_harness_finds_the_repository_it_runs_the_subprocesses_in():
    # Given the benchmark harness, a top-level package of the repository
    from benchmarks import harness

    # Then its root is the repository: the project file and the WSDL the naive peer loads
    assert (harness.ROOT / "pyproject.toml").is_file()
    assert (harness.ROOT / "benchmarks" / "harness.py").is_file()
    assert (harness.ROOT / "schemas" / "soap" / "esemenyKatalogus.wsdl").is_file()
