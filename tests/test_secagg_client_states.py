"""Per-state tests of the SecAgg+ client: valid message -> exact next state and reply,
malformed content -> ClientAborted, wrong time -> WrongStage with the state unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from forsaken.common.errors import InvalidPayload, WrongStage
from forsaken.common.secagg.client_states import (
    ClientAborted,
    ClientAwaitKeys,
    ClientAwaitShares,
    ClientAwaitUnmask,
    ClientDone,
    ClientIdentity,
    start_client,
)
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    RelayedShares,
    ShareKeys,
    ShareKind,
    UnmaskRequest,
)
from forsaken.common.secagg.params import SecAggConfig, SecAggParams

N, K, T, D = 8, 4, 3, 5
CONFIG = SecAggConfig(SecAggParams(N, K, T, 20), D + 1)


def seed(i: int, tag: bytes = b"") -> bytes:
    return hashlib.sha256(b"client-test" + tag + i.to_bytes(4, "big")).digest()


def x(i: int) -> np.ndarray:
    return np.arange(D + 1, dtype=np.uint32) * i


def round_zero(
    config: SecAggConfig = CONFIG, tag: bytes = b""
) -> tuple[dict[int, Any], KeysBroadcast]:
    states, adverts = {}, []
    for i in range(1, N + 1):
        states[i], advert = start_client(ClientIdentity(config, i, seed(i, tag)), x(i))
        adverts.append(advert)
    return states, KeysBroadcast(tuple(adverts))


def round_one(
    config: SecAggConfig = CONFIG, tag: bytes = b""
) -> tuple[dict[int, Any], dict[int, list[EncryptedShare]]]:
    """All clients past ShareKeys; returns states and each client's inbox of relayed shares."""
    states, broadcast = round_zero(config, tag)
    inbox: dict[int, list[EncryptedShare]] = {i: [] for i in states}
    for i in list(states):
        states[i], reply = states[i].handle(broadcast)
        for share in reply.shares:
            inbox[share.recipient].append(share)
    return states, inbox


def unmasking() -> tuple[dict[int, Any], tuple[int, ...]]:
    """All clients past MaskedInput, nobody dropped."""
    states, inbox = round_one()
    alive = list(states)
    for i in alive:
        states[i], _ = states[i].handle(RelayedShares(tuple(inbox[i])))
    return states, tuple(alive)


# --- Round 0 -----------------------------------------------------------------------------------


def test_start_client_advertises_two_distinct_32_byte_keys_deterministically() -> None:
    state, advert = start_client(ClientIdentity(CONFIG, 3, seed(3)), x(3))
    assert isinstance(state, ClientAwaitKeys)
    assert advert.index == 3 and advert.signature == b""
    assert len(advert.cipher_public_key) == len(advert.mask_public_key) == 32
    assert advert.cipher_public_key != advert.mask_public_key
    assert start_client(ClientIdentity(CONFIG, 3, seed(3)), x(3))[1] == advert
    assert start_client(ClientIdentity(CONFIG, 3, seed(3, b"other")), x(3))[1] != advert


def test_identity_repr_hides_secrets() -> None:
    identity = ClientIdentity(CONFIG, 3, seed(3), signing_key=bytes([7]) * 32)
    assert seed(3).hex() not in repr(identity) and repr(seed(3)) not in repr(identity)
    assert "signing_key" not in repr(identity)


@pytest.mark.parametrize(
    ("index", "vector"),
    [(0, x(1)), (N + 1, x(1)), (1, x(1)[:-1]), (1, x(1).astype(np.int64))],
)
def test_start_client_rejects_bad_index_or_input(index: int, vector: np.ndarray) -> None:
    with pytest.raises(InvalidPayload):
        start_client(ClientIdentity(CONFIG, index, seed(1)), vector)


# --- Round 1: ClientAwaitKeys ------------------------------------------------------------------


def test_key_list_yields_one_sealed_share_per_neighbour() -> None:
    states, broadcast = round_zero()
    nxt, reply = states[1].handle(broadcast)
    assert isinstance(nxt, ClientAwaitShares) and isinstance(reply, ShareKeys)
    neighbours = nxt.graph[1]
    assert len(neighbours) == K
    assert [s.recipient for s in reply.shares] == list(neighbours)
    assert all(s.sender == 1 and len(s.ciphertext) == 156 for s in reply.shares)
    # Pure: the same message gives the same reply (safe to retry).
    assert states[1].handle(broadcast)[1] == reply


def test_wrong_stage_message_leaves_state_unchanged() -> None:
    states, broadcast = round_zero()
    before = states[1]
    with pytest.raises(WrongStage):
        before.handle(RelayedShares(()))
    with pytest.raises(WrongStage):
        before.handle(UnmaskRequest((1,), ()))
    assert isinstance(before.handle(broadcast)[0], ClientAwaitShares)  # still usable


def _abort_reason(state: Any, message: object) -> str:
    nxt, reply = state.handle(message)
    assert reply is None
    assert isinstance(nxt, ClientAborted)
    return nxt.reason


def _replace_key(broadcast: KeysBroadcast, index: int, **changes: object) -> KeysBroadcast:
    keys = tuple(
        dataclasses.replace(a, **changes) if a.index == index else a for a in broadcast.keys
    )
    return KeysBroadcast(keys)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_public_key_of_wrong_length_aborts(length: int) -> None:
    states, broadcast = round_zero()
    bad = _replace_key(broadcast, 2, mask_public_key=bytes([1]) * length)
    assert "32 bytes" in _abort_reason(states[1], bad)


def test_duplicate_unknown_missing_or_reused_keys_abort() -> None:
    states, broadcast = round_zero()
    keys = broadcast.keys
    assert "duplicate" in _abort_reason(states[1], KeysBroadcast((*keys, keys[-1])))
    unknown = AdvertiseKeys(N + 1, bytes([3]) * 32, bytes([4]) * 32)
    assert "unknown" in _abort_reason(states[1], KeysBroadcast((*keys, unknown)))
    assert "own keys" in _abort_reason(states[1], KeysBroadcast(keys[1:]))
    # A server reflecting client 1's own mask key as client 2's.
    reflected = _replace_key(broadcast, 2, mask_public_key=keys[0].mask_public_key)
    assert "equal" in _abort_reason(states[1], reflected)


# The order-8 point of RFC 7748 / "May the Fourth" lists: agreement with it yields all zeros.
LOW_ORDER_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def test_low_order_cipher_key_of_a_neighbour_aborts() -> None:
    states, broadcast = round_zero()
    neighbour = states[1].handle(broadcast)[0].graph[1][0]
    bad = _replace_key(broadcast, neighbour, cipher_public_key=LOW_ORDER_POINT)
    assert "low-order" in _abort_reason(states[1], bad)


def test_low_order_mask_key_of_a_neighbour_aborts() -> None:
    """The mask key is first used when masking, so the check fires on the relayed shares."""
    states, inbox = round_one()
    state = states[1]
    neighbour = state.graph[1][0]
    keys = dict(state.keys)
    keys[neighbour] = dataclasses.replace(keys[neighbour], mask_public_key=LOW_ORDER_POINT)
    state = dataclasses.replace(state, keys=MappingProxyType(keys))
    assert "low-order" in _abort_reason(state, RelayedShares(tuple(inbox[1])))


def test_too_few_neighbours_aborts() -> None:
    states, broadcast = round_zero()
    assert "threshold" in _abort_reason(states[1], KeysBroadcast(broadcast.keys[:T]))


# --- Round 2: ClientAwaitShares ----------------------------------------------------------------


def test_relayed_shares_yield_a_masked_input() -> None:
    states, inbox = round_one()
    nxt, reply = states[1].handle(RelayedShares(tuple(inbox[1])))
    assert isinstance(nxt, ClientAwaitUnmask) and isinstance(reply, MaskedInput)
    assert reply.vector.dtype == np.uint32 and reply.vector.shape == (D + 1,)
    assert not np.array_equal(reply.vector, x(1))
    assert set(nxt.held) == set(nxt.graph[1])
    with pytest.raises(WrongStage):
        states[1].handle(KeysBroadcast(()))


def _complaint(state: Any, message: RelayedShares) -> int:
    """A share that does not open (or does not match its commitment) is its dealer's fault:
    the client goes on without it, holds nothing of that dealer, and will say so at
    unmasking. Returns the one dealer complained about."""
    nxt, reply = state.handle(message)
    assert isinstance(reply, MaskedInput), nxt
    assert isinstance(nxt, ClientAwaitUnmask)
    (dealer,) = nxt.complaints
    assert dealer not in nxt.held
    survivors = tuple(sorted(nxt.keys))
    _, response = nxt.handle(UnmaskRequest(survivors, ()))
    assert response is not None and response.complaints == (dealer,)
    assert dealer not in {s.owner for s in response.shares}
    return dealer


def test_tampered_share_is_a_complaint_about_its_dealer() -> None:
    states, inbox = round_one()
    share = inbox[1][0]
    bad = bytearray(share.ciphertext)
    bad[20] ^= 0x40
    tampered = [dataclasses.replace(share, ciphertext=bytes(bad)), *inbox[1][1:]]
    assert _complaint(states[1], RelayedShares(tuple(tampered))) == share.sender


def test_share_that_differs_from_its_commitment_is_a_complaint() -> None:
    states, inbox = round_one()
    share = inbox[1][0]
    lying = dataclasses.replace(share, commitment=bytes(64))
    assert _complaint(states[1], RelayedShares((lying, *inbox[1][1:]))) == share.sender


def test_share_replayed_from_another_session_is_a_complaint() -> None:
    states, inbox = round_one()
    _, old_inbox = round_one(SecAggConfig(CONFIG.params, D + 1, context=b"earlier round"))
    replayed = RelayedShares((old_inbox[1][0], *inbox[1][1:]))
    assert _complaint(states[1], replayed) == old_inbox[1][0].sender


def test_share_reflected_back_to_its_sender_is_a_complaint() -> None:
    """Client 1's own share to j, relabelled as j's share to 1: same key, wrong direction."""
    states, broadcast = round_zero()
    state, own = states[1].handle(broadcast)
    _, inbox = round_one()
    first = own.shares[0]
    reflected = EncryptedShare(first.recipient, 1, first.ciphertext, first.commitment)
    rest = [s for s in inbox[1] if s.sender != first.recipient]
    assert _complaint(state, RelayedShares((reflected, *rest))) == first.recipient


def test_duplicate_unknown_or_misaddressed_shares_abort() -> None:
    states, inbox = round_one()
    mine = inbox[1]
    assert "two shares" in _abort_reason(states[1], RelayedShares((*mine, mine[0])))
    stranger = next(j for j in range(2, N + 1) if j not in states[1].share_keys)
    foreign = EncryptedShare(stranger, 1, mine[0].ciphertext)
    assert "not from a neighbour" in _abort_reason(states[1], RelayedShares((*mine, foreign)))
    misaddressed = dataclasses.replace(mine[0], recipient=2)
    assert "not from a neighbour" in _abort_reason(
        states[1], RelayedShares((misaddressed, *mine[1:]))
    )


def test_fewer_than_t_shares_aborts() -> None:
    states, inbox = round_one()
    assert "threshold" in _abort_reason(states[1], RelayedShares(tuple(inbox[1][: T - 1])))


# --- Round 4: ClientAwaitUnmask ----------------------------------------------------------------


def test_unmask_request_reveals_one_kind_per_neighbour() -> None:
    states, _ = unmasking()
    neighbours = states[1].graph[1]
    dropped_peer = neighbours[0]
    survivors = tuple(i for i in range(1, N + 1) if i != dropped_peer)
    nxt, reply = states[1].handle(UnmaskRequest(survivors, (dropped_peer,)))
    assert isinstance(nxt, ClientDone)
    kinds = {s.owner: s.kind for s in reply.shares}
    assert kinds == {
        j: ShareKind.MASK_KEY if j == dropped_peer else ShareKind.SELF_MASK_SEED for j in neighbours
    }
    assert all(len(s.share) == 66 for s in reply.shares)
    with pytest.raises(WrongStage):  # done: no second reveal, whatever the server asks
        nxt.handle(UnmaskRequest(survivors, (dropped_peer,)))


def test_request_for_both_shares_of_a_peer_is_refused() -> None:
    states, alive = unmasking()
    peer = states[1].graph[1][0]
    reason = _abort_reason(states[1], UnmaskRequest(alive, (peer,)))
    assert "both shares" in reason and str(peer) in reason


@pytest.mark.parametrize(
    ("survivors", "dropped", "needle"),
    [
        ((1, 1, 2, 3, 4, 5, 6, 7, 8), (), "duplicate"),
        ((2, 3, 4, 5, 6, 7, 8), (), "omits this client"),
        ((1, 2, 3, 4, 5, 6, 7, 8, 9), (), "never advertised"),
        ((1, 2, 3, 4, 5, 6, 7, 8), (9,), "never advertised"),
        ((1, 2), (), "threshold"),
    ],
)
def test_malformed_unmask_requests_abort(
    survivors: tuple[int, ...], dropped: tuple[int, ...], needle: str
) -> None:
    states, _ = unmasking()
    assert needle in _abort_reason(states[1], UnmaskRequest(survivors, dropped))


def test_a_neighbour_missing_from_both_lists_aborts() -> None:
    states, alive = unmasking()
    peer = states[1].graph[1][0]
    survivors = tuple(i for i in alive if i != peer)
    assert "neither surviving nor dropped" in _abort_reason(states[1], UnmaskRequest(survivors, ()))


def test_terminal_states_reject_everything() -> None:
    with pytest.raises(WrongStage):
        ClientAborted("x").handle(UnmaskRequest((1,), ()))
    with pytest.raises(WrongStage):
        ClientDone().handle(KeysBroadcast(()))
