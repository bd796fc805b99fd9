"""Applying many PRG masks to a vector, fast: the hot loop of masking and unmasking.

A mask term is (seed, sign): add (+1) or subtract (-1) the AES-CTR expansion of seed, mod 2^32.
Clients apply k + 1 terms (Round 2), the server removes one term per survivor plus one per
(dropped, surviving neighbour) link (Round 4). Keystream is written into one reused scratch buffer
and folded into the target with an in-place uint32 add, so no term allocates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from forsaken.common.secagg.crypto import keystream, mask_stream

__all__ = ["CHUNK", "MaskTerm", "apply_masks", "byte_reader", "net_mask", "net_mask_parallel"]

MaskTerm = tuple[bytes, int]  # (32-byte seed, +1 or -1)
CHUNK = 1 << 16  # words per chunk: 256 KiB of target plus 256 KiB of keystream fit in L2


def apply_masks(
    target: np.ndarray, terms: Sequence[MaskTerm], scratch: np.ndarray | None = None
) -> np.ndarray:
    """target += sum(sign * PRG(seed)) mod 2^32, in place; returns target.

    uint32 arithmetic wraps, which is exactly addition in Z_{2^32}. The vector is processed in
    chunks of `CHUNK` words with every term's keystream continuing across chunks, so the target
    chunk and the keystream scratch stay in the core's L2 cache while all terms are folded in:
    each term then costs little more than its AES-CTR keystream.
    """
    if target.dtype != np.uint32 or target.ndim != 1 or not target.flags.c_contiguous:
        raise ValueError("target must be a contiguous uint32 vector")
    if (
        scratch is None
        or scratch.dtype != np.uint32
        or scratch.size < CHUNK
        or not scratch.flags.c_contiguous
    ):
        scratch = np.empty(CHUNK, dtype=np.uint32)
    streams = [
        (mask_stream(seed, 4 * CHUNK), np.add if sign > 0 else np.subtract) for seed, sign in terms
    ]
    scratch_bytes = scratch.data.cast("B")
    for start in range(0, target.size, CHUNK):
        part = target[start : start + CHUNK]
        words = scratch[: part.size]
        raw = scratch_bytes[: 4 * part.size]
        for fill, combine in streams:
            fill(raw)
            combine(part, words, part)  # in place: out is the third argument
    return target


def net_mask(terms: Sequence[MaskTerm], length: int) -> np.ndarray:
    """sum(sign * PRG(seed)) as a new vector; a top-level function so process pools can run it."""
    return apply_masks(np.zeros(length, dtype=np.uint32), terms)


def net_mask_parallel(
    terms: Sequence[MaskTerm], length: int, executor: Executor, workers: int
) -> np.ndarray:
    """`net_mask` split across `workers` tasks of `executor` (processes: AES holds the GIL).

    Addition mod 2^32 is associative and commutative, so partial sums combine in any order.
    """
    if workers <= 1 or len(terms) < 2:
        return net_mask(terms, length)
    chunks = [list(terms[w::workers]) for w in range(workers)]
    futures = [executor.submit(net_mask, chunk, length) for chunk in chunks if chunk]
    total = futures[0].result()
    for future in futures[1:]:
        np.add(total, future.result(), out=total)
    return total


def byte_reader(key: bytes, total: int) -> Callable[[int], bytes]:
    """A `secrets.token_bytes`-like source that reads `total` bytes of keystream in order.

    Lets a pure client state draw Shamir coefficients from its round seed reproducibly.
    """
    data = memoryview(keystream(key, total))
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        if position + n > total:
            raise RuntimeError("derived randomness exhausted")
        chunk = bytes(data[position : position + n])
        position += n
        return chunk

    return read
