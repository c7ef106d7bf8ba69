"""SQLite record of what the simulator received and accepted.

Tests prove "nothing lost, nothing sent twice" from here: every accepted write is one row in
``records``; every business request that got past the transport is one row in ``attempts``;
every token the STS issued is one row in ``sts_issues``. ``eid_used`` remembers every spent eID
package and rID (single use across restarts: :meth:`Store.reset` keeps it), and ``card_states``
the card activations changed on the admin port.

An idempotency key belongs to the institution that sent it: lookups by key, the index and the
counts of repeated keys are all per (institution, service, key).

Each thread that needs the store opens its own :class:`Store` (the request thread writes, the
admin thread reads; WAL lets them run side by side). A Store may be created on one thread and
used on another, but its methods are serialised by a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    operation TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    message_id TEXT,
    eeszt_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    subject TEXT NOT NULL,
    institution TEXT NOT NULL,
    taj TEXT,
    target_id TEXT,
    stored_at TEXT NOT NULL
);
DROP INDEX IF EXISTS records_key;
CREATE INDEX IF NOT EXISTS records_institution_key
    ON records(institution, service, idempotency_key);
CREATE INDEX IF NOT EXISTS records_eeszt_id ON records(eeszt_id);
CREATE INDEX IF NOT EXISTS records_taj ON records(service, taj);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    service TEXT NOT NULL,
    operation TEXT NOT NULL,
    idempotency_key TEXT,
    outcome TEXT NOT NULL,
    at TEXT NOT NULL,
    institution TEXT
);
CREATE TABLE IF NOT EXISTS sts_issues (
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    method TEXT NOT NULL,
    institution TEXT NOT NULL,
    issued_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS eid_used (
    kind TEXT NOT NULL,
    token_id TEXT NOT NULL,
    used_at TEXT NOT NULL,
    PRIMARY KEY (kind, token_id)
);
CREATE TABLE IF NOT EXISTS card_states (
    card_serial TEXT PRIMARY KEY,
    activated INTEGER NOT NULL,
    changed_at TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Record:
    eeszt_id: str
    version: int
    operation: str
    stored_at: str
    idempotency_key: str
    repeated: bool = False  # True when dedupe mode returned an earlier record


def _locked(method):
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """Thin, synchronous access to the simulator's SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only a power loss can lose the
        # last transactions, which a simulator may accept.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """A file written before keys were scoped by institution gets the attempts' column."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(attempts)")}
        if "institution" not in columns:
            self._db.execute("ALTER TABLE attempts ADD COLUMN institution TEXT")
        self._db.executescript(
            "DROP INDEX IF EXISTS attempts_key;"
            "CREATE INDEX IF NOT EXISTS attempts_institution_key"
            " ON attempts(institution, service, idempotency_key);")

    def close(self) -> None:
        self._db.close()

    # --- writes (request thread) ---------------------------------------------------------------
    @_locked
    def find_by_key(self, institution: str, service: str, key: str) -> list[Record]:
        """The records ``institution`` stored under ``key`` at ``service``: an idempotency key
        belongs to the institution that sent it."""
        rows = self._db.execute(
            "SELECT eeszt_id, version, operation, stored_at, idempotency_key FROM records"
            " WHERE institution=? AND service=? AND idempotency_key=? ORDER BY id",
            (institution, service, key),
        ).fetchall()
        return [Record(*row) for row in rows]

    @_locked
    def find_by_eeszt_id(self, eeszt_id: str) -> list[dict[str, Any]]:
        cur = self._db.execute(
            "SELECT service, operation, idempotency_key, target_id, taj, institution FROM records"
            " WHERE eeszt_id=? OR target_id=? ORDER BY id",
            (eeszt_id, eeszt_id),
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    @_locked
    def next_version(self, service: str, taj: str) -> int:
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM records WHERE service=? AND taj=?", (service, taj)
        ).fetchone()
        return int(count) + 1

    @_locked
    def insert(
        self,
        *,
        service: str,
        operation: str,
        key: str,
        message_id: str | None,
        subject: str,
        institution: str,
        taj: str | None,
        target_id: str | None = None,
        eeszt_id: str | None = None,
        version: int = 1,
    ) -> Record:
        eeszt_id = eeszt_id or str(uuid.uuid4())
        stored_at = _now()
        self._db.execute(
            "INSERT INTO records (service, operation, idempotency_key, message_id, eeszt_id,"
            " version, subject, institution, taj, target_id, stored_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (service, operation, key, message_id, eeszt_id, version, subject, institution, taj,
             target_id, stored_at),
        )
        return Record(eeszt_id, version, operation, stored_at, key)

    @_locked
    def attempt(self, *, service: str, operation: str, key: str | None, outcome: str,
                institution: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO attempts (service, operation, idempotency_key, outcome, at, institution)"
            " VALUES (?,?,?,?,?,?)",
            (service, operation, key, outcome, _now(), institution),
        )

    @_locked
    def sts_issued(self, *, subject: str, method: str, institution: str) -> None:
        self._db.execute(
            "INSERT INTO sts_issues (subject, method, institution, issued_at) VALUES (?,?,?,?)",
            (subject, method, institution, _now()),
        )

    @_locked
    def is_used(self, kind: str, token_id: str) -> bool:
        """True when the eID package / rID ``token_id`` was already spent."""
        return self._db.execute("SELECT 1 FROM eid_used WHERE kind=? AND token_id=?",
                                (kind, token_id)).fetchone() is not None

    @_locked
    def mark_used(self, kind: str, token_id: str) -> bool:
        """Spend an eID package / rID; False when it already was spent (atomic in SQLite)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO eid_used (kind, token_id, used_at) VALUES (?,?,?)",
            (kind, token_id, _now()))
        return cur.rowcount == 1

    @_locked
    def set_card_state(self, card_serial: str, activated: bool) -> None:
        self._db.execute(
            "INSERT INTO card_states (card_serial, activated, changed_at) VALUES (?,?,?)"
            " ON CONFLICT(card_serial) DO UPDATE SET activated=excluded.activated,"
            " changed_at=excluded.changed_at",
            (card_serial, int(bool(activated)), _now()))

    @_locked
    def card_states(self) -> dict[str, bool]:
        return {serial: bool(a) for serial, a in
                self._db.execute("SELECT card_serial, activated FROM card_states")}

    @_locked
    def reset(self) -> None:
        """Forget records, attempts, issues and card activation changes. Spent eID packages and
        rIDs stay spent."""
        self._db.executescript("DELETE FROM records; DELETE FROM attempts; DELETE FROM sts_issues;"
                               " DELETE FROM card_states;")

    # --- reads (admin thread) ------------------------------------------------------------------
    @_locked
    def stats(self) -> dict[str, Any]:
        db = self._db
        records: dict[str, dict[str, int]] = {}
        for service, operation, n in db.execute(
            "SELECT service, operation, COUNT(*) FROM records GROUP BY service, operation"
        ):
            records.setdefault(service, {})[operation] = n
        (total,) = db.execute("SELECT COUNT(*) FROM records").fetchone()
        by_institution = dict(db.execute(
            "SELECT institution, COUNT(*) FROM records GROUP BY institution").fetchall())
        (repeated,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM records"
            " GROUP BY institution, service, idempotency_key HAVING COUNT(*) > 1)"
        ).fetchone()
        (extra_rows,) = db.execute(
            "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM records"
            " GROUP BY institution, service, idempotency_key HAVING COUNT(*) > 1)"
        ).fetchone()
        sts = dict(db.execute("SELECT method, COUNT(*) FROM sts_issues GROUP BY method").fetchall())
        sts_subjects = dict(
            db.execute("SELECT subject, COUNT(*) FROM sts_issues GROUP BY subject").fetchall()
        )
        outcomes = dict(
            db.execute("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome").fetchall()
        )
        (keys_multi,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM attempts WHERE idempotency_key IS NOT NULL"
            " GROUP BY institution, service, idempotency_key HAVING COUNT(*) > 1)"
        ).fetchone()
        (rejected_multi,) = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM attempts WHERE idempotency_key IS NOT NULL"
            " AND outcome NOT IN ('accepted', 'repeated')"
            " GROUP BY institution, service, idempotency_key HAVING COUNT(*) > 1)"
        ).fetchone()
        return {
            "records": records,
            "total_records": total,
            "records_by_institution": by_institution,
            "repeated_keys": repeated,
            "extra_records_from_repeats": extra_rows,
            "sts_issues": sts,
            "sts_issues_by_subject": sts_subjects,
            "attempts": {
                "by_outcome": outcomes,
                "keys_received_more_than_once": keys_multi,
                "rejected_keys_received_more_than_once": rejected_multi,
            },
        }

    @_locked
    def records(self, *, service: str | None = None, key: str | None = None,
                institution: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql = ("SELECT service, operation, idempotency_key, message_id, eeszt_id, version,"
               " subject, institution, target_id, stored_at FROM records WHERE 1=1")
        args: list[Any] = []
        if service:
            sql += " AND service=?"
            args.append(service)
        if key:
            sql += " AND idempotency_key=?"
            args.append(key)
        if institution:
            sql += " AND institution=?"
            args.append(institution)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        cur = self._db.execute(sql, args)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]


class OwnStore:
    """A :class:`Store` of its own for an app of simulator ``sim`` served on another thread than
    the service port (the admin port, the eID server): opened on first use, so on the thread
    that uses it."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self._db_path: Path | str = sim.db_path
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self._db_path)
        return self._store
