"""The server's Round 4 (Unmasking) computation, kept apart from the state bookkeeping.

Given the sum of the masked inputs of U3, the survivors' revealed shares and the public keys, it
reconstructs each survivor's self-mask seed b_j and each dropped client's mask key s_j^SK and
removes what they left in the sum (Bonawitz et al. Fig. 4, Round 4, server side):

    sum_{i in U3} y_i - sum_{i in U3} PRG(b_i)
                      - sum_{j in U2 minus U3} sum_{i in N(j) cap U3} sign(i, j) * PRG(s_ij)
    = sum_{i in U3} x_i  (mod 2^32)

Pairwise masks between two survivors cancel by themselves, so the server expands one mask per
survivor plus one per (dropped, surviving neighbour) link. Masks cover every entry but the last,
the public sample-count slot (`SecAggConfig.masked_len`).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from types import MappingProxyType

import numpy as np

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg import crypto, shamir
from forsaken.common.secagg.graph import mask_sign
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    ShareKind,
    UnmaskResponse,
)
from forsaken.common.secagg.prg import MaskTerm, apply_masks, net_mask_parallel

__all__ = ["collect_unmask_shares", "unmask_sum", "unmask_terms"]


def collect_unmask_shares(
    message: UnmaskResponse,
    neighbours: tuple[int, ...],
    shared: frozenset[int],
    survivors: frozenset[int],
) -> Mapping[int, int]:
    """Validate one client's UnmaskResponse and decode its shares into field elements.

    The response must reveal, in index order, exactly one share for each neighbour that shared
    keys: the self-mask-seed share of a survivor, the mask-key share of a dropped client.
    """
    expected = [
        (j, ShareKind.SELF_MASK_SEED if j in survivors else ShareKind.MASK_KEY)
        for j in neighbours
        if j in shared
    ]
    if [(s.owner, s.kind) for s in message.shares] != expected:
        raise InvalidPayload(
            "response must reveal one share per neighbour that shared keys: "
            "the self-mask seed of survivors, the mask key of dropped clients"
        )
    return MappingProxyType({s.owner: shamir.bytes_to_int(s.share) for s in message.shares})


def _recover(
    owner: int,
    what: str,
    neighbours: tuple[int, ...],
    revealed: Mapping[int, Mapping[int, int]],
    threshold: int,
    cross_check: bool,
) -> bytes | str:
    """SS.recon of one client's secret from its answering neighbours, or why that failed."""
    holders = [i for i in neighbours if i in revealed]
    if len(holders) < threshold:
        return (
            f"cannot reconstruct the {what} of client {owner}: only {len(holders)} of its "
            f"neighbours answered; threshold is {threshold}"
        )
    secret = shamir.reconstruct({i: revealed[i][owner] for i in holders[:threshold]})
    # Two different t-subsets must agree; a client that revealed a wrong share is caught here
    # instead of silently corrupting the aggregate.
    if cross_check and len(holders) > threshold:
        again = shamir.reconstruct({i: revealed[i][owner] for i in holders[-threshold:]})
        if again != secret:
            return f"the revealed shares of the {what} of client {owner} are inconsistent"
    if secret >> (8 * shamir.SECRET_BYTES):
        return f"the revealed shares of the {what} of client {owner} are inconsistent"
    return shamir.int_to_bytes(secret, shamir.SECRET_BYTES)


def unmask_terms(
    session: bytes,
    keys: Mapping[int, AdvertiseKeys],
    graph: Mapping[int, tuple[int, ...]],
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    revealed: Mapping[int, Mapping[int, int]],
    threshold: int,
) -> list[MaskTerm] | str:
    """The mask terms whose sum must be added to remove every leftover mask, or an abort reason.

    Self masks are checked by cross-reconstruction; a dropped client's mask key is checked
    against the public key it advertised, which no wrong share can match.
    """
    terms: list[MaskTerm] = []
    for j in survivors:
        seed = _recover(j, "self-mask seed", graph[j], revealed, threshold, cross_check=True)
        if isinstance(seed, str):
            return seed
        terms.append((crypto.derive_self_mask_seed(seed, session, j), -1))
    alive = frozenset(survivors)
    for j in dropped:
        mask_sk = _recover(j, "mask key", graph[j], revealed, threshold, cross_check=False)
        if isinstance(mask_sk, str):
            return mask_sk
        if crypto.mask_public_key(mask_sk) != keys[j].mask_public_key:
            return f"the revealed shares of the mask key of client {j} are inconsistent"
        peers = [(i, keys[i].mask_public_key) for i in graph[j] if i in alive]
        seeds = crypto.agree_pairwise_seeds(mask_sk, j, peers, session)
        # Survivor i added sign(i, j) * PRG(s_ij); adding the opposite removes it.
        terms.extend((seed, -mask_sign(i, j)) for (i, _), seed in zip(peers, seeds, strict=True))
    return terms


def unmask_sum(
    *,
    total: np.ndarray,
    session: bytes,
    keys: Mapping[int, AdvertiseKeys],
    graph: Mapping[int, tuple[int, ...]],
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    revealed: Mapping[int, Mapping[int, int]],
    threshold: int,
    executor: Executor | None = None,
    workers: int = 1,
) -> AggregateResult | str:
    """Round 4, server: the unmasked sum of the survivors' inputs, or an abort reason."""
    terms = unmask_terms(session, keys, graph, survivors, dropped, revealed, threshold)
    if isinstance(terms, str):
        return terms
    result = total.copy()  # `total` belongs to an earlier state, which must stay valid
    body = result[:-1]  # the last entry, the summed sample counts, was never masked
    if executor is not None and workers > 1:
        np.add(body, net_mask_parallel(terms, body.size, executor, workers), out=body)
    else:
        apply_masks(body, terms)
    return AggregateResult(result, survivors, dropped)
