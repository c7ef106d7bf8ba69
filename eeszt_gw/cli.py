"""``eeszt-gw``: one command, with a subcommand per job; this module only dispatches.

Each process is wired in its own package, whose ``register(subparsers)`` adds its commands
(:data:`COMMAND_PACKAGES`); a command's flags come from its settings class
(:mod:`eeszt_gw.config`). A handler returns an exit status or raises :class:`UsageError`, which
is printed here as ``error: ...`` lines with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import json
import logging
import sys
from pathlib import Path

from . import __version__



# --- schema -------------------------------------------------------------------------------------
def _schema_export(ns: argparse.Namespace) -> int:
    from schemas.export import json_schemas

    out = Path(ns.dir)
    out.mkdir(parents=True, exist_ok=True)
    schemas = json_schemas()
    for name, schema in schemas.items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False))
    print(f"wrote {len(schemas)} JSON Schemas to {out}")
    return 0


def _add_schema(sub) -> None:
    p = sub.add_parser("schema", help="the message contract as JSON Schema",
                       description="Work with the message contract.")
    psub = p.add_subparsers(dest="sub", required=True, metavar="COMMAND")
    exp = psub.add_parser(
        "export", help="write a JSON Schema per message type into DIR",
        description="Write one JSON Schema per message type (the request envelope, each payload "
                    "type inside the envelope, the reply and each reply kind) into DIR, so that "
                    "a HIS in Java or C# can generate or validate its messages.")
    exp.add_argument("dir", metavar="DIR", help="folder to write (created if missing)")
    exp.set_defaults(func=_schema_export)


# --- bench ----------------------------------------------------------------------------------------
BENCH_EXTRA = "eeszt-gw bench needs the bench extra: pip install -e '.[bench]'"
#: What `eeszt-gw bench` needs beside the product: the top-level `benchmarks` package of the
#: repository (installed with the project, not part of the product) and the bench extra.
BENCH_MODULES = ("benchmarks", "psutil", "matplotlib")


def _bench(ns: argparse.Namespace) -> int:
    """Hand `eeszt-gw bench ...` to the benchmarks package, which owns the scenarios' flags.

    The only place the product imports `benchmarks`, and only when `eeszt-gw bench` runs."""
    import importlib.util

    try:
        missing = [m for m in BENCH_MODULES if importlib.util.find_spec(m) is None]
    except (ImportError, ValueError):
        missing = list(BENCH_MODULES)
    if missing:
        print(f"{BENCH_EXTRA} (missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    try:
        from benchmarks.cli import register
    except ImportError as exc:
        print(f"{BENCH_EXTRA} ({exc})", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="eeszt-gw")
    register(parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND"))
    inner = parser.parse_args(["bench", *ns.bench_args])
    return int(inner.func(inner) or 0)


def _add_bench(sub) -> None:
    # No flags of its own: every argument, --help included, goes to benchmarks/cli.py (a prefix
    # character no argument starts with makes argparse take them all as plain values).
    p = sub.add_parser("bench", add_help=False, prefix_chars="\0",
                       help="benchmarks that print figures measured in one run (needs the bench "
                            "extra; `eeszt-gw bench --help` lists the scenarios)")
    p.add_argument("bench_args", nargs="*", metavar="SCENARIO ...")
    p.set_defaults(func=_bench)


#: The packages that wire the commands, in the order `eeszt-gw --help` lists them, and the
#: commands each registers.
COMMAND_PACKAGES = {
    "eeszt_gw.demo_cli": ("demo",),
    "workers.cli": ("worker",),
    "card_bridge.cli": ("card-bridge",),
    "producers.cli": ("publish", "replies", "generate"),
    "eeszt_gw.ops.cli": ("audit", "dlq", "status"),
    "eeszt_gw.console.cli": ("console",),
    "simulator.cli": ("pki", "simulator", "virtual-card"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``argv`` naming a command, only that command's package is
    imported (a worker or simulator process then loads nothing of the other commands)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="eeszt-gw",
        description="eeszt-gateway: a queue-based gateway between HIS systems and an EESZT-style "
                    "SOAP service space. It speaks the project's own contract and ships a "
                    "simulator; it is not the official EESZT interface.")
    parser.add_argument("--version", action="version", version=f"eeszt-gw {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    chosen = next((a for a in argv or () if not a.startswith("-")), None)
    for package, commands in COMMAND_PACKAGES.items():
        if chosen is None or chosen in commands or not any(
                chosen in c for c in COMMAND_PACKAGES.values()):
            importlib.import_module(package).register(sub)
    _add_schema(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from eeszt_gw.config import UsageError

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns) or 0)
    except UsageError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `eeszt-gw ... | head`: the reader has gone, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
