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

Faults are attributed, not just detected. Every dealt share is committed to in the clear
(`crypto.commit_share`), and every dealt self-mask seed too (`crypto.commit_seed`):
- a revealed share that does not match its commitment is the revealer's lie: its response is
  refused (`ShareFault`) and the round goes on with the other holders;
- a holder whose share did not open or did not match says so (a complaint) and holds nothing of
  that dealer. Complaints about a dropped client only remove links from the unmasking; about a
  survivor they abort the round, naming the dealer once two holders agree (one complaint alone
  cannot tell a bad dealer from a lying holder: both sit out the retry);
- a reconstruction that does not match the dealer's seed commitment or advertised mask key
  means the dealer's shares do not fit one polynomial: the round aborts naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg import crypto, shamir
from forsaken.common.secagg.graph import mask_sign
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    ShareKeys,
    ShareKind,
    UnmaskResponse,
)
from forsaken.common.secagg.prg import MaskTerm, apply_masks, net_mask_parallel

__all__ = [
    "Commitments",
    "ShareFault",
    "UnmaskFailure",
    "collect_unmask_shares",
    "commitments_of",
    "unmask_sum",
    "unmask_terms",
]

_EMPTY: Mapping = MappingProxyType({})
_C = crypto.COMMITMENT_BYTES


class ShareFault(InvalidPayload):
    """A client revealed a share that is not the one its dealer committed to: its lie."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


@dataclass(frozen=True, slots=True)
class Commitments:
    """What the dealers committed to in Round 1, as the server received it: per (dealer,
    holder) the 64 bytes of `EncryptedShare.commitment`, per dealer its seed commitment."""

    shares: Mapping[tuple[int, int], bytes] = field(default_factory=lambda: _EMPTY)
    seeds: Mapping[int, bytes] = field(default_factory=lambda: _EMPTY)  # dealer -> H(b)


def commitments_of(received: Mapping[int, ShareKeys]) -> Commitments:
    shares = {(s.sender, s.recipient): s.commitment for m in received.values() for s in m.shares}
    seeds = {i: m.seed_commitment for i, m in received.items()}
    return Commitments(MappingProxyType(shares), MappingProxyType(seeds))


@dataclass(frozen=True, slots=True)
class UnmaskFailure:
    reason: str
    culprits: tuple[int, ...] = ()
    suspects: tuple[int, ...] = ()


def collect_unmask_shares(
    message: UnmaskResponse,
    index: int,
    neighbours: tuple[int, ...],
    shared: frozenset[int],
    survivors: frozenset[int],
    commitments: Commitments,
    session: bytes,
) -> Mapping[int, int]:
    """Validate client `index`'s UnmaskResponse and decode its shares into field elements.

    The response must reveal, in index order, exactly one share for each neighbour that shared
    keys and that it does not complain about: the self-mask-seed share of a survivor, the
    mask-key share of a dropped client; each must match its dealer's commitment.
    """
    candidates = [j for j in neighbours if j in shared]
    complaints = set(message.complaints)
    if list(message.complaints) != sorted(complaints) or not complaints <= set(candidates):
        raise InvalidPayload("complaints must name neighbours that shared keys, once, in order")
    expected = [
        (j, ShareKind.SELF_MASK_SEED if j in survivors else ShareKind.MASK_KEY)
        for j in candidates
        if j not in complaints
    ]
    if [(s.owner, s.kind) for s in message.shares] != expected:
        raise InvalidPayload(
            "response must reveal one share per neighbour that shared keys: "
            "the self-mask seed of survivors, the mask key of dropped clients"
        )
    for s in message.shares:
        both = commitments.shares.get((s.owner, index), b"")
        half = both[:_C] if s.kind is ShareKind.MASK_KEY else both[_C:]
        if crypto.commit_share(session, s.owner, index, s.kind, s.share) != half:
            what = "mask key" if s.kind is ShareKind.MASK_KEY else "self-mask seed"
            raise ShareFault(
                index,
                f"client {index} revealed a share of client {s.owner}'s {what} that is not the "
                "one its dealer committed to; its response is refused",
            )
    return MappingProxyType({s.owner: shamir.bytes_to_int(s.share) for s in message.shares})


def _recover(
    owner: int,
    what: str,
    neighbours: tuple[int, ...],
    revealed: Mapping[int, Mapping[int, int]],
    threshold: int,
) -> bytes | UnmaskFailure:
    """SS.recon of one client's secret from its answering neighbours, or why that failed.

    Every revealed share matched its commitment on arrival, so any t of them are the dealer's.
    """
    holders = [i for i in neighbours if owner in revealed.get(i, _EMPTY)]
    if len(holders) < threshold:
        return UnmaskFailure(
            f"cannot reconstruct the {what} of client {owner}: only {len(holders)} of its "
            f"neighbours answered; threshold is {threshold}"
        )
    secret = shamir.reconstruct({i: revealed[i][owner] for i in holders[:threshold]})
    if secret >> (8 * shamir.SECRET_BYTES):
        return _bad_dealer(owner, what)
    return shamir.int_to_bytes(secret, shamir.SECRET_BYTES)


def _bad_dealer(owner: int, what: str) -> UnmaskFailure:
    return UnmaskFailure(
        f"client {owner}'s shares do not reconstruct the {what} it committed to: it dealt "
        "shares that fit no single secret",
        culprits=(owner,),
    )


def _complaint_failure(
    accusers: Mapping[int, frozenset[int]], survivors: frozenset[int]
) -> UnmaskFailure | None:
    """Complaints about survivors leave masks no one can remove: abort, naming who we can."""
    accused = sorted(o for o in accusers if o in survivors)
    if not accused:
        return None
    culprits = tuple(o for o in accused if len(accusers[o]) >= 2)
    suspects = tuple(
        sorted({x for o in accused if len(accusers[o]) < 2 for x in (o, *accusers[o])})
    )
    named = ", ".join(f"client {o} by {len(accusers[o])}" for o in accused)
    return UnmaskFailure(
        "neighbours could not open the shares of a surviving client, whose mask then cannot "
        f"be removed (complained about: {named})",
        culprits=culprits,
        suspects=suspects,
    )


def unmask_terms(
    session: bytes,
    keys: Mapping[int, AdvertiseKeys],
    graph: Mapping[int, tuple[int, ...]],
    survivors: tuple[int, ...],
    dropped: tuple[int, ...],
    revealed: Mapping[int, Mapping[int, int]],
    threshold: int,
    commitments: Commitments = Commitments(),
    complaints: Mapping[int, frozenset[int]] = _EMPTY,
) -> list[MaskTerm] | UnmaskFailure:
    """The mask terms whose sum must be added to remove every leftover mask, or why not.

    A survivor's self-mask seed is checked against its commitment (when it made one) and a
    dropped client's mask key against the public key it advertised, which no wrong share
    can match.
    """
    accusers: dict[int, set[int]] = {}
    for holder, owners in complaints.items():
        for owner in owners:
            accusers.setdefault(owner, set()).add(holder)
    failure = _complaint_failure(
        {o: frozenset(a) for o, a in accusers.items()}, frozenset(survivors)
    )
    if failure is not None:
        return failure
    terms: list[MaskTerm] = []
    for j in survivors:
        seed = _recover(j, "self-mask seed", graph[j], revealed, threshold)
        if isinstance(seed, UnmaskFailure):
            return seed
        committed = commitments.seeds.get(j)
        if committed is not None and crypto.commit_seed(session, j, seed) != committed:
            return _bad_dealer(j, "self-mask seed")
        terms.append((crypto.derive_self_mask_seed(seed, session, j), -1))
    alive = frozenset(survivors)
    for j in dropped:
        mask_sk = _recover(j, "mask key", graph[j], revealed, threshold)
        if isinstance(mask_sk, UnmaskFailure):
            return mask_sk
        if crypto.mask_public_key(mask_sk) != keys[j].mask_public_key:
            return _bad_dealer(j, "mask key")
        # A survivor that complained about j never masked with it: no term to remove there.
        excused = accusers.get(j, set())
        peers = [(i, keys[i].mask_public_key) for i in graph[j] if i in alive and i not in excused]
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
    commitments: Commitments = Commitments(),
    complaints: Mapping[int, frozenset[int]] = _EMPTY,
    executor: Executor | None = None,
    workers: int = 1,
) -> AggregateResult | UnmaskFailure:
    """Round 4, server: the unmasked sum of the survivors' inputs, or why it cannot be had."""
    terms = unmask_terms(
        session, keys, graph, survivors, dropped, revealed, threshold, commitments, complaints
    )
    if isinstance(terms, UnmaskFailure):
        return terms
    result = total.copy()  # `total` belongs to an earlier state, which must stay valid
    body = result[:-1]  # the last entry, the summed sample counts, was never masked
    if executor is not None and workers > 1:
        np.add(body, net_mask_parallel(terms, body.size, executor, workers), out=body)
    else:
        apply_masks(body, terms)
    return AggregateResult(result, survivors, dropped)
