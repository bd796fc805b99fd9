"""Per-state tests of the SecAgg+ server: what `receive` accepts and rejects (with the state
unchanged), and what `close` sends or why it aborts."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from forsaken.common.errors import DuplicateRequest, InvalidPayload, UnknownEntity, WrongStage
from forsaken.common.secagg.client_states import ClientIdentity, start_client
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    RelayedShares,
    RevealedShare,
    ShareKeys,
    ShareKind,
    UnmaskRequest,
    UnmaskResponse,
)
from forsaken.common.secagg.params import SecAggConfig, SecAggParams
from forsaken.common.secagg.server_states import (
    ServerAborted,
    ServerCollectKeys,
    ServerCollectMasked,
    ServerCollectShares,
    ServerCollectUnmask,
    ServerFinished,
    start_server,
)
from forsaken.common.secagg.unmask import ShareFault

N, K, T, D = 8, 4, 3, 5
CONFIG = SecAggConfig(SecAggParams(N, K, T, 20), D + 1)


def x(i: int) -> np.ndarray:
    return np.arange(D + 1, dtype=np.uint32) * i + 1000


class Round:
    """Clients and server driven stage by stage, so each test starts where it needs."""

    def __init__(self) -> None:
        self.clients: dict[int, Any] = {}
        self.server: Any = start_server(CONFIG)
        self.adverts: dict[int, AdvertiseKeys] = {}
        self.pending_messages: Mapping[int, object] = {}
        for i in range(1, N + 1):
            identity = ClientIdentity(CONFIG, i, hashlib.sha256(bytes([i])).digest())
            self.clients[i], self.adverts[i] = start_client(identity, x(i))

    def step(self, senders: list[int] | None = None) -> dict[int, Any]:
        """Deliver the last outbound to clients, feed their replies to the server, close."""
        replies = {}
        for i in senders if senders is not None else list(self.pending_messages):
            self.clients[i], replies[i] = self.clients[i].handle(self.pending_messages[i])
            self.server = self.server.receive(i, replies[i])
        self.server, self.pending_messages = self.server.close()
        return replies

    def start(self, senders: list[int] | None = None) -> None:
        for i in senders if senders is not None else list(self.adverts):
            self.server = self.server.receive(i, self.adverts[i])
        self.server, self.pending_messages = self.server.close()


# --- Round 0 -----------------------------------------------------------------------------------


def test_keys_are_collected_and_broadcast_sorted() -> None:
    r = Round()
    state = r.server
    assert isinstance(state, ServerCollectKeys) and state.pending == frozenset(range(1, N + 1))
    for i in (3, 1, 2, 5, 4, 8, 7, 6):
        state = state.receive(i, r.adverts[i])
    assert state.pending == frozenset()
    nxt, outbound = state.close()
    assert isinstance(nxt, ServerCollectShares)
    assert set(outbound) == set(range(1, N + 1))
    assert outbound[1] == KeysBroadcast(tuple(r.adverts[i] for i in range(1, N + 1)))


def test_bad_advertisements_raise_and_leave_state_unchanged() -> None:
    r = Round()
    state = r.server.receive(1, r.adverts[1])
    with pytest.raises(WrongStage):
        state.receive(2, MaskedInput(x(2)))
    with pytest.raises(DuplicateRequest):
        state.receive(1, r.adverts[1])
    for index in (0, N + 1):
        with pytest.raises(UnknownEntity):
            state.receive(index, dataclasses.replace(r.adverts[2], index=index))
    with pytest.raises(InvalidPayload):
        state.receive(3, r.adverts[2])  # index in the message differs from the sender
    with pytest.raises(InvalidPayload):
        state.receive(2, dataclasses.replace(r.adverts[2], cipher_public_key=bytes(31)))
    with pytest.raises(InvalidPayload):
        state.receive(2, dataclasses.replace(r.adverts[2], mask_public_key=bytes(33)))
    low_order = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    with pytest.raises(InvalidPayload):
        state.receive(2, dataclasses.replace(r.adverts[2], mask_public_key=low_order))
    with pytest.raises(InvalidPayload):  # a key another client already advertised
        state.receive(
            2, dataclasses.replace(r.adverts[2], mask_public_key=r.adverts[1].mask_public_key)
        )
    assert set(state.received) == {1}
    assert state.receive(2, r.adverts[2]).pending == frozenset(range(3, N + 1))


def test_too_few_advertisements_abort() -> None:
    r = Round()
    r.start(senders=list(range(1, T + 1)))
    assert isinstance(r.server, ServerAborted)
    assert "advertised keys" in r.server.reason
    with pytest.raises(WrongStage):
        r.server.receive(1, r.adverts[1])


# --- Round 1 -----------------------------------------------------------------------------------


def test_shares_are_relayed_to_their_recipients() -> None:
    r = Round()
    r.start()
    replies = r.step()
    assert isinstance(r.server, ServerCollectMasked)
    for i, relayed in r.pending_messages.items():
        assert isinstance(relayed, RelayedShares)
        assert {s.sender for s in relayed.shares} == set(r.clients[i].graph[i])
        assert all(s.recipient == i for s in relayed.shares)
        for share in relayed.shares:
            assert share in replies[share.sender].shares


def test_bad_share_messages_raise() -> None:
    r = Round()
    r.start()
    state = r.server
    _, good = r.clients[1].handle(r.pending_messages[1])
    shares = good.shares
    with pytest.raises(WrongStage):
        state.receive(1, r.adverts[1])
    with pytest.raises(InvalidPayload):  # one neighbour left out
        state.receive(1, ShareKeys(shares[1:]))
    with pytest.raises(InvalidPayload):  # addressed twice
        state.receive(1, ShareKeys((shares[0], *shares[:-1])))
    with pytest.raises(InvalidPayload):  # pretends to come from someone else
        state.receive(1, ShareKeys(tuple(dataclasses.replace(s, sender=2) for s in shares)))
    with pytest.raises(InvalidPayload):
        state.receive(1, ShareKeys((EncryptedShare(1, shares[0].recipient, b"short"), *shares[1:])))
    state = state.receive(1, good)
    with pytest.raises(DuplicateRequest):
        state.receive(1, good)
    with pytest.raises(UnknownEntity):
        state.receive(N + 1, good)


def test_client_with_too_few_sharing_neighbours_aborts_the_round() -> None:
    r = Round()
    r.start()
    silent = list(r.server.graph[1][: K - T + 1])  # client 1 keeps only t - 1 neighbours
    r.step(senders=[i for i in range(1, N + 1) if i not in silent])
    assert isinstance(r.server, ServerAborted)
    assert "client 1 has only" in r.server.reason and "threshold" in r.server.reason


# --- Round 2 -----------------------------------------------------------------------------------


def test_masked_inputs_are_validated() -> None:
    r = Round()
    r.start()
    r.step()
    state = r.server
    with pytest.raises(WrongStage):
        state.receive(1, ShareKeys(()))
    for bad in (x(1)[:-1], x(1).astype(np.int64), x(1).reshape(2, 3)):
        with pytest.raises(InvalidPayload):
            state.receive(1, MaskedInput(bad))
    with pytest.raises(UnknownEntity):
        state.receive(0, MaskedInput(x(1)))
    state = state.receive(1, MaskedInput(x(1)))
    with pytest.raises(DuplicateRequest):
        state.receive(1, MaskedInput(x(1)))
    assert state.pending == frozenset(range(2, N + 1))


def test_a_consumed_masked_stage_state_cannot_be_reused() -> None:
    """Round 2 sums in place, so an old state must not add a second time."""
    r = Round()
    r.start()
    r.step()
    old = r.server.receive(1, MaskedInput(x(1)))
    new = old.receive(2, MaskedInput(x(2)))
    with pytest.raises(RuntimeError, match="stale"):
        old.receive(3, MaskedInput(x(3)))
    with pytest.raises(RuntimeError, match="stale"):
        old.close()
    newer = new.receive(3, MaskedInput(x(3)))
    assert newer.pending == frozenset(range(4, N + 1))
    newer.close()
    with pytest.raises(WrongStage):  # a late input must not reach the sum being unmasked
        newer.receive(4, MaskedInput(x(4)))


def test_masked_stage_close_names_survivors_and_dropped() -> None:
    r = Round()
    r.start()
    r.step()
    r.step(senders=[1, 2, 3, 4, 5, 6, 7])
    assert isinstance(r.server, ServerCollectUnmask)
    assert set(r.pending_messages) == set(range(1, 8))
    assert r.pending_messages[1] == UnmaskRequest((1, 2, 3, 4, 5, 6, 7), (8,))


def test_too_few_masked_inputs_abort_with_the_reason() -> None:
    r = Round()
    r.start()
    r.step()
    r.step(senders=[1, 2])
    assert isinstance(r.server, ServerAborted)
    assert "masked input" in r.server.reason


# --- Round 4 -----------------------------------------------------------------------------------


def _at_unmasking() -> tuple[Round, dict[int, Any]]:
    r = Round()
    r.start()
    r.step()
    r.step(senders=list(range(1, N)))  # client N drops after sharing keys
    responses = {i: r.clients[i].handle(m)[1] for i, m in r.pending_messages.items()}
    return r, responses


def test_unmasking_yields_the_exact_sum_of_survivor_inputs() -> None:
    r, responses = _at_unmasking()
    state = r.server
    for i, response in responses.items():
        state = state.receive(i, response)
    final, outbound = state.close()
    assert outbound == {}
    assert isinstance(final, ServerFinished)
    expected = sum(x(i).astype(np.int64) for i in range(1, N)) % (1 << 32)
    assert np.array_equal(final.result.vector, expected.astype(np.uint32))
    assert final.result.survivors == tuple(range(1, N)) and final.result.dropped == (N,)
    # Pure: closing the same state again gives the same aggregate.
    assert np.array_equal(state.close()[0].result.vector, final.result.vector)
    with pytest.raises(WrongStage):
        final.receive(1, responses[1])


def test_unmask_responses_must_reveal_the_right_kind_per_peer() -> None:
    r, responses = _at_unmasking()
    state = r.server
    good = responses[1]
    flipped = tuple(
        dataclasses.replace(
            s,
            kind=ShareKind.MASK_KEY
            if s.kind == ShareKind.SELF_MASK_SEED
            else ShareKind.SELF_MASK_SEED,
        )
        for s in good.shares
    )
    with pytest.raises(InvalidPayload):
        state.receive(1, UnmaskResponse(flipped))
    both = (*good.shares, RevealedShare(good.shares[0].owner, ShareKind.MASK_KEY, bytes(66)))
    with pytest.raises(InvalidPayload):
        state.receive(1, UnmaskResponse(both))
    with pytest.raises(InvalidPayload):
        state.receive(
            1, UnmaskResponse((dataclasses.replace(good.shares[0], share=b"x"), *good.shares[1:]))
        )
    with pytest.raises(UnknownEntity):
        state.receive(N, good)  # the dropped client was not asked
    with pytest.raises(WrongStage):
        state.receive(1, MaskedInput(x(1)))
    assert state.receive(1, good).pending == frozenset(range(2, N))


def test_too_few_unmask_responses_abort_cleanly() -> None:
    r, responses = _at_unmasking()
    state = r.server
    for i in (1, 2):
        state = state.receive(i, responses[i])
    final, _ = state.close()
    assert isinstance(final, ServerAborted)
    assert "cannot reconstruct" in final.reason and "threshold is 3" in final.reason


def _corrupted(response: UnmaskResponse) -> UnmaskResponse:
    return UnmaskResponse(
        tuple(
            dataclasses.replace(s, share=(int.from_bytes(s.share, "big") + 1).to_bytes(66, "big"))
            for s in response.shares
        )
    )


def test_a_corrupted_revealed_share_is_refused_naming_the_revealer() -> None:
    r = Round()
    r.start()
    r.step()
    r.step()  # nobody drops: each owner's k = 4 neighbours hold its shares
    responses = {i: r.clients[i].handle(m)[1] for i, m in r.pending_messages.items()}
    state = r.server
    with pytest.raises(ShareFault, match="client 1 revealed a share of client") as info:
        state.receive(1, _corrupted(responses[1]))
    assert info.value.index == 1
    for i, response in responses.items():
        if i != 1:
            state = state.receive(i, response)
    assert state.pending == frozenset({1})  # its lie left no trace
    final, _ = state.close()
    # Three honest holders of each owner remain, and t = 3: the exact sum, without the liar.
    assert isinstance(final, ServerFinished)
    expected = sum(x(i).astype(np.int64) for i in range(1, N + 1)) % (1 << 32)
    assert np.array_equal(final.result.vector, expected.astype(np.uint32))


def test_a_dealer_whose_shares_fit_no_secret_is_named() -> None:
    """Shares that match the dealer's commitments but not the seed it committed to."""
    r = Round()
    r.start()
    for i in range(1, N + 1):
        r.clients[i], share_keys = r.clients[i].handle(r.pending_messages[i])
        if i == 1:
            share_keys = dataclasses.replace(share_keys, seed_commitment=bytes(32))
        r.server = r.server.receive(i, share_keys)
    r.server, r.pending_messages = r.server.close()
    r.step()  # masked inputs
    state = r.server
    for i, m in r.pending_messages.items():
        state = state.receive(i, r.clients[i].handle(m)[1])
    final, _ = state.close()
    assert isinstance(final, ServerAborted) and final.culprits == (1,)
    assert "client 1's shares do not reconstruct the self-mask seed it committed to" in final.reason


def test_complaints_name_a_dealer_two_holders_agree_on_and_only_suspect_a_lone_one() -> None:
    for count in (2, 1):
        r = Round()
        r.start()
        r.step()
        r.step()
        state = r.server
        complainers = state.masked.graph[1][:count]  # holders of client 1's shares
        culprits = (1,) if count == 2 else ()
        suspects = () if count == 2 else tuple(sorted((1, *complainers)))
        for i, m in r.pending_messages.items():
            response = r.clients[i].handle(m)[1]
            if i in complainers:
                shares = tuple(s for s in response.shares if s.owner != 1)
                response = UnmaskResponse(shares, (1,))
            state = state.receive(i, response)
        final, _ = state.close()
        assert isinstance(final, ServerAborted), final
        assert (final.culprits, final.suspects) == (culprits, suspects), final


def test_revealed_shares_stay_out_of_reprs() -> None:
    r, responses = _at_unmasking()
    state = r.server.receive(1, responses[1])
    share = responses[1].shares[0]
    secret = str(int.from_bytes(share.share, "big"))
    assert secret not in repr(state)
    assert share.share.hex() not in repr(share) and repr(share.share) not in repr(share)
