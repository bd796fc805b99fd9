"""Shamir t-out-of-k secret sharing over the prime field GF(2^521 - 1).

Bonawitz et al. §3 ("SS.share", "SS.recon"). Secrets are 32-byte strings (an X25519 private key
or a self-mask seed) read as big-endian integers below 2^256, far inside the field. Share
x-coordinates are the holders' client indices, which is why indices start at 1: x = 0 is the
secret itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

from forsaken.common.errors import InvalidPayload

__all__ = [
    "COEFF_BYTES",
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "bytes_to_int",
    "int_to_bytes",
    "reconstruct",
    "reconstruct_secret",
    "split",
    "split_secret",
]

PRIME = (1 << 521) - 1  # a Mersenne prime, so the field holds any 32-byte secret with room
SHARE_BYTES = 66  # ceil(521 / 8): the fixed width of an encoded share
SECRET_BYTES = 32
# Coefficients are drawn 128 bits wider than the field and reduced, so their bias is 2^-128.
COEFF_BYTES = SHARE_BYTES + 16


def int_to_bytes(value: int, width: int = SHARE_BYTES) -> bytes:
    """Fixed-width big-endian encoding of a field element or secret."""
    return value.to_bytes(width, "big")


def bytes_to_int(data: bytes, width: int = SHARE_BYTES) -> int:
    """Decode a fixed-width big-endian integer, rejecting a wrong length or a non-field value."""
    if len(data) != width:
        raise InvalidPayload(f"expected {width} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise InvalidPayload("value is not a field element")
    return value


def split(
    secret: int, threshold: int, xs: Iterable[int], random_bytes: Callable[[int], bytes]
) -> dict[int, int]:
    """SS.share: evaluate a random degree-(t-1) polynomial with f(0) = secret at every x.

    `random_bytes(n)` supplies the coefficients' randomness (a `secrets.token_bytes`-like
    source, read in t - 1 draws of COEFF_BYTES); any t of the returned shares determine the
    secret and t - 1 reveal nothing.
    """
    points = list(xs)
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be a field element")
    if threshold < 1 or threshold > len(points):
        raise ValueError("need 1 <= threshold <= number of shares")
    if len(set(points)) != len(points) or any(not 0 < x < PRIME for x in points):
        raise ValueError("x-coordinates must be distinct and nonzero")
    coeffs = [secret] + [
        int.from_bytes(random_bytes(COEFF_BYTES), "big") % PRIME for _ in range(threshold - 1)
    ]
    shares: dict[int, int] = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):  # Horner; x is a small index, so the products stay small
            acc = (acc * x + c) % PRIME
        shares[x] = acc
    return shares


@lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    # l_m(0) = prod_{n != m} x_n / (x_n - x_m). One inversion per coefficient; cached because the
    # server reconstructs many secrets from the same holder sets.
    coeffs = []
    for m, xm in enumerate(xs):
        num, den = 1, 1
        for n, xn in enumerate(xs):
            if n != m:
                num = num * xn % PRIME
                den = den * (xn - xm) % PRIME
        coeffs.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(coeffs)


def reconstruct(shares: Mapping[int, int]) -> int:
    """SS.recon: Lagrange interpolation at zero through all the given points.

    With at least t consistent shares this is the secret; with fewer it is a value unrelated to
    it. The caller chooses how many shares to pass (exactly t is cheapest).
    """
    if not shares:
        raise ValueError("no shares")
    xs = tuple(sorted(shares))
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("x-coordinates must be distinct and nonzero")
    lagrange = _lagrange_at_zero(xs)
    return sum(shares[x] * lam for x, lam in zip(xs, lagrange, strict=True)) % PRIME


def split_secret(
    secret: bytes, threshold: int, xs: Iterable[int], random_bytes: Callable[[int], bytes]
) -> dict[int, bytes]:
    """`split` for a 32-byte secret, with shares encoded as 66-byte strings."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes")
    shares = split(int.from_bytes(secret, "big"), threshold, xs, random_bytes)
    return {x: int_to_bytes(y) for x, y in shares.items()}


def reconstruct_secret(shares: Mapping[int, bytes]) -> bytes:
    """`reconstruct` for encoded shares; fails if the result is not a 32-byte secret."""
    value = reconstruct({x: bytes_to_int(y) for x, y in shares.items()})
    if value >> (8 * SECRET_BYTES):
        raise InvalidPayload("shares do not reconstruct a 32-byte secret")
    return int_to_bytes(value, SECRET_BYTES)
