"""Fixed-point encoding of model updates into Z_{2^32}, and back for their sum.

Bonawitz et al. mask vectors over Z_R; we use R = 2^32 so that masking is native uint32
wrap-around arithmetic. A float vector is clipped to [-clip, clip] and mapped affinely onto the
integers 0..2^b - 1 with unbiased stochastic rounding; with n * (2^b - 1) < 2^32 the sum of n such
vectors never wraps, so the server can decode the exact sum of the encoded values. The sample
count rides along as the last entry, unmasked: counts are public, and the server checks each one
against the weight it announced before the input joins the sum.
"""

from __future__ import annotations

import numpy as np

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg.crypto import expand_mask

__all__ = ["dequantize_sum", "max_bits", "max_samples", "quantize"]

_U32_RANGE = 1 << 32


def max_bits(n_summands: int) -> int:
    """The largest b with n * (2^b - 1) < 2^32: the finest grid whose n-fold sum fits a uint32."""
    if n_summands < 1:
        raise ValueError("need at least one summand")
    bits = 32
    while n_summands * ((1 << bits) - 1) >= _U32_RANGE:
        bits -= 1
    return bits


def max_samples(n_summands: int) -> int:
    """The largest per-client sample count whose n-fold sum fits the uint32 count slot."""
    return (_U32_RANGE - 1) // n_summands


def _scale(clip: float, bits: int) -> float:
    if clip <= 0:
        raise ValueError("clip must be positive")
    if not 1 <= bits <= 32:
        raise ValueError("bits must be in 1..32")
    return ((1 << bits) - 1) / (2.0 * clip)


def quantize(
    values: np.ndarray,
    samples: int,
    clip: float,
    bits: int,
    rounding_seed: bytes,
    n_summands: int,
) -> np.ndarray:
    """Encode an update for Round 2 (MaskedInput): uint32 vector of length D + 1.

    Entry i is floor((clip(x_i) + clip) * s + u_i) with s = (2^b - 1) / (2 clip) and u_i uniform
    in [0, 1) from the AES-CTR PRG keyed by `rounding_seed`, so E[entry] = (clip(x_i) + clip) * s:
    rounding is unbiased. The last entry is `samples`. `n_summands` (the number of clients) is
    only used to check that neither `bits` nor `samples` can overflow the secure sum.
    """
    scale = _scale(clip, bits)
    if n_summands * ((1 << bits) - 1) >= _U32_RANGE:
        raise ValueError(f"{bits} bits overflow a sum of {n_summands} inputs")
    if not 0 <= samples <= max_samples(n_summands):
        raise ValueError("sample count would overflow the secure sum")
    flat = np.asarray(values).reshape(-1)
    d = flat.size
    out = np.empty(d + 1, dtype=np.uint32)
    # One float64 work buffer: float32 has too few mantissa bits for b > 24.
    work = np.clip(flat, -clip, clip, out=np.empty(d, dtype=np.float64))
    # After clipping only NaN can be non-finite, and a sum of bounded values is NaN iff one is.
    if np.isnan(work.sum()):
        raise InvalidPayload("update contains NaN")
    np.add(work, clip, out=work)
    np.multiply(work, scale, out=work)
    # u_i: 32 random bits per entry, scaled into [0, 1). The PRG is the same AES-CTR expansion
    # as the masks, so rounding adds one cheap keystream pass and is reproducible from the seed.
    noise = expand_mask(rounding_seed, d, out=out[:d]).astype(np.float64)
    np.multiply(noise, 2.0**-32, out=noise)
    np.add(work, noise, out=work)
    np.floor(work, out=work)
    body = out[:d]
    np.copyto(body, work, casting="unsafe")
    # x = 2^b - 1 plus u within one float64 ulp of 1 can round up to 2^b; pin it back.
    np.minimum(body, (1 << bits) - 1, out=body)
    out[d] = samples
    return out


def dequantize_sum(
    sum_vector: np.ndarray, n_summands: int, clip: float, bits: int
) -> tuple[np.ndarray, int]:
    """Decode the unmasked sum of `n_summands` quantized inputs (the result of Round 4).

    Returns the float64 sum of the clipped values (exact in expectation over the rounding) and
    the total sample count from the last entry.
    """
    scale = _scale(clip, bits)
    vec = np.asarray(sum_vector)
    if vec.dtype != np.uint32 or vec.ndim != 1 or vec.size < 1:
        raise InvalidPayload("sum vector must be a non-empty uint32 vector")
    if n_summands < 1:
        raise ValueError("need at least one summand")
    total = vec[:-1].astype(np.float64)
    np.multiply(total, 1.0 / scale, out=total)
    np.subtract(total, n_summands * clip, out=total)
    return total, int(vec[-1])
