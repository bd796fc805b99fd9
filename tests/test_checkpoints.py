"""The checkpoint store: one contract suite for both stores, then the file store's durability."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from forsaken.common.errors import CorruptState, InvalidPayload, UnknownEntity
from forsaken.server.checkpoints import (
    CheckpointStore,
    FileCheckpointStore,
    MemoryCheckpointStore,
)

PAYLOAD = bytes(range(256)) * 64
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "memory":
        return MemoryCheckpointStore()
    return FileCheckpointStore(tmp_path / "state")


# --- the contract ---------------------------------------------------------------------------


def test_round_trip_returns_sha256_address(store: CheckpointStore) -> None:
    assert store.put(PAYLOAD, {"round": 3, "note": "x", "acc": 0.5}) == SHA
    assert store.get(SHA) == PAYLOAD
    assert dict(store.meta(SHA)) == {"round": 3, "note": "x", "acc": 0.5}
    assert store.has(SHA)
    assert store.addresses() == {SHA}


def test_empty_payload_is_a_valid_checkpoint(store: CheckpointStore) -> None:
    sha = store.put(b"", {})
    assert sha == hashlib.sha256(b"").hexdigest()
    assert store.get(sha) == b""


def test_put_is_idempotent_and_keeps_first_meta(store: CheckpointStore) -> None:
    first = store.put(PAYLOAD, {"round": 1})
    second = store.put(bytearray(PAYLOAD), {"round": 2})
    assert first == second == SHA
    assert dict(store.meta(SHA)) == {"round": 1}
    assert store.addresses() == {SHA}


def test_unknown_address(store: CheckpointStore) -> None:
    with pytest.raises(UnknownEntity):
        store.get(SHA)
    with pytest.raises(UnknownEntity):
        store.meta(SHA)
    assert not store.has(SHA)


BAD_ADDRESSES = [
    "",
    SHA.upper(),
    SHA[:-1],
    SHA + "0",
    "g" * 64,
    SHA + "\n",
    "../" + SHA[3:],
    "/" + SHA[1:],
    "..",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_addresses_are_rejected(store: CheckpointStore, address: str) -> None:
    store.put(PAYLOAD, {})
    for call in (store.get, store.has, store.delete, store.meta):
        with pytest.raises(InvalidPayload):
            call(address)
    with pytest.raises(InvalidPayload):
        store.gc([SHA, address])
    assert store.get(SHA) == PAYLOAD, "a rejected gc must not delete anything"


@pytest.mark.parametrize(
    "meta", [{"flag": True}, {"x": float("nan")}, {"x": float("inf")}, {"x": [1]}, {1: "a"}]
)
def test_bad_meta_is_rejected(store: CheckpointStore, meta: dict) -> None:
    with pytest.raises(InvalidPayload):
        store.put(PAYLOAD, meta)
    assert not store.has(SHA)


def test_delete(store: CheckpointStore) -> None:
    store.put(PAYLOAD, {})
    assert store.delete(SHA) is True
    assert store.delete(SHA) is False
    with pytest.raises(UnknownEntity):
        store.get(SHA)


def test_gc_keeps_referenced_and_removes_the_rest(store: CheckpointStore) -> None:
    shas = [store.put(bytes([i]) * 100, {"i": i}) for i in range(4)]
    removed = store.gc({shas[1], shas[3]})
    assert removed == sorted([shas[0], shas[2]])
    assert store.addresses() == {shas[1], shas[3]}
    assert store.get(shas[3]) == bytes([3]) * 100
    assert store.gc({shas[1], shas[3]}) == []


def test_concurrent_puts_of_the_same_bytes(store: CheckpointStore) -> None:
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.put(PAYLOAD, {}))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [SHA] * 8
    assert store.get(SHA) == PAYLOAD


# --- the file store on disk -----------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> FileCheckpointStore:
    return FileCheckpointStore(tmp_path / "state")


def test_layout_is_blob_plus_json_sidecar(files: FileCheckpointStore, tmp_path: Path) -> None:
    files.put(PAYLOAD, {"round": 7})
    models = tmp_path / "state" / "models"
    assert sorted(p.name for p in models.iterdir()) == [f"{SHA}.bin", f"{SHA}.json"]
    assert (models / f"{SHA}.bin").read_bytes() == PAYLOAD
    sidecar = json.loads((models / f"{SHA}.json").read_text())
    assert sidecar == {"sha256": SHA, "size": len(PAYLOAD), "meta": {"round": 7}}


def test_idempotent_put_does_not_rewrite(files: FileCheckpointStore) -> None:
    files.put(PAYLOAD, {})
    before = os.stat(files.blob_path(SHA))
    files.put(PAYLOAD, {})
    after = os.stat(files.blob_path(SHA))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_new_instance_reads_what_an_old_one_wrote(tmp_path: Path) -> None:
    FileCheckpointStore(tmp_path / "s").put(PAYLOAD, {"round": 1})
    again = FileCheckpointStore(tmp_path / "s")
    assert again.get(SHA) == PAYLOAD
    assert dict(again.meta(SHA)) == {"round": 1}


def test_corrupted_blob_raises_corrupt_state_naming_the_file(files: FileCheckpointStore) -> None:
    files.put(PAYLOAD, {})
    blob = files.blob_path(SHA)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0x01
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptState, match=str(blob)):
        files.get(SHA)


def test_truncated_blob_raises_corrupt_state(files: FileCheckpointStore) -> None:
    files.put(PAYLOAD, {})
    blob = files.blob_path(SHA)
    blob.write_bytes(PAYLOAD[:1000])
    with pytest.raises(CorruptState, match="truncated") as err:
        files.get(SHA)
    assert str(blob) in str(err.value)


def test_put_of_the_right_bytes_repairs_a_damaged_blob(files: FileCheckpointStore) -> None:
    files.put(PAYLOAD, {})
    files.blob_path(SHA).write_bytes(b"garbage")
    assert files.put(PAYLOAD, {}) == SHA
    assert files.get(SHA) == PAYLOAD


def test_stray_temp_file_is_ignored_by_get_and_cleaned_by_gc(files: FileCheckpointStore) -> None:
    kept = files.put(b"kept", {})
    stray = files.directory / ".partialwrite.tmp"
    stray.write_bytes(PAYLOAD[:500])  # what a crash mid-write leaves behind
    orphan = files.directory / f"{SHA}.json"  # a sidecar whose blob never landed
    orphan.write_text(json.dumps({"sha256": SHA, "size": len(PAYLOAD), "meta": {}}))
    with pytest.raises(UnknownEntity):
        files.get(SHA)
    assert not files.has(SHA)
    assert files.addresses() == {kept}
    assert files.gc({kept}) == []
    assert sorted(p.name for p in files.directory.iterdir()) == [f"{kept}.bin", f"{kept}.json"]
    assert files.get(kept) == b"kept"


def test_gc_leaves_files_it_does_not_own(files: FileCheckpointStore) -> None:
    notes = files.directory / "README"
    notes.write_text("operator notes")
    files.gc(set())
    assert notes.exists()


# A child that blocks inside the blob's fsync (after the bytes are written, before the rename)
# so the parent can SIGKILL it at exactly the worst moment.
_BLOCK_IN_WRITE = """
import os, stat, sys, time
from forsaken.server.checkpoints import FileCheckpointStore
store = FileCheckpointStore(sys.argv[1])
print(store.put(b"acknowledged", {}), flush=True)
payload = os.urandom(1 << 20)
real_fsync = os.fsync
def fsync(fd):
    real_fsync(fd)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size == len(payload):
        print("in-write", flush=True)
        time.sleep(60)
os.fsync = fsync
store.put(payload, {})
"""

# A child that writes blobs as fast as it can; the parent kills it at an arbitrary moment.
_WRITE_LOOP = """
import os, sys
from forsaken.server.checkpoints import FileCheckpointStore
store = FileCheckpointStore(sys.argv[1])
while True:
    print(store.put(os.urandom(4 << 20), {}), flush=True)
"""


def _spawn(script: str, directory: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(directory)], stdout=subprocess.PIPE, text=True
    )


def _kill(child: subprocess.Popen[str]) -> list[str]:
    """SIGKILL the child and return every line it printed (its acknowledgements)."""
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    return rest.splitlines()


def test_sigkill_mid_write_leaves_no_blob_under_its_final_name(tmp_path: Path) -> None:
    child = _spawn(_BLOCK_IN_WRITE, tmp_path / "s")
    try:
        acked = child.stdout.readline().strip()  # type: ignore[union-attr]
        assert child.stdout.readline().strip() == "in-write"  # type: ignore[union-attr]
    finally:
        _kill(child)
    store = FileCheckpointStore(tmp_path / "s")
    leftovers = [p for p in store.directory.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1 << 20
    assert store.addresses() == {acked}
    assert store.get(acked) == b"acknowledged"
    assert store.gc({acked}) == []
    names = sorted(p.name for p in store.directory.iterdir())
    assert names == [f"{acked}.bin", f"{acked}.json"], "temp file and orphan sidecar remain"


def test_sigkill_at_random_keeps_every_acknowledged_blob_whole(tmp_path: Path) -> None:
    child = _spawn(_WRITE_LOOP, tmp_path / "s")
    try:
        acked = [child.stdout.readline().strip() for _ in range(3)]  # type: ignore[union-attr]
        time.sleep(0.05)
    finally:
        acked += _kill(child)
    store = FileCheckpointStore(tmp_path / "s")
    assert set(acked) <= store.addresses()
    for sha in store.addresses():  # anything under a final name verifies, acked or not
        assert hashlib.sha256(store.get(sha)).hexdigest() == sha
        assert store.meta(sha) == {}
    store.gc(store.addresses())
    assert not any(p.name.endswith(".tmp") for p in store.directory.iterdir())
