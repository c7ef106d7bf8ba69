"""docs/eeszt-rules.md: every rule row names a fault code, where it is enforced, and a test that
exists (the file is there and defines that function)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "eeszt-rules.md"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
WHERE = re.compile(r"`(simulator/\w+\.py):([\w.]+)`")


def rows() -> list[list[str]]:
    """The body rows of every table: cells of lines that start with '|', minus headers."""
    out = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|") or line.startswith("|--") or line.startswith("| rule "):
            continue
        out.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return out


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_the_doc_starts_by_saying_it_is_the_projects_own_contract():
    # Given the rules document, then its opening says what it is not
    head = DOC.read_text(encoding="utf-8")[:600]
    assert "project's own" in head and "not the official EESZT interface" in head


def test_every_row_has_four_cells_and_a_test():
    # Given every rule row
    table = rows()
    assert len(table) >= 40
    for cells in table:
        # Then it has rule, code, where, test, and the test cell names a test
        assert len(cells) == 4, cells
        assert TEST_REF.search(cells[3]), f"no test named for rule {cells[0]!r}"


def test_every_named_test_exists():
    # Given every test the table names
    missing = []
    for cells in rows():
        for file, name in TEST_REF.findall(cells[3]):
            path = ROOT / file
            # Then its file exists and defines that function
            if not path.is_file() or name not in defined_functions(path):
                missing.append(f"{file}::{name}")
    assert missing == []


def test_every_place_of_enforcement_exists():
    # Given every module:function the table names as where a rule is enforced
    missing = []
    for cells in rows():
        for file, qualname in WHERE.findall(cells[2]):
            path = ROOT / file
            # Then the module exists and defines the function (or method)
            if not path.is_file() or qualname.split(".")[-1] not in defined_functions(path):
                missing.append(f"{file}:{qualname}")
    assert missing == []


def test_the_certificates_section_is_there_for_the_revocation_rows():
    text = DOC.read_text(encoding="utf-8")
    assert "\n## Certificates and revocation\n" in text
