"""Content-addressed model store: a payload's address is the hex SHA-256 of its bytes.

Blobs are opaque bytes (the tensor codec's output); this module never interprets or pickles
them. Each blob has a small JSON sidecar with its digest, size and caller-supplied metadata.

File layout under the store's directory::

    models/<sha256hex>.bin    the payload, written atomically
    models/<sha256hex>.json   {"sha256": ..., "size": ..., "meta": {...}}
    models/.*.tmp             in-flight writes; leftovers of a crash, removed by gc()

Write order keeps one invariant across crashes: a blob under its final name always has a
sidecar. The sidecar is written before the blob and deleted after it, so a crash can leave an
orphan sidecar or a temp file (both invisible to readers and removed by gc()), never a blob
without its sidecar and never a partially written blob under its final name.

The file store assumes one process owns the directory (the server daemon); a lock makes it
safe across that process's threads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from forsaken.common.errors import CorruptState, InvalidPayload, UnknownEntity
from forsaken.common.fsutil import atomic_write, fsync_dir

MetaValue = str | int | float
Meta = Mapping[str, MetaValue]

_ADDRESS = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX = "."
_TMP_SUFFIX = ".tmp"


def address_of(payload: bytes) -> str:
    """The address a payload is stored under."""
    return hashlib.sha256(payload).hexdigest()


def check_address(sha256hex: str) -> str:
    """Return the address unchanged, or raise `InvalidPayload`.

    Addresses become file names, so anything but 64 lowercase hex characters is refused
    before it gets near the file system (no `../`, no separators, no case aliases).
    """
    if not isinstance(sha256hex, str) or _ADDRESS.fullmatch(sha256hex) is None:
        raise InvalidPayload(f"not a SHA-256 address: {sha256hex!r:.80}")
    return sha256hex


def _check_meta(meta: Meta) -> dict[str, MetaValue]:
    out: dict[str, MetaValue] = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise InvalidPayload(f"checkpoint meta key must be a string, got {key!r}")
        # bool is an int subclass but would not round-trip as the type the caller declared.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidPayload(f"checkpoint meta {key!r} must be str, int or float")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidPayload(f"checkpoint meta {key!r} must be finite, got {value}")
        out[key] = value
    return out


class CheckpointStore(ABC):
    """Durable, content-addressed storage of model payloads."""

    @abstractmethod
    def put(self, payload: bytes, meta: Meta) -> str:
        """Store `payload` and return its address.

        Idempotent: storing bytes that are already present returns the same address and keeps
        the metadata of the first put.
        """

    @abstractmethod
    def get(self, sha256hex: str) -> bytes:
        """The verified payload; `UnknownEntity` if absent, `CorruptState` if damaged."""

    @abstractmethod
    def meta(self, sha256hex: str) -> Mapping[str, MetaValue]:
        """The metadata given when the payload was first stored."""

    @abstractmethod
    def has(self, sha256hex: str) -> bool:
        """Whether a payload is stored under this address (its content is not verified)."""

    @abstractmethod
    def addresses(self) -> set[str]:
        """Every stored address."""

    @abstractmethod
    def delete(self, sha256hex: str) -> bool:
        """Remove a payload (retention only); returns whether it was present."""

    @abstractmethod
    def gc(self, keep: Iterable[str]) -> list[str]:
        """Remove every payload not in `keep` and any crash leftovers.

        Returns the removed addresses, sorted.
        """


class MemoryCheckpointStore(CheckpointStore):
    """The same contract held in a dict; for tests and in-process runs."""

    def __init__(self) -> None:
        self._blobs: dict[str, tuple[bytes, Mapping[str, MetaValue]]] = {}
        self._lock = threading.Lock()

    def put(self, payload: bytes, meta: Meta) -> str:
        data = bytes(payload)
        clean = MappingProxyType(_check_meta(meta))
        sha = address_of(data)
        with self._lock:
            self._blobs.setdefault(sha, (data, clean))
        return sha

    def get(self, sha256hex: str) -> bytes:
        return self._entry(sha256hex)[0]

    def meta(self, sha256hex: str) -> Mapping[str, MetaValue]:
        return self._entry(sha256hex)[1]

    def has(self, sha256hex: str) -> bool:
        return check_address(sha256hex) in self._blobs

    def addresses(self) -> set[str]:
        with self._lock:
            return set(self._blobs)

    def delete(self, sha256hex: str) -> bool:
        with self._lock:
            return self._blobs.pop(check_address(sha256hex), None) is not None

    def gc(self, keep: Iterable[str]) -> list[str]:
        kept = {check_address(a) for a in keep}
        with self._lock:
            doomed = sorted(a for a in self._blobs if a not in kept)
            for a in doomed:
                del self._blobs[a]
        return doomed

    def _entry(self, sha256hex: str) -> tuple[bytes, Mapping[str, MetaValue]]:
        entry = self._blobs.get(check_address(sha256hex))
        if entry is None:
            raise UnknownEntity(f"no checkpoint {sha256hex}")
        return entry


class FileCheckpointStore(CheckpointStore):
    """Blobs as files under `<directory>/models`, each write atomic and fsynced."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory) / "models"
        created = not self._dir.exists()
        self._dir.mkdir(parents=True, exist_ok=True)
        if created:
            # A fresh directory entry is only durable once its parent is synced.
            fsync_dir(self._dir.parent)
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        return self._dir

    def blob_path(self, sha256hex: str) -> Path:
        return self._dir / f"{check_address(sha256hex)}.bin"

    def _sidecar_path(self, sha256hex: str) -> Path:
        return self._dir / f"{check_address(sha256hex)}.json"

    def put(self, payload: bytes, meta: Meta) -> str:
        data = bytes(payload)
        clean = _check_meta(meta)
        sha = address_of(data)
        blob = self.blob_path(sha)
        with self._lock:
            if blob.exists() and self._verifies(blob, sha):
                return sha
            # Absent, or present but damaged: a put of the right bytes repairs it in place.
            sidecar = {"sha256": sha, "size": len(data), "meta": clean}
            text = json.dumps(sidecar, sort_keys=True, allow_nan=False).encode()
            self._write_atomic(self._sidecar_path(sha), text)
            self._write_atomic(blob, data)
        return sha

    def get(self, sha256hex: str) -> bytes:
        blob = self.blob_path(sha256hex)
        try:
            data = blob.read_bytes()
        except FileNotFoundError:
            raise UnknownEntity(f"no checkpoint {sha256hex}") from None
        if address_of(data) != sha256hex:
            expected = self._expected_size(sha256hex)
            if expected is not None and len(data) < expected:
                raise CorruptState(f"{blob} is truncated: {len(data)} of {expected} bytes")
            raise CorruptState(f"{blob} does not match its SHA-256 address")
        return data

    def meta(self, sha256hex: str) -> Mapping[str, MetaValue]:
        if not self.has(sha256hex):
            raise UnknownEntity(f"no checkpoint {sha256hex}")
        doc = self._read_sidecar(sha256hex)
        meta = doc.get("meta")
        if doc.get("sha256") != sha256hex or not isinstance(meta, dict):
            raise CorruptState(f"{self._sidecar_path(sha256hex)} does not describe its blob")
        return MappingProxyType(meta)

    def has(self, sha256hex: str) -> bool:
        return self.blob_path(sha256hex).is_file()

    def addresses(self) -> set[str]:
        return {p.stem for p in self._dir.glob("*.bin") if _ADDRESS.fullmatch(p.stem)}

    def delete(self, sha256hex: str) -> bool:
        with self._lock:
            present = self._remove(sha256hex)
            fsync_dir(self._dir)
        return present

    def gc(self, keep: Iterable[str]) -> list[str]:
        # Validate first: a malformed entry in `keep` must not silently widen the deletion.
        kept = {check_address(a) for a in keep}
        removed: list[str] = []
        with self._lock:
            for path in self._dir.iterdir():
                stem, name, suffix = path.stem, path.name, path.suffix
                is_address = _ADDRESS.fullmatch(stem) is not None
                if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
                    # A write that never reached its final name.
                    path.unlink(missing_ok=True)
                elif suffix == ".bin" and is_address and stem not in kept:
                    self._remove(stem)
                    removed.append(stem)
                elif suffix == ".json" and is_address and not self.blob_path(stem).exists():
                    # An orphan sidecar: a put that crashed before its blob landed. Sidecars
                    # of blobs are removed with their blob above, blob first.
                    path.unlink(missing_ok=True)
            fsync_dir(self._dir)
        return sorted(removed)

    def _remove(self, sha256hex: str) -> bool:
        # Blob before sidecar, so no blob is ever left without its sidecar.
        present = self.blob_path(sha256hex).exists()
        self.blob_path(sha256hex).unlink(missing_ok=True)
        self._sidecar_path(sha256hex).unlink(missing_ok=True)
        return present

    def _write_atomic(self, final: Path, data: bytes) -> None:
        # fsutil's temp names (".<name>.*.tmp") are the ones gc() sweeps after a crash.
        atomic_write(final, data, mode=0o600)

    def _verifies(self, blob: Path, sha256hex: str) -> bool:
        try:
            return address_of(blob.read_bytes()) == sha256hex
        except FileNotFoundError:
            return False

    def _read_sidecar(self, sha256hex: str) -> dict[str, object]:
        path = self._sidecar_path(sha256hex)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise CorruptState(f"{path} is missing for a stored blob") from None
        except ValueError as e:
            raise CorruptState(f"{path} is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise CorruptState(f"{path} is not a JSON object")
        return doc

    def _expected_size(self, sha256hex: str) -> int | None:
        try:
            size = self._read_sidecar(sha256hex).get("size")
        except CorruptState:
            return None
        return size if isinstance(size, int) else None
