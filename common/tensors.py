"""The tensor codec: state_dict <-> flat float32 vector <-> raw little-endian bytes.

This module is the only place that defines how model tensors are laid out on the wire
and on disk. Nothing here pickles: a payload is a list of `TensorSpec` plus raw bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from forsaken.common.errors import InvalidPayload

# Dtypes we accept from the network; anything else is rejected before any buffer is built.
_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "uint32": np.dtype("<u4"),
    "int64": np.dtype("<i8"),
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _DTYPES[self.dtype].itemsize


def numpy_dtype(name: str) -> np.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise InvalidPayload(
            f"unsupported dtype {name!r}; expected one of {sorted(_DTYPES)}"
        ) from None


def validate_specs(specs: Sequence[TensorSpec], max_bytes: int | None = None) -> int:
    """Check names, shapes and dtypes; return the payload size in bytes."""
    total = 0
    seen: set[str] = set()
    for spec in specs:
        if not spec.name or spec.name in seen:
            raise InvalidPayload(f"tensor name {spec.name!r} is empty or repeated")
        seen.add(spec.name)
        numpy_dtype(spec.dtype)
        if any(d < 0 for d in spec.shape):
            raise InvalidPayload(f"tensor {spec.name!r} has a negative dimension {spec.shape}")
        total += spec.nbytes
        if max_bytes is not None and total > max_bytes:
            raise InvalidPayload(f"payload of more than {max_bytes} bytes declared")
    return total


class Shaped(Protocol):
    """A torch tensor or a numpy array, as far as `specs_of` needs one."""

    @property
    def shape(self) -> Sequence[int]: ...


def specs_of(state: Mapping[str, Shaped]) -> tuple[TensorSpec, ...]:
    """Specs (as float32) of a torch state_dict or a mapping of numpy arrays, in order."""
    return tuple(
        TensorSpec(name, tuple(int(d) for d in value.shape), "float32")
        for name, value in state.items()
    )


def flatten(state: Mapping[str, object]) -> np.ndarray:
    """Concatenate a state_dict's tensors into one float32 vector, in key order."""
    parts = [_as_numpy(v).astype(np.float32, copy=False).reshape(-1) for v in state.values()]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts)


def unflatten(vector: np.ndarray, specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Split a flat vector back into named arrays of the specs' shapes (views, no copy)."""
    expected = sum(s.numel for s in specs)
    if vector.ndim != 1 or vector.size != expected:
        raise InvalidPayload(f"vector of {vector.size} entries does not fit specs of {expected}")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in specs:
        out[spec.name] = vector[offset : offset + spec.numel].reshape(spec.shape)
        offset += spec.numel
    return out


def to_bytes(vector: np.ndarray) -> bytes:
    """Raw little-endian bytes of a 1-D vector."""
    return np.ascontiguousarray(vector, dtype=vector.dtype.newbyteorder("<")).tobytes()


def from_bytes(data: bytes, specs: Sequence[TensorSpec]) -> np.ndarray:
    """Parse bytes laid out by `specs` into one flat vector of the specs' common dtype.

    All specs of one payload share a dtype (a model is float32, a masked vector uint32).
    """
    if not specs:
        if data:
            raise InvalidPayload("payload has bytes but no tensors")
        return np.zeros(0, dtype=np.float32)
    dtypes = {s.dtype for s in specs}
    if len(dtypes) != 1:
        raise InvalidPayload(f"mixed dtypes in one payload: {sorted(dtypes)}")
    dtype = numpy_dtype(dtypes.pop())
    expected = validate_specs(specs)
    if len(data) != expected:
        raise InvalidPayload(f"payload is {len(data)} bytes, specs declare {expected}")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def require_finite(vector: np.ndarray, what: str = "update") -> None:
    if vector.dtype.kind == "f" and not np.isfinite(vector).all():
        bad = int((~np.isfinite(vector)).sum())
        raise InvalidPayload(f"{what} has {bad} NaN or Inf values")


def _as_numpy(value: object) -> np.ndarray:
    # torch tensors expose .detach().cpu().numpy(); this keeps torch out of the import graph.
    detach = getattr(value, "detach", None)
    if detach is not None:
        return detach().cpu().numpy()
    return np.asarray(value)
