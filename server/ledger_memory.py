"""The ledger contract held in process memory: for tests and in-process runs.

Records are frozen and hold only immutable values, so they are shared rather than copied.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Unpack

from forsaken.common.errors import Unavailable, UnknownEntity
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


class MemoryLedger(Ledger):
    """A `Ledger` in dicts, guarded by one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._rounds: dict[tuple[int, int], RoundRecord] = {}
        self._clients: dict[str, ClientRecord] = {}
        self._forgets: dict[str, ForgetRecord] = {}
        self._requests: dict[tuple[str, str, str], str] = {}
        self._meta: dict[str, str] = {}

    def _guard(self) -> threading.Lock:
        if self._closed:
            raise Unavailable("ledger is closed")
        return self._lock

    def _completed(self) -> list[RoundRecord]:
        recs = (r for r in self._rounds.values() if r.status is RoundStatus.COMPLETED)
        return sorted(recs, key=lambda r: r.round)

    def record_round(self, rec: RoundRecord) -> None:
        with self._guard():
            check_new_round(
                rec,
                attempt_exists=(rec.round, rec.attempt) in self._rounds,
                completed_exists=any(r.round == rec.round for r in self._completed()),
                unknown_participants=[p for p in rec.participants if p not in self._clients],
            )
            self._rounds[(rec.round, rec.attempt)] = rec

    def rounds(self, limit: int | None = None) -> list[RoundRecord]:
        with self._guard():
            ordered = [self._rounds[k] for k in sorted(self._rounds)]
        return ordered[len(ordered) - check_limit(limit, len(ordered)) :]

    def last_completed(self) -> RoundRecord | None:
        with self._guard():
            done = self._completed()
        return done[-1] if done else None

    def completed_round(self, n: int) -> RoundRecord:
        with self._guard():
            for r in self._completed():
                if r.round == n:
                    return r
        raise UnknownEntity(f"round {n} is not completed")

    def last_checkpoint_before(self, n: int) -> RoundRecord | None:
        with self._guard():
            before = [r for r in self._completed() if r.round < n]
        return before[-1] if before else None

    def contributions(self, node_id: str) -> list[int]:
        with self._guard():
            return [r.round for r in self._completed() if node_id in r.participants]

    def upsert_client(self, rec: ClientRecord) -> ClientRecord:
        with self._guard():
            old = self._clients.get(rec.node_id)
            if old is not None:
                rec = replace(rec, first_seen_ms=old.first_seen_ms)
            self._clients[rec.node_id] = rec
            return rec

    def client(self, node_id: str) -> ClientRecord | None:
        with self._guard():
            return self._clients.get(node_id)

    def clients(self) -> list[ClientRecord]:
        with self._guard():
            return [self._clients[k] for k in sorted(self._clients)]

    def touch_client(
        self, node_id: str, now_ms: int, num_samples: int | None = None
    ) -> ClientRecord:
        with self._guard():
            old = self._clients.get(node_id)
            if old is None:
                raise UnknownEntity(f"unknown client {node_id!r}")
            new = replace(
                old,
                last_seen_ms=max(old.last_seen_ms, now_ms),
                num_samples=old.num_samples if num_samples is None else num_samples,
            )
            self._clients[node_id] = new
            return new

    def create_forget(self, rec: ForgetRecord) -> tuple[ForgetRecord, bool]:
        with self._guard():
            for f in self._forgets.values():
                if (f.node_id, f.request_id) == (rec.node_id, rec.request_id):
                    return f, False
            known, taken = rec.node_id in self._clients, rec.forget_id in self._forgets
            check_new_forget(rec, client_known=known, id_taken=taken)
            self._forgets[rec.forget_id] = rec
            return rec, True

    def update_forget(
        self, forget_id: str, *, now_ms: int, **changes: Unpack[ForgetChanges]
    ) -> ForgetRecord:
        with self._guard():
            cur = self._forgets.get(forget_id)
            if cur is None:
                raise UnknownEntity(f"unknown forget request {forget_id!r}")
            new = advance_forget(cur, now_ms, **changes)
            self._forgets[forget_id] = new
            return new

    def forget(self, forget_id: str) -> ForgetRecord:
        with self._guard():
            if forget_id not in self._forgets:
                raise UnknownEntity(f"unknown forget request {forget_id!r}")
            return self._forgets[forget_id]

    def forgets(self, node_id: str | None = None) -> list[ForgetRecord]:
        with self._guard():
            found = [f for f in self._forgets.values() if node_id in (None, f.node_id)]
        return sorted(found, key=lambda f: (f.created_ms, f.forget_id))

    def remember_request(self, kind: str, node_id: str, request_id: str, response_json: str) -> str:
        with self._guard():
            return self._requests.setdefault((kind, node_id, request_id), response_json)

    def set_meta(self, key: str, value: str) -> None:
        with self._guard():
            self._meta[key] = value

    def get_meta(self, key: str) -> str | None:
        with self._guard():
            return self._meta.get(key)

    def close(self) -> None:
        self._closed = True
