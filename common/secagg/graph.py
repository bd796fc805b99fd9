"""The k-regular neighbour graph of SecAgg+ (Bell et al., CCS 2020, §3 "the graph").

Each client masks with, and shares its secrets among, only its k neighbours. The graph is a
Harary graph H(k, m) — a ring in which every node links to the k/2 nearest nodes on each side,
plus the opposite node when k is odd — laid over a pseudo-random permutation of the m members.
The permutation is keyed by the session id, which hashes every advertised key, so nobody can
place two chosen clients next to each other without grinding keys. H(k, m) is k-connected,
which is what keeps honest survivors' masks entangled in one sum. With k >= m - 1 the graph
is complete and the protocol is classic SecAgg (Bonawitz et al.).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from types import MappingProxyType

__all__ = ["GRAPH_LABEL", "build_graph", "mask_sign"]

GRAPH_LABEL = b"forsaken/secagg/graph/v1"


def _ring_order(members: list[int], session_id: bytes) -> list[int]:
    """A permutation of the members that only the session id determines."""

    def rank(index: int) -> bytes:
        return hashlib.sha256(GRAPH_LABEL + session_id + struct.pack(">I", index)).digest()

    return sorted(members, key=rank)


def build_graph(
    members: Iterable[int], neighbors: int, session_id: bytes
) -> Mapping[int, tuple[int, ...]]:
    """Round 1 (ShareKeys) setup: each member's sorted neighbour tuple in H(k, m).

    Deterministic in (members, k, session id), so client and server derive the same graph.
    The relation is symmetric and no member neighbours itself.
    """
    ring = _ring_order(sorted(set(members)), session_id)
    m = len(ring)
    if neighbors < 1:
        raise ValueError("need at least one neighbour")
    if neighbors >= m - 1:
        full = frozenset(ring)
        return MappingProxyType({i: tuple(sorted(full - {i})) for i in ring})
    if neighbors % 2 and m % 2:
        raise ValueError("no k-regular graph exists for odd k and an odd number of members")
    half = neighbors // 2
    graph: dict[int, tuple[int, ...]] = {}
    for pos, index in enumerate(ring):
        linked = {ring[(pos + off) % m] for off in range(1, half + 1)}
        linked |= {ring[(pos - off) % m] for off in range(1, half + 1)}
        if neighbors % 2:
            linked.add(ring[(pos + m // 2) % m])
        graph[index] = tuple(sorted(linked))
    return MappingProxyType(graph)


def mask_sign(i: int, j: int) -> int:
    """Round 2: client i adds PRG(s_ij) when i < j and subtracts it when i > j, so pairs cancel."""
    if i == j:
        raise ValueError("a client has no pairwise mask with itself")
    return 1 if i < j else -1
