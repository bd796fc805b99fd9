"""The ledger: one contract suite for both ledgers, then SQLite's durability and migrations."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import forsaken.server.ledger_sqlite as ledger_sqlite
from forsaken.common.errors import (
    ConfigError,
    CorruptState,
    DuplicateRequest,
    InvalidPayload,
    Unavailable,
    UnknownEntity,
    WrongStage,
)
from forsaken.server.ledger import (
    ClientRecord,
    ForgetRecord,
    ForgetState,
    IllegalTransition,
    Ledger,
    MemoryLedger,
    RoundRecord,
    RoundStatus,
    SqliteLedger,
)


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def completed(
    n: int, participants: tuple[str, ...] = (), attempt: int = 0, **kw: Any
) -> RoundRecord:
    return RoundRecord(
        n, attempt, "completed", participants, participants, sha(n), sha(n - 1), **kw
    )


def aborted(n: int, attempt: int, reason: str = "deadline") -> RoundRecord:
    return RoundRecord(n, attempt, "aborted", ("a", "b"), ("a",), None, sha(n - 1), reason=reason)


def client(node: str, seen: int = 1000) -> ClientRecord:
    return ClientRecord(node, b"pk-" + node.encode(), 10, seen, seen, False)


def forget_req(
    forget_id: str, node: str = "a", request_id: str = "r1", created: int = 5
) -> ForgetRecord:
    return ForgetRecord(forget_id, node, request_id, "forsaken", (3, 1, 4), created_ms=created)


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    led = MemoryLedger() if request.param == "memory" else SqliteLedger(tmp_path / "l.db")
    yield led
    led.close()


@pytest.fixture
def with_clients(ledger: Ledger) -> Ledger:
    for node in ("a", "b", "c"):
        ledger.upsert_client(client(node))
    return ledger


# --- records --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": "done"},
        {"round": -1},
        {"model_sha256": None},
        {"model_sha256": "../x"},
        {"base_model_sha256": sha(1).upper()},
        {"participants": ("a", "a"), "selected": ("a",)},
        {"test_acc": float("nan")},
        {"test_loss": float("inf")},
        {"duration_s": "slow"},
        {"metrics": {"loss": float("nan")}},
        {"total_samples": 1.5},
    ],
)
def test_round_record_rejects_bad_fields(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"round": 1, "attempt": 0, "status": "completed", "model_sha256": sha(1)}
    with pytest.raises(InvalidPayload):
        RoundRecord(**{**base, **kwargs})


def test_round_record_normalises_and_is_immutable() -> None:
    rec = RoundRecord(1, 0, "completed", ["a"], ["a"], sha(1), metrics={"loss": 1})
    assert rec.status is RoundStatus.COMPLETED and rec.selected == ("a",)
    assert rec.metrics == {"loss": 1.0} and isinstance(rec.metrics["loss"], float)
    with pytest.raises(TypeError):
        rec.metrics["loss"] = 2.0  # type: ignore[index]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"state": "paused"},
        {"sample_ids": (1, -2)},
        {"sample_ids": ("1",)},
        {"receipt_json": "{not json"},
        {"request_id": ""},
    ],
)
def test_forget_record_rejects_bad_fields(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"forget_id": "f", "node_id": "a", "request_id": "r", "method": "pga"}
    with pytest.raises(InvalidPayload):
        ForgetRecord(**{**base, **kwargs})


# --- rounds ---------------------------------------------------------------------------------


def test_empty_ledger(ledger: Ledger) -> None:
    assert ledger.rounds() == []
    assert ledger.last_completed() is None
    assert ledger.last_checkpoint_before(5) is None
    with pytest.raises(UnknownEntity):
        ledger.completed_round(0)


def test_rounds_round_trip_in_order(with_clients: Ledger) -> None:
    led = with_clients
    r0 = RoundRecord(0, 0, "completed", model_sha256=sha(0), started_ms=1, finished_ms=1)
    r1 = completed(1, ("a", "b"), test_acc=0.91, test_loss=0.3, metrics={"loss": 0.25})
    r2a = aborted(2, 0)
    r2 = completed(2, ("b",), attempt=1, total_samples=40, duration_s=1.5, reason="")
    for rec in (r0, r1, r2a, r2):
        led.record_round(rec)
    assert led.rounds() == [r0, r1, r2a, r2]
    assert led.rounds(limit=2) == [r2a, r2]
    assert led.rounds(limit=10) == [r0, r1, r2a, r2]
    assert led.rounds(limit=0) == []
    with pytest.raises(InvalidPayload):
        led.rounds(limit=-1)
    assert led.last_completed() == r2
    assert led.completed_round(2) == r2
    assert led.completed_round(0) == r0


def test_completed_round_is_recorded_once(with_clients: Ledger) -> None:
    led = with_clients
    led.record_round(completed(1, ("a",)))
    with pytest.raises(DuplicateRequest):
        led.record_round(completed(1, ("a",)))
    with pytest.raises(DuplicateRequest):  # another attempt cannot complete it either
        led.record_round(completed(1, ("b",), attempt=1))
    assert led.rounds() == [completed(1, ("a",))]
    assert led.contributions("b") == []


def test_aborted_attempts_are_history(with_clients: Ledger) -> None:
    led = with_clients
    led.record_round(aborted(1, 0, "too few updates"))
    led.record_round(aborted(1, 1, "deadline"))
    with pytest.raises(DuplicateRequest):
        led.record_round(aborted(1, 1, "again"))
    led.record_round(completed(1, ("a",), attempt=2))
    assert [(r.attempt, r.status, r.reason) for r in led.rounds()] == [
        (0, "aborted", "too few updates"),
        (1, "aborted", "deadline"),
        (2, "completed", ""),
    ]
    assert led.contributions("a") == [1], "aborted attempts are not contributions"
    with pytest.raises(UnknownEntity):
        led.completed_round(3)


def test_contributions_and_rollback_point(with_clients: Ledger) -> None:
    led = with_clients
    led.record_round(RoundRecord(0, 0, "completed", model_sha256=sha(0)))
    led.record_round(completed(1, ("a", "b")))
    led.record_round(completed(2, ("a",)))
    led.record_round(completed(3, ("b", "c")))
    led.record_round(completed(5, ("c",)))
    assert led.contributions("a") == [1, 2]
    assert led.contributions("c") == [3, 5]
    assert led.contributions("nobody") == []
    assert led.first_contribution("c") == 3
    assert led.first_contribution("nobody") is None
    rollback = led.last_checkpoint_before(led.first_contribution("c") or 0)
    assert rollback is not None and rollback.round == 2 and rollback.model_sha256 == sha(2)
    assert led.last_checkpoint_before(1) == led.completed_round(0)
    assert led.last_checkpoint_before(0) is None
    assert led.last_checkpoint_before(5) == led.completed_round(3)  # round 4 never completed


def test_completed_round_with_unknown_participant_records_nothing(with_clients: Ledger) -> None:
    led = with_clients
    with pytest.raises(UnknownEntity, match="zed"):
        led.record_round(completed(1, ("a", "zed")))
    assert led.rounds() == []
    assert led.contributions("a") == []
    led.record_round(RoundRecord(1, 0, "aborted", ("zed",), ("zed",)))  # history only


# --- clients --------------------------------------------------------------------------------


def test_clients(ledger: Ledger) -> None:
    assert ledger.client("a") is None
    stored = ledger.upsert_client(client("b", seen=100))
    assert stored == client("b", seen=100)
    ledger.upsert_client(client("a"))
    again = ledger.upsert_client(ClientRecord("b", b"new-key", 7, 999, 500, True))
    assert again == ClientRecord("b", b"new-key", 7, 100, 500, True), "first_seen is kept"
    assert ledger.client("b") == again
    assert [c.node_id for c in ledger.clients()] == ["a", "b"]


def test_touch_client(ledger: Ledger) -> None:
    ledger.upsert_client(client("a", seen=100))
    assert ledger.touch_client("a", 200, 33) == ClientRecord("a", b"pk-a", 33, 100, 200, False)
    assert ledger.touch_client("a", 150).last_seen_ms == 200, "last_seen never moves back"
    assert ledger.client("a") == ClientRecord("a", b"pk-a", 33, 100, 200, False)
    with pytest.raises(UnknownEntity):
        ledger.touch_client("zed", 1)


# --- forget requests ------------------------------------------------------------------------

# Written out here rather than read from the code, so a wrong table in the code fails the test.
LEGAL = {
    ("requested", "unlearning"),
    ("unlearning", "recovering"),
    ("recovering", "verifying"),
    ("verifying", "completed"),
    ("requested", "failed"),
    ("unlearning", "failed"),
    ("recovering", "failed"),
    ("verifying", "failed"),
    # Staying put is how progress is reported, but only while the request is still open.
    ("requested", "requested"),
    ("unlearning", "unlearning"),
    ("recovering", "recovering"),
    ("verifying", "verifying"),
}
CHAIN = ["requested", "unlearning", "recovering", "verifying", "completed"]


def _drive_to(led: Ledger, forget_id: str, state: str) -> ForgetRecord:
    """Walk a fresh request to `state` along legal transitions."""
    rec, _ = led.create_forget(forget_req(forget_id))
    path = CHAIN[: CHAIN.index(state) + 1] if state in CHAIN else ["requested", "failed"]
    for step, target in enumerate(path[1:], start=1):
        rec = led.update_forget(forget_id, state=target, now_ms=10 + step)
    return rec


@pytest.mark.parametrize(
    ("source", "target"), list(itertools.product([s.value for s in ForgetState], repeat=2))
)
def test_forget_transitions(with_clients: Ledger, source: str, target: str) -> None:
    led = with_clients
    before = _drive_to(led, "f1", source)
    assert before.state == source
    if (source, target) in LEGAL:
        after = led.update_forget("f1", state=target, now_ms=99, progress_json='{"step": 1}')
        assert (after.state, after.updated_ms, after.progress_json) == (target, 99, '{"step": 1}')
        assert led.forget("f1") == after
    else:
        with pytest.raises(IllegalTransition, match=f"{source}"):
            led.update_forget("f1", state=target, now_ms=99)
        assert led.forget("f1") == before, "a rejected transition leaves the record unchanged"


def test_illegal_transition_is_a_wrong_stage_error() -> None:
    assert issubclass(IllegalTransition, WrongStage)


def test_terminal_requests_accept_no_edits(with_clients: Ledger) -> None:
    led = with_clients
    done = _drive_to(led, "f1", "completed")
    with pytest.raises(IllegalTransition):
        led.update_forget("f1", receipt_json='{"asr": 0}', now_ms=100)
    assert led.forget("f1") == done


def test_create_forget_is_idempotent_by_node_and_request_id(with_clients: Ledger) -> None:
    led = with_clients
    first, created = led.create_forget(forget_req("f1", "a", "r1"))
    assert created and first == forget_req("f1", "a", "r1")
    retry, created = led.create_forget(forget_req("f2", "a", "r1"))  # a retry mints a new id
    assert (retry, created) == (first, False)
    other, created = led.create_forget(forget_req("f3", "b", "r1"))  # same request id, other node
    assert created and other.forget_id == "f3"
    with pytest.raises(DuplicateRequest):
        led.create_forget(forget_req("f1", "c", "r9"))
    with pytest.raises(UnknownEntity):
        led.create_forget(forget_req("f4", "zed", "r1"))
    with pytest.raises(InvalidPayload):
        led.create_forget(ForgetRecord("f5", "a", "r5", "pga", state="unlearning"))
    assert [f.forget_id for f in led.forgets()] == ["f1", "f3"]


def test_forget_updates_and_queries(with_clients: Ledger) -> None:
    led = with_clients
    led.create_forget(forget_req("f2", "b", "r1", created=20))
    led.create_forget(forget_req("f1", "a", "r1", created=10))
    led.create_forget(forget_req("f3", "a", "r2", created=30))
    led.update_forget("f1", state="unlearning", progress_json='{"round": 4}', now_ms=40)
    led.update_forget("f3", state="failed", reason="client left", now_ms=41)
    done = led.forget("f1")
    assert (done.state, done.progress_json, done.updated_ms) == ("unlearning", '{"round": 4}', 40)
    assert done.sample_ids == (3, 1, 4) and done.created_ms == 10
    assert led.forget("f3").reason == "client left"
    assert [f.forget_id for f in led.forgets()] == ["f1", "f2", "f3"]
    assert [f.forget_id for f in led.forgets("a")] == ["f1", "f3"]
    assert [f.forget_id for f in led.pending_forgets()] == ["f1", "f2"]
    with pytest.raises(UnknownEntity):
        led.forget("nope")
    with pytest.raises(UnknownEntity):
        led.update_forget("nope", state="failed", now_ms=1)
    with pytest.raises(InvalidPayload):
        led.update_forget("f1", receipt_json="{broken", now_ms=50)
    with pytest.raises(InvalidPayload):
        led.update_forget("f1", state="paused", now_ms=50)
    assert led.forget("f1") == done


# --- idempotency records, metadata, lifecycle -----------------------------------------------


def test_remember_request_keeps_the_first_response(ledger: Ledger) -> None:
    assert ledger.remember_request("push", "a", "r1", '{"ok": 1}') == '{"ok": 1}'
    assert ledger.remember_request("push", "a", "r1", '{"ok": 2}') == '{"ok": 1}'
    assert ledger.remember_request("push", "b", "r1", '{"ok": 3}') == '{"ok": 3}'
    assert ledger.remember_request("forget", "a", "r1", '{"ok": 4}') == '{"ok": 4}'


def test_meta(ledger: Ledger) -> None:
    assert ledger.get_meta("config_digest") is None
    ledger.set_meta("config_digest", "abc")
    ledger.set_meta("config_digest", "def")
    assert ledger.get_meta("config_digest") == "def"


def test_closed_ledger_is_unavailable(ledger: Ledger) -> None:
    with ledger as same:
        assert same is ledger
    with pytest.raises(Unavailable):
        ledger.rounds()
    with pytest.raises(Unavailable):
        ledger.set_meta("k", "v")
    ledger.close()


# --- SQLite: durability, concurrency, migrations --------------------------------------------


def _fill(led: Ledger) -> None:
    led.upsert_client(client("a"))
    led.record_round(RoundRecord(0, 0, "completed", model_sha256=sha(0)))
    led.record_round(completed(1, ("a",), test_acc=0.5, metrics={"loss": 0.75}))
    led.create_forget(forget_req("f1"))
    led.update_forget("f1", state="unlearning", now_ms=7)
    led.remember_request("push", "a", "r1", "{}")
    led.set_meta("digest", "d1")


_READ_BACK = """
import dataclasses, json, sys
from forsaken.server.ledger import SqliteLedger
def plain(rec):
    d = dataclasses.asdict(rec)
    return {k: (dict(v) if k == "metrics" else v.hex() if isinstance(v, bytes) else v)
            for k, v in d.items()}
with SqliteLedger(sys.argv[1]) as led:
    print(json.dumps({
        "rounds": [plain(r) for r in led.rounds()],
        "clients": [plain(c) for c in led.clients()],
        "forgets": [plain(f) for f in led.forgets()],
        "contributions": led.contributions("a"),
        "request": led.remember_request("push", "a", "r1", "other"),
        "digest": led.get_meta("digest"),
    }))
"""


def test_another_process_reads_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        _fill(led)
    out = subprocess.run(
        [sys.executable, "-c", _READ_BACK, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert [r["round"] for r in seen["rounds"]] == [0, 1]
    assert seen["rounds"][1]["metrics"] == {"loss": 0.75}
    assert seen["rounds"][1]["test_acc"] == 0.5
    assert seen["clients"][0]["public_key"] == b"pk-a".hex()
    assert seen["forgets"][0]["state"] == "unlearning"
    assert seen["forgets"][0]["sample_ids"] == [3, 1, 4]
    assert seen["contributions"] == [1]
    assert (seen["request"], seen["digest"]) == ("{}", "d1")


def test_sqlite_settings(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        conn = led._conn  # the pragmas below are per connection
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert led.schema_version() == len(ledger_sqlite.MIGRATIONS)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


# The child records completed rounds 0, 1, 2, ... each with a contribution, printing every
# round number once record_round has returned: those are the writes it acknowledged.
_WRITER = """
import sys
from forsaken.server.ledger import ClientRecord, RoundRecord, SqliteLedger
led = SqliteLedger(sys.argv[1])
led.upsert_client(ClientRecord("a", b"k"))
i = 0
while True:
    led.record_round(RoundRecord(i, 0, "completed", ("a",), ("a",), f"{i:064x}"))
    print(i, flush=True)
    i += 1
"""


def test_sigkill_mid_writes_keeps_a_prefix_of_acknowledged_writes(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        acked = [int(child.stdout.readline()) for _ in range(30)]  # type: ignore[union-attr]
    finally:
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    acked += [int(line) for line in rest.splitlines()]
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with SqliteLedger(path) as led:
        stored = [r.round for r in led.rounds()]
        assert stored == list(range(len(stored))), "not a prefix"
        assert stored[: len(acked)] == acked, "an acknowledged write was lost"
        assert led.contributions("a") == stored, "a round without its contribution"


def test_threads_share_one_ledger(tmp_path: Path) -> None:
    with SqliteLedger(tmp_path / "l.db") as led:
        for node in "abcdef":
            led.upsert_client(client(node))

        def work(node: str) -> None:
            for i in range(20):
                led.touch_client(node, 2000 + i, i)
                led.remember_request("push", node, f"r{i}", node)
                led.record_round(RoundRecord(i, "abcdef".index(node), "aborted", (node,)))

        threads = [threading.Thread(target=work, args=(n,)) for n in "abcdef"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(led.rounds()) == 120
        assert all(c.last_seen_ms == 2019 and c.num_samples == 19 for c in led.clients())
        assert led.remember_request("push", "c", "r7", "x") == "c"


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    SqliteLedger(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    with pytest.raises(CorruptState, match="v99"):
        SqliteLedger(path)


def test_migrations_run_forward_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.db"
    with SqliteLedger(path) as led:
        _fill(led)
        v1 = led.schema_version()
    extra = ("ALTER TABLE meta ADD COLUMN note TEXT NOT NULL DEFAULT ''",)
    monkeypatch.setattr(ledger_sqlite, "MIGRATIONS", (*ledger_sqlite.MIGRATIONS, extra))
    with SqliteLedger(path) as led:
        assert led.schema_version() == v1 + 1
        assert led.get_meta("digest") == "d1"
    with SqliteLedger(path) as led:  # reopening does not apply it again (it would fail)
        assert led.schema_version() == v1 + 1


def test_failed_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.db"
    SqliteLedger(path).close()
    broken = ("CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL")
    monkeypatch.setattr(ledger_sqlite, "MIGRATIONS", (*ledger_sqlite.MIGRATIONS, broken))
    with pytest.raises(CorruptState):
        SqliteLedger(path)
    monkeypatch.undo()
    with SqliteLedger(path) as led:
        assert led.schema_version() == len(ledger_sqlite.MIGRATIONS)
    raw = sqlite3.connect(path)
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    raw.close()
    assert "half_done" not in tables


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(CorruptState, match=str(path)):
        SqliteLedger(path)
    with pytest.raises(ConfigError):
        SqliteLedger(tmp_path / "missing-dir" / "l.db")


def test_a_ledger_of_the_first_schema_opens_with_its_records_and_new_defaults(
    tmp_path: Path,
) -> None:
    """A state directory written before quarantines and operator forgets still opens."""
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    for statement in ledger_sqlite.MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    raw.execute("INSERT INTO schema_version (version) VALUES (1)")
    raw.execute("INSERT INTO clients VALUES ('a', x'00', 5, 1, 2, 0)")
    raw.execute(
        "INSERT INTO forgets VALUES ('f1', 'a', 'r1', 'retrain', '[]', 'requested', '', 3, 3, "
        "'{}', '{}')"
    )
    raw.commit()
    raw.close()
    with SqliteLedger(path) as led:
        assert led.schema_version() == len(ledger_sqlite.MIGRATIONS)
        (a,) = led.clients()
        assert (a.node_id, a.num_samples, a.quarantine) == ("a", 5, "")
        f1 = led.forget("f1")
        assert f1.method == "retrain" and f1.initiated_by == ""
        led.upsert_client(dataclasses.replace(a, quarantine="3 faults"))
        assert led.client("a").quarantine == "3 faults"
