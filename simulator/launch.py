"""The simulator as a real subprocess (``eeszt-gw simulator``), for the tests and the benchmarks.

:func:`start_simulator` starts it on free ports with a database of its own, returns once its
admin API and its HTTPS port answer, and gives a :class:`SimulatorProcess`: where it listens,
its admin API (stats, faults, reset), what it stored, and :meth:`SimulatorProcess.stop`.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

__all__ = ["ROOT", "SimulatorProcess", "free_port", "simulator_flags", "start_simulator"]

#: the repository: the subprocess's working folder
ROOT = Path(__file__).resolve().parents[1]
#: the ports :func:`start_simulator` picks when not given
PORTS = ("port", "admin_port", "eid_port", "ocsp_port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def simulator_flags(**settings: Any) -> list[str]:
    """The ``eeszt-gw simulator`` flags of ``settings``, given by field name
    (``latency_ms=20`` -> ``--latency-ms 20``; ``require_two_factor=False`` ->
    ``--no-require-two-factor``; a list repeats its flag; None is left out)."""
    from eeszt_gw.config import flag_of
    from simulator.settings import SimulatorSettings

    out: list[str] = []
    for name, value in settings.items():
        if name not in SimulatorSettings.model_fields:
            raise TypeError(f"the simulator has no setting {name!r}")
        flag = flag_of(name)
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value.value if isinstance(value, enum.Enum) else value)]
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad flag is the caller's bug: say so, do not exit
        raise ValueError(f"eeszt-gw simulator: {message}")


def _given(args: list[str]) -> argparse.Namespace:
    """What ``eeszt-gw simulator`` makes of ``args`` (the last of a repeated flag wins)."""
    from eeszt_gw.config import add_settings
    from simulator.settings import SimulatorSettings

    parser = _Parser(add_help=False)
    add_settings(parser, SimulatorSettings)
    return parser.parse_args(args)


@dataclass
class SimulatorProcess:
    """A running ``eeszt-gw simulator`` subprocess and how to reach it."""

    proc: subprocess.Popen
    pki_dir: Path
    db: Path
    log_path: Path
    port: int
    admin_port: int
    eid_port: int
    ocsp_port: int
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        """The STS and the services (mutual TLS)."""
        return f"https://localhost:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def eid_url(self) -> str:
        return f"https://localhost:{self.eid_port}"

    @property
    def ocsp_url(self) -> str:
        """The OCSP responder (POST); the CRLs are at its ``/crl/<ca>.crl``. "" when off."""
        return f"http://127.0.0.1:{self.ocsp_port}/ocsp" if self.ocsp_port else ""

    @property
    def pki(self):
        """The files of the PKI the simulator serves (:class:`simulator.pki.PkiPaths`)."""
        from simulator.pki import PkiPaths

        return PkiPaths.in_dir(self.pki_dir)

    # --- the admin API --------------------------------------------------------------------------
    def admin(self, method: str, path: str, payload: Any | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.admin_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "/admin/stats")

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        return self.admin("PATCH", "/admin/faults", changes)

    def reset(self, **faults: Any) -> None:
        """Forget every record and put the faults back to defaults (plus ``faults``)."""
        self.admin("PUT", "/admin/faults", faults)
        self.admin("POST", "/admin/reset")

    # --- what it stored -------------------------------------------------------------------------
    def record_count(self) -> int:
        """Records stored so far (read-only SQLite; WAL lets it run beside the writer)."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                (n,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM records").fetchone()
                return int(n)
        except sqlite3.Error:
            return 0

    def stored_times(self) -> list[float]:
        """Epoch seconds of every stored record, in insertion order."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute("SELECT stored_at FROM records ORDER BY id").fetchall()
        return [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for (s,) in rows]

    # --- the process ----------------------------------------------------------------------------
    def processes(self) -> list:
        """The process and its children (``psutil.Process``; needs psutil, the bench extra)."""
        import psutil

        try:
            me = psutil.Process(self.proc.pid)
            return [me, *me.children(recursive=True)]
        except psutil.Error:
            return []

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Return once the admin API and the HTTPS port answer; raise RuntimeError (with the
        log) when the process exits or does not get there in ``timeout_s``, stopping it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"simulator exited with {self.proc.returncode}:\n"
                                   f"{self.log_path.read_text()}")
            try:
                self.admin("GET", "/admin/health")
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"simulator did not become ready:\n{self.log_path.read_text()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``. Stopping twice is fine."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "SimulatorProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(pki_dir: Any, workdir: Path, *extra_flags: str,
                    ready_timeout_s: float = 60.0, **settings: Any) -> SimulatorProcess:
    """Start ``eeszt-gw simulator`` on the PKI in ``pki_dir`` (a folder, or a
    :class:`~simulator.pki.PkiPaths`) and return once it is ready.

    ``settings`` are :class:`~simulator.settings.SimulatorSettings` fields (``latency_ms=20``),
    ``extra_flags`` more flags, which come last and so win. Not given: free ports (the OCSP
    port too), a database and a log of its own in ``workdir`` (named per run, not per port: the
    kernel hands a port out again, and a database named after it would hold an earlier run's
    records), and log level warning.
    """
    run_id = uuid.uuid4().hex[:8]
    settings = {"db": Path(workdir) / f"sim-{run_id}.sqlite", "log_level": "warning",
                **{name: free_port() for name in PORTS if settings.get(name) is None},
                **{k: v for k, v in settings.items() if v is not None}}
    args = ["--pki-dir", str(Path(getattr(pki_dir, "directory", pki_dir))),
            *simulator_flags(**settings), *extra_flags]
    given = _given(args)
    log_path = Path(workdir) / f"simulator-{run_id}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "eeszt_gw.cli", "simulator", *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    sim = SimulatorProcess(proc, Path(given.pki_dir), Path(given.db), log_path,
                           *(getattr(given, name) for name in PORTS), _log=log)
    sim.wait_ready(ready_timeout_s)
    return sim
