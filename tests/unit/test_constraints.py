"""constraints.txt pins every dependency of the product and its extras, within pyproject's bounds."""

import importlib.machinery
import importlib.util
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"constraints.txt line {n}: not NAME==VERSION: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt line {n}: {name} pinned twice"
        pins[key] = version
    return pins


def _declared() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        out += [(f"[{extra}]", Requirement(r)) for r in reqs]
    return out


def test_every_declared_dependency_is_pinned_within_its_bounds():
    # Given pyproject's dependencies and extras, and constraints.txt
    pins = _pins((ROOT / "constraints.txt").read_text())
    # When each requirement is looked up among the pins
    problems = []
    for where, req in _declared():
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{where} {req.name}: not in constraints.txt")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{where} {req}: constraints.txt pins {version}")
    # Then each one is pinned, to a version its bounds allow (a fresh install cannot conflict)
    assert not problems, "run `make lock`: " + "; ".join(problems)
    # and the project itself is not pinned (it is installed from the working tree)
    assert canonicalize_name("eeszt-gateway") not in pins


def test_constraints_match_what_the_lock_script_sees_installed():
    # Given the lock script, run against this environment
    loader = importlib.machinery.SourceFileLoader("ci_lock", str(ROOT / ".ci" / "lock"))
    lock = importlib.util.module_from_spec(importlib.util.spec_from_loader("ci_lock", loader))
    loader.exec_module(lock)
    # When it walks the installed project with all its extras
    locked = {k: d.version for k, d in lock.closure("eeszt-gateway").items()}
    # Then constraints.txt holds exactly those versions: it is current for this environment
    pinned = _pins((ROOT / "constraints.txt").read_text())
    assert locked == pinned, (
        f"constraints.txt is not what {sys.prefix} has installed: run `make lock` "
        f"(only pinned: {sorted(set(pinned) - set(locked))}; only installed: "
        f"{sorted(set(locked) - set(pinned))}; different: "
        f"{sorted(k for k in set(locked) & set(pinned) if locked[k] != pinned[k])})")
