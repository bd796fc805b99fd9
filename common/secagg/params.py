"""Round parameters of SecAgg+: who takes part, how many neighbours, which threshold.

`choose_parameters` picks the neighbour count k and the Shamir threshold t from the number of
clients and the expected dropout and corruption rates; `SecAggConfig` adds what a single round
needs (vector length, active mode, a caller context such as the round id) and has a canonical
encoding that the session id binds, so two parties with different settings cannot interoperate.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from forsaken.common.errors import ConfigError
from forsaken.common.secagg.quantize import max_bits

__all__ = [
    "CORRECTNESS_BITS",
    "SECURITY_BITS",
    "SecAggConfig",
    "SecAggParams",
    "assign_indices",
    "choose_parameters",
]

SECURITY_BITS = 40  # the adversary learns an honest client's secrets with probability <= 2^-40
CORRECTNESS_BITS = 20  # dropouts make a round fail with probability <= 2^-20
_CONFIG_LABEL = b"forsaken/secagg/config/v1"


@dataclass(frozen=True, slots=True)
class SecAggParams:
    """n clients (indices 1..n), k neighbours each, threshold t, b quantization bits."""

    num_clients: int
    neighbors: int
    threshold: int
    bits: int

    def __post_init__(self) -> None:
        n, k, t = self.num_clients, self.neighbors, self.threshold
        if n < 2:
            raise ConfigError("secure aggregation needs at least 2 clients")
        if not 1 <= k <= n - 1:
            raise ConfigError(f"neighbors must be in 1..{n - 1}, got {k}")
        if k < n - 1 and k % 2:
            raise ConfigError("a sparse neighbour graph needs an even neighbour count")
        if not 1 <= t <= k:
            raise ConfigError(f"threshold must be in 1..{k}, got {t}")
        if not 1 <= self.bits <= 32 or n * ((1 << self.bits) - 1) >= 1 << 32:
            raise ConfigError(f"{self.bits} bits overflow a uint32 sum of {n} inputs")

    @property
    def complete(self) -> bool:
        """Whether every client neighbours every other: classic SecAgg (Bonawitz et al.)."""
        return self.neighbors == self.num_clients - 1


@dataclass(frozen=True, slots=True)
class SecAggConfig:
    """Everything both sides must agree on for one round; its encoding enters the session id.

    `vector_len` counts uint32 entries of a masked input, the sample-count slot included.
    That last slot travels in the clear: the count is public (the server announces each
    client's weight), and a clear slot lets the server check every client's count on arrival
    and name the one that lies, instead of finding a wrong total after unmasking.
    `context` is opaque caller data (for example the round id) bound into every key.
    """

    params: SecAggParams
    vector_len: int
    active: bool = False
    context: bytes = b""

    def __post_init__(self) -> None:
        if self.vector_len < 1:
            raise ConfigError("vector_len must be positive")

    @property
    def masked_len(self) -> int:
        """Entries the masks cover: all but the public sample-count slot at the end."""
        return self.vector_len - 1

    def encode(self) -> bytes:
        """Canonical bytes of the configuration (fixed-width fields, length-prefixed context)."""
        p = self.params
        return (
            _CONFIG_LABEL
            + struct.pack(
                ">IIIIQB",
                p.num_clients,
                p.neighbors,
                p.threshold,
                p.bits,
                self.vector_len,
                int(self.active),
            )
            + struct.pack(">I", len(self.context))
            + self.context
        )


def assign_indices(node_ids: Iterable[str]) -> dict[str, int]:
    """Map a round's string node ids to protocol indices 1..n in sorted order.

    Indices are Shamir x-coordinates, so they start at 1; sorting makes the mapping a pure
    function of the participant set, which client and server daemons compute independently.
    """
    ids = sorted(node_ids)
    if len(set(ids)) != len(ids):
        raise ConfigError("duplicate node id")
    return {node: i for i, node in enumerate(ids, start=1)}


def _binomial_tail(k: int, p: float, t: int) -> float:
    """P[Bin(k, p) >= t], summed exactly (k is at most a few hundred)."""
    if t <= 0:
        return 1.0
    return math.fsum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(t, k + 1))


def _corrupt_count(n: int, corruption: float) -> int:
    return math.floor(corruption * n)


def complete_threshold(n: int, corruption: float, active: bool = False) -> int:
    """t for the complete graph (k = n - 1), from exact counts: an honest majority, more than
    the corrupted clients, and in active mode more than (k + corrupted) / 2 (see below)."""
    k, corrupt = n - 1, _corrupt_count(n, corruption)
    t = max(k // 2 + 1, corrupt + 1)
    if active:
        t = max(t, (k + corrupt) // 2 + 1)
    return t


def sparse_threshold(n: int, k: int, corruption: float, active: bool = False) -> int | None:
    """The smallest t in (k/2, k] that keeps every client's secrets safe with k neighbours.

    Always: n * P[Bin(k, c) >= t] <= 2^-40 (corrupted neighbours never hold t shares). In active
    mode also n * P[Bin(k, c) >= 2t - k] <= 2^-40: a malicious server can ask disjoint sets of a
    client's honest neighbours for its two kinds of shares, and corrupted neighbours answer for
    both, so it reconstructs both secrets when t - C + t - C <= k - C, i.e. when the C corrupted
    neighbours number at least 2t - k (Bell et al. 2020, the malicious-server bound).
    """
    security = 2.0**-SECURITY_BITS / n
    for t in range(k // 2 + 1, k + 1):
        if _binomial_tail(k, corruption, t) > security:
            continue
        if active and _binomial_tail(k, corruption, 2 * t - k) > security:
            continue
        return t
    return None


def _sparse_candidate(
    n: int, k: int, dropout: float, corruption: float, active: bool
) -> int | None:
    """The smallest safe threshold that also leaves k neighbours live, if any."""
    t = sparse_threshold(n, k, corruption, active)
    if t is None:
        return None
    if 1.0 - _binomial_tail(k, 1.0 - dropout, t) > 2.0**-CORRECTNESS_BITS / n:
        return None
    # Harary ring over a random permutation: it splits only if k/2 consecutive clients are all
    # lost (dropped or corrupted), which a union bound over the n starting positions bounds.
    if (dropout + corruption) ** (k // 2) > 2.0**-SECURITY_BITS / n:
        return None
    return t


def choose_parameters(
    n: int, dropout_rate: float, corruption_rate: float, active: bool = False
) -> SecAggParams:
    """Choose neighbours k, threshold t and quantization bits b for n clients (SecAgg+).

    Bell et al. (CCS 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead")
    show that each client needs only k = O(log n) neighbours in a random graph, instead of the
    n - 1 of Bonawitz et al., as long as three events are unlikely. With dropout rate d and
    corruption rate c (each client independently, a binomial model of the random graph), this
    function takes the smallest even k >= 2*ceil(log2 n) for which a threshold t exists with:

    1. honest majority, t > k/2: the server, which learns one kind of share per client, cannot
       gather two disjoint t-sets of shares for the same client without corrupted help;
    2. security: n * P[Bin(k, c) >= t] <= 2^-40, so the corrupted neighbours of no client hold t
       shares of its secrets;
    3. correctness: n * P[Bin(k, 1-d) < t] <= 2^-20, so every needed client keeps t live
       neighbours to reconstruct from;
    4. connectivity: n * (d + c)^(k/2) <= 2^-40, so the Harary ring of honest survivors never
       breaks and the server never learns the sum of a small group.

    In active mode (a possibly malicious server, with the consistency check), (2) also bounds
    the corrupted neighbours below 2t - k (`sparse_threshold`), which raises t and so lowers the
    dropout tolerance. t is the smallest value meeting (1) and (2), which leaves the most room
    for dropouts. When no
    sparse k < n - 1 qualifies (small n, or high rates), it falls back to the complete graph,
    k = n - 1, which is classic SecAgg. There the counts are exact rather than probabilistic:
    t = max(floor(k/2) + 1, floor(c*n) + 1) (active: also > (k + floor(c*n))/2), and the
    configuration is rejected if ceil(d*n)
    dropouts would leave fewer than t live neighbours. b is the largest number of bits with
    n * (2^b - 1) < 2^32, so the uint32 sum of n quantized inputs cannot wrap.
    """
    if n < 2:
        raise ConfigError("secure aggregation needs at least 2 clients")
    if not (0.0 <= dropout_rate < 0.5 and 0.0 <= corruption_rate < 0.5):
        raise ConfigError("dropout and corruption rates must be in [0, 0.5)")
    bits = max_bits(n)
    k_min = 2 * max(1, math.ceil(math.log2(n)))
    for k in range(k_min, n - 1, 2):
        t = _sparse_candidate(n, k, dropout_rate, corruption_rate, active)
        if t is not None:
            return SecAggParams(n, k, t, bits)
    k = n - 1
    t = complete_threshold(n, corruption_rate, active)
    if t > k or k - math.ceil(dropout_rate * n) < t:
        raise ConfigError(
            f"{n} clients cannot tolerate dropout rate {dropout_rate} "
            f"with corruption rate {corruption_rate}"
        )
    return SecAggParams(n, k, t, bits)
