"""The ledger on disk: one SQLite file in WAL mode, every write a fsynced transaction.

`synchronous=FULL` makes each commit durable before the call returns, so anything the server
acknowledged (a forget request, a completed round) survives a crash or power cut. One connection
is shared by all threads behind a lock: the ledger sees a few writes per round, so serialising
them costs nothing and keeps every read consistent with the last write.

The schema evolves only forwards: `MIGRATIONS[i]` takes version i to i + 1, and each runs in
one transaction together with its version bump, so a crash mid-migration leaves the old schema.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Unpack

from forsaken.common.errors import ConfigError, CorruptState, Unavailable, UnknownEntity
from forsaken.server.ledger_contract import (
    ClientRecord,
    ForgetChanges,
    ForgetRecord,
    Ledger,
    RoundRecord,
    RoundStatus,
    advance_forget,
    check_limit,
    check_new_forget,
    check_new_round,
)

# STRICT tables (SQLite >= 3.37) make a wrongly typed value an error instead of a coercion.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE rounds (
            round INTEGER NOT NULL CHECK (round >= 0),
            attempt INTEGER NOT NULL CHECK (attempt >= 0),
            status TEXT NOT NULL CHECK (status IN ('completed', 'aborted')),
            selected TEXT NOT NULL,
            participants TEXT NOT NULL,
            model_sha256 TEXT,
            base_model_sha256 TEXT,
            total_samples INTEGER NOT NULL,
            test_acc REAL,
            test_loss REAL,
            duration_s REAL NOT NULL,
            reason TEXT NOT NULL,
            started_ms INTEGER NOT NULL,
            finished_ms INTEGER NOT NULL,
            metrics TEXT NOT NULL,
            PRIMARY KEY (round, attempt)
        ) STRICT""",
        # At most one completed attempt per round, enforced by the database itself.
        "CREATE UNIQUE INDEX rounds_completed ON rounds (round) WHERE status = 'completed'",
        """CREATE TABLE clients (
            node_id TEXT PRIMARY KEY,
            public_key BLOB NOT NULL,
            num_samples INTEGER NOT NULL,
            first_seen_ms INTEGER NOT NULL,
            last_seen_ms INTEGER NOT NULL,
            revoked INTEGER NOT NULL CHECK (revoked IN (0, 1))
        ) STRICT""",
        """CREATE TABLE contributions (
            round INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            node_id TEXT NOT NULL REFERENCES clients (node_id),
            PRIMARY KEY (round, node_id),
            FOREIGN KEY (round, attempt) REFERENCES rounds (round, attempt)
        ) STRICT""",
        "CREATE INDEX contributions_by_node ON contributions (node_id, round)",
        """CREATE TABLE forgets (
            forget_id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL REFERENCES clients (node_id),
            request_id TEXT NOT NULL,
            method TEXT NOT NULL,
            sample_ids TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            receipt_json TEXT NOT NULL,
            progress_json TEXT NOT NULL,
            UNIQUE (node_id, request_id)
        ) STRICT""",
        """CREATE TABLE requests (
            kind TEXT NOT NULL,
            node_id TEXT NOT NULL,
            request_id TEXT NOT NULL,
            response_json TEXT NOT NULL,
            PRIMARY KEY (kind, node_id, request_id)
        ) STRICT""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    ),
    (
        "ALTER TABLE clients ADD COLUMN quarantine TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE forgets ADD COLUMN initiated_by TEXT NOT NULL DEFAULT ''",
    ),
)

_ROUND_COLS = tuple(RoundRecord.__dataclass_fields__)
_CLIENT_COLS = tuple(ClientRecord.__dataclass_fields__)
_FORGET_COLS = tuple(ForgetRecord.__dataclass_fields__)


def _insert(table: str, cols: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _round_row(rec: RoundRecord) -> tuple[Any, ...]:
    row = {c: getattr(rec, c) for c in _ROUND_COLS}
    row["status"] = str(rec.status)
    row["selected"] = json.dumps(list(rec.selected))
    row["participants"] = json.dumps(list(rec.participants))
    row["metrics"] = json.dumps(dict(rec.metrics), sort_keys=True)
    return tuple(row[c] for c in _ROUND_COLS)


def _round_from(row: Mapping[str, Any]) -> RoundRecord:
    fields = {c: row[c] for c in _ROUND_COLS}
    for c in ("selected", "participants"):
        fields[c] = tuple(json.loads(row[c]))
    fields["metrics"] = json.loads(row["metrics"])
    return RoundRecord(**fields)


def _forget_row(rec: ForgetRecord) -> tuple[Any, ...]:
    row = {c: getattr(rec, c) for c in _FORGET_COLS}
    row["state"] = str(rec.state)
    row["sample_ids"] = json.dumps(list(rec.sample_ids))
    return tuple(row[c] for c in _FORGET_COLS)


def _forget_from(row: Mapping[str, Any]) -> ForgetRecord:
    fields = {c: row[c] for c in _FORGET_COLS}
    fields["sample_ids"] = tuple(json.loads(row["sample_ids"]))
    return ForgetRecord(**fields)


def _client_from(row: Mapping[str, Any]) -> ClientRecord:
    return ClientRecord(**{c: row[c] for c in _CLIENT_COLS})


class SqliteLedger(Ledger):
    """A `Ledger` in one SQLite file; safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        try:
            # isolation_level=None: no implicit transactions; `_write` opens them explicitly.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open ledger {self._path}: {e}") from None
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise ConfigError(f"{self._path}: SQLite would not use WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.close()
            raise CorruptState(f"{self._path} is not a usable ledger: {e}") from None
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        return self._path

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise Unavailable("ledger is closed")
            yield self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so the checks made inside the transaction
        # still hold at COMMIT even if another process opened the file.
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._write() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            if c.execute("SELECT 1 FROM schema_version").fetchone() is None:
                c.execute("INSERT INTO schema_version (version) VALUES (0)")
        while True:
            with self._write() as c:
                # Re-read inside the transaction: another opener may have migrated meanwhile.
                version = c.execute("SELECT version FROM schema_version").fetchone()[0]
                if version > len(MIGRATIONS):
                    raise CorruptState(
                        f"{self._path} has ledger schema v{version}; this build knows up to "
                        f"v{len(MIGRATIONS)} and will not open a newer ledger"
                    )
                if version == len(MIGRATIONS):
                    return
                for statement in MIGRATIONS[version]:
                    c.execute(statement)
                c.execute("UPDATE schema_version SET version = ?", (version + 1,))

    def schema_version(self) -> int:
        with self._read() as c:
            return int(c.execute("SELECT version FROM schema_version").fetchone()["version"])

    # Rounds ---------------------------------------------------------------------------------
    def record_round(self, rec: RoundRecord) -> None:
        with self._write() as c:
            attempt = c.execute(
                "SELECT 1 FROM rounds WHERE round = ? AND attempt = ?", (rec.round, rec.attempt)
            ).fetchone()
            completed = c.execute(
                "SELECT 1 FROM rounds WHERE round = ? AND status = 'completed'", (rec.round,)
            ).fetchone()
            unknown = [
                p
                for p in rec.participants
                if c.execute("SELECT 1 FROM clients WHERE node_id = ?", (p,)).fetchone() is None
            ]
            check_new_round(
                rec,
                attempt_exists=attempt is not None,
                completed_exists=completed is not None,
                unknown_participants=unknown,
            )
            c.execute(_insert("rounds", _ROUND_COLS), _round_row(rec))
            if rec.status is RoundStatus.COMPLETED:
                c.executemany(
                    "INSERT INTO contributions (round, attempt, node_id) VALUES (?, ?, ?)",
                    [(rec.round, rec.attempt, p) for p in rec.participants],
                )

    def rounds(self, limit: int | None = None) -> list[RoundRecord]:
        with self._read() as c:
            total = c.execute("SELECT COUNT(*) FROM rounds").fetchone()[0]
            rows = c.execute(
                "SELECT * FROM rounds ORDER BY round, attempt LIMIT -1 OFFSET ?",
                (total - check_limit(limit, total),),
            ).fetchall()
        return [_round_from(r) for r in rows]

    def _one_round(self, where: str, args: tuple[Any, ...]) -> RoundRecord | None:
        with self._read() as c:
            row = c.execute(
                f"SELECT * FROM rounds WHERE status = 'completed' {where} "
                "ORDER BY round DESC LIMIT 1",
                args,
            ).fetchone()
        return None if row is None else _round_from(row)

    def last_completed(self) -> RoundRecord | None:
        return self._one_round("", ())

    def completed_round(self, n: int) -> RoundRecord:
        rec = self._one_round("AND round = ?", (n,))
        if rec is None:
            raise UnknownEntity(f"round {n} is not completed")
        return rec

    def last_checkpoint_before(self, n: int) -> RoundRecord | None:
        return self._one_round("AND round < ?", (n,))

    def contributions(self, node_id: str) -> list[int]:
        with self._read() as c:
            rows = c.execute(
                "SELECT round FROM contributions WHERE node_id = ? ORDER BY round", (node_id,)
            ).fetchall()
        return [r["round"] for r in rows]

    def first_contribution(self, node_id: str) -> int | None:
        # One index seek on contributions_by_node instead of reading every round of the node.
        with self._read() as c:
            row = c.execute(
                "SELECT MIN(round) AS first FROM contributions WHERE node_id = ?", (node_id,)
            ).fetchone()
        return None if row is None else row["first"]

    # Clients --------------------------------------------------------------------------------
    def upsert_client(self, rec: ClientRecord) -> ClientRecord:
        with self._write() as c:
            c.execute(
                _insert("clients", _CLIENT_COLS) + " ON CONFLICT (node_id) DO UPDATE SET "
                "public_key = excluded.public_key, num_samples = excluded.num_samples, "
                "last_seen_ms = excluded.last_seen_ms, revoked = excluded.revoked, "
                "quarantine = excluded.quarantine",
                tuple(getattr(rec, col) for col in _CLIENT_COLS),
            )
            row = c.execute("SELECT * FROM clients WHERE node_id = ?", (rec.node_id,)).fetchone()
        return _client_from(row)

    def client(self, node_id: str) -> ClientRecord | None:
        with self._read() as c:
            row = c.execute("SELECT * FROM clients WHERE node_id = ?", (node_id,)).fetchone()
        return None if row is None else _client_from(row)

    def clients(self) -> list[ClientRecord]:
        with self._read() as c:
            rows = c.execute("SELECT * FROM clients ORDER BY node_id").fetchall()
        return [_client_from(r) for r in rows]

    def touch_client(
        self, node_id: str, now_ms: int, num_samples: int | None = None
    ) -> ClientRecord:
        with self._write() as c:
            row = c.execute("SELECT * FROM clients WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise UnknownEntity(f"unknown client {node_id!r}")
            old = _client_from(row)
            c.execute(
                "UPDATE clients SET last_seen_ms = ?, num_samples = ? WHERE node_id = ?",
                (
                    max(old.last_seen_ms, now_ms),
                    old.num_samples if num_samples is None else num_samples,
                    node_id,
                ),
            )
            row = c.execute("SELECT * FROM clients WHERE node_id = ?", (node_id,)).fetchone()
        return _client_from(row)

    # Forget requests ------------------------------------------------------------------------
    def create_forget(self, rec: ForgetRecord) -> tuple[ForgetRecord, bool]:
        with self._write() as c:
            row = c.execute(
                "SELECT * FROM forgets WHERE node_id = ? AND request_id = ?",
                (rec.node_id, rec.request_id),
            ).fetchone()
            if row is not None:
                return _forget_from(row), False
            known = c.execute("SELECT 1 FROM clients WHERE node_id = ?", (rec.node_id,))
            taken = c.execute("SELECT 1 FROM forgets WHERE forget_id = ?", (rec.forget_id,))
            check_new_forget(
                rec,
                client_known=known.fetchone() is not None,
                id_taken=taken.fetchone() is not None,
            )
            c.execute(_insert("forgets", _FORGET_COLS), _forget_row(rec))
        return rec, True

    def update_forget(
        self, forget_id: str, *, now_ms: int, **changes: Unpack[ForgetChanges]
    ) -> ForgetRecord:
        with self._write() as c:
            row = c.execute("SELECT * FROM forgets WHERE forget_id = ?", (forget_id,)).fetchone()
            if row is None:
                raise UnknownEntity(f"unknown forget request {forget_id!r}")
            new = advance_forget(_forget_from(row), now_ms, **changes)
            c.execute(
                "UPDATE forgets SET state = ?, reason = ?, receipt_json = ?, progress_json = ?, "
                "updated_ms = ? WHERE forget_id = ?",
                (
                    str(new.state),
                    new.reason,
                    new.receipt_json,
                    new.progress_json,
                    new.updated_ms,
                    forget_id,
                ),
            )
        return new

    def forget(self, forget_id: str) -> ForgetRecord:
        with self._read() as c:
            row = c.execute("SELECT * FROM forgets WHERE forget_id = ?", (forget_id,)).fetchone()
        if row is None:
            raise UnknownEntity(f"unknown forget request {forget_id!r}")
        return _forget_from(row)

    def forgets(self, node_id: str | None = None) -> list[ForgetRecord]:
        with self._read() as c:
            rows = c.execute(
                "SELECT * FROM forgets WHERE ? IS NULL OR node_id = ? "
                "ORDER BY created_ms, forget_id",
                (node_id, node_id),
            ).fetchall()
        return [_forget_from(r) for r in rows]

    # Idempotency and metadata ---------------------------------------------------------------
    def remember_request(self, kind: str, node_id: str, request_id: str, response_json: str) -> str:
        key = (kind, node_id, request_id)
        with self._write() as c:
            c.execute(
                "INSERT INTO requests (kind, node_id, request_id, response_json) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (*key, response_json),
            )
            row = c.execute(
                "SELECT response_json FROM requests "
                "WHERE kind = ? AND node_id = ? AND request_id = ?",
                key,
            ).fetchone()
        return str(row["response_json"])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def get_meta(self, key: str) -> str | None:
        with self._read() as c:
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
