"""Chunked payloads: split a whole payload into bounded chunks and reassemble it with checks.

The assembler sits at the RPC edge so that only a whole payload whose length and SHA-256
match its header ever reaches the core. It enforces a size limit before buffering anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from forsaken.common.errors import InvalidPayload, PayloadTooLarge
from forsaken.common.tensors import TensorSpec, validate_specs

# Well under gRPC's 4 MiB default message limit, large enough that per-chunk overhead is small.
DEFAULT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PayloadHeader:
    tensors: tuple[TensorSpec, ...]
    total_bytes: int
    sha256: bytes


def header_for(tensors: Sequence[TensorSpec], data: bytes) -> PayloadHeader:
    return PayloadHeader(tuple(tensors), len(data), hashlib.sha256(data).digest())


def split(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield memoryview-backed slices of `data` of at most `chunk_bytes` each."""
    view = memoryview(data)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


class PayloadAssembler:
    """Accumulates one streamed payload and verifies it against its header."""

    def __init__(self, header: PayloadHeader, max_bytes: int) -> None:
        if header.total_bytes > max_bytes:
            raise PayloadTooLarge(
                f"payload of {header.total_bytes} bytes exceeds the limit of {max_bytes}"
            )
        declared = validate_specs(header.tensors, max_bytes=max_bytes)
        if declared != header.total_bytes:
            raise InvalidPayload(
                f"header declares {header.total_bytes} bytes but its tensors need {declared}"
            )
        if len(header.sha256) != 32:
            raise InvalidPayload("header sha256 must be 32 bytes")
        self.header = header
        # One buffer of exactly the declared size, made when the first data arrives (so a
        # header alone costs nothing): growing one would copy, and this bounds the memory of an
        # upload by its header, which the server checks against the open task first.
        self._buffer: bytearray | None = None
        self._received = 0
        self._hash = hashlib.sha256()

    def add(self, data: bytes) -> None:
        end = self._received + len(data)
        if end > self.header.total_bytes:
            raise PayloadTooLarge(
                f"stream carries more than the {self.header.total_bytes} bytes its header declared"
            )
        if self._buffer is None:
            self._buffer = bytearray(self.header.total_bytes)
        self._buffer[self._received : end] = data
        self._received = end
        self._hash.update(data)

    def finish(self) -> bytes:
        received = self._received
        if received != self.header.total_bytes:
            raise InvalidPayload(
                f"stream truncated: received {received} of {self.header.total_bytes} bytes"
            )
        if self._hash.digest() != self.header.sha256:
            raise InvalidPayload("payload sha256 does not match its header")
        return bytes(self._buffer or b"")
