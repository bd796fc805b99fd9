"""Tensor codec and chunked payloads: round trips and every way a payload can be wrong."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsaken.common.chunking import PayloadAssembler, PayloadHeader, header_for, split
from forsaken.common.errors import InvalidPayload, PayloadTooLarge
from forsaken.common.tensors import (
    TensorSpec,
    flatten,
    from_bytes,
    require_finite,
    specs_of,
    to_bytes,
    unflatten,
)

shapes = st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=1, max_size=4)


@settings(max_examples=50, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 2**32 - 1))
def test_state_vector_bytes_round_trip(shapes: list[list[int]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = {f"t{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    specs = specs_of(state)
    vector = flatten(state)
    data = to_bytes(vector)
    assert len(data) == sum(s.nbytes for s in specs)
    back = unflatten(from_bytes(data, specs), specs)
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value)


def test_bytes_are_little_endian_float32() -> None:
    data = to_bytes(np.array([1.0, -2.5], dtype=np.float32))
    assert data == np.array([1.0, -2.5], dtype="<f4").tobytes()
    assert data[:4] == b"\x00\x00\x80\x3f"


def test_from_bytes_rejects_wrong_length_dtype_and_mixed() -> None:
    specs = (TensorSpec("w", (2, 2)),)
    with pytest.raises(InvalidPayload, match="bytes"):
        from_bytes(b"\x00" * 15, specs)
    with pytest.raises(InvalidPayload, match="unsupported dtype"):
        from_bytes(b"\x00" * 16, (TensorSpec("w", (4,), "pickle"),))
    with pytest.raises(InvalidPayload, match="mixed dtypes"):
        from_bytes(b"\x00" * 8, (TensorSpec("a", (1,)), TensorSpec("b", (1,), "uint32")))
    with pytest.raises(InvalidPayload, match="negative"):
        from_bytes(b"", (TensorSpec("a", (-1,)),))


def test_require_finite_names_the_problem() -> None:
    with pytest.raises(InvalidPayload, match="NaN or Inf"):
        require_finite(np.array([1.0, np.nan, np.inf], dtype=np.float32))
    require_finite(np.array([1.0], dtype=np.float32))


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 5000), chunk=st.integers(1, 1024))
def test_streamed_equals_whole(size: int, chunk: int) -> None:
    data = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8).tobytes()
    specs = (TensorSpec("raw", (size // 4,), "float32"),)
    data = data[: (size // 4) * 4]
    header = header_for(specs, data)
    assembler = PayloadAssembler(header, max_bytes=1 << 20)
    for piece in split(data, chunk):
        assembler.add(piece)
    assert assembler.finish() == data


def _header(data: bytes, **overrides: object) -> PayloadHeader:
    base = header_for((TensorSpec("w", (len(data) // 4,)),), data)
    return PayloadHeader(
        **{
            **{"tensors": base.tensors, "total_bytes": base.total_bytes, "sha256": base.sha256},
            **overrides,
        }
    )  # type: ignore[arg-type]


def test_assembler_rejects_truncated_stream() -> None:
    data = b"\x01" * 64
    a = PayloadAssembler(_header(data), 1 << 20)
    a.add(data[:32])
    with pytest.raises(InvalidPayload, match="truncated: received 32 of 64"):
        a.finish()


def test_assembler_rejects_hash_mismatch() -> None:
    data = b"\x01" * 64
    a = PayloadAssembler(_header(data, sha256=hashlib.sha256(b"other").digest()), 1 << 20)
    a.add(data)
    with pytest.raises(InvalidPayload, match="sha256 does not match"):
        a.finish()


def test_assembler_rejects_oversize_before_buffering() -> None:
    data = b"\x01" * 64
    with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
        PayloadAssembler(_header(data), 32)
    a = PayloadAssembler(_header(data), 1 << 20)
    with pytest.raises(PayloadTooLarge, match="more than"):
        a.add(data + b"\x00")


def test_assembler_rejects_header_that_disagrees_with_tensors() -> None:
    data = b"\x01" * 64
    with pytest.raises(InvalidPayload, match="declares 64 bytes but its tensors need 32"):
        PayloadAssembler(_header(data, tensors=(TensorSpec("w", (8,)),)), 1 << 20)
