"""Active mode: signed advertisements and the consistency check on the survivor list."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg import crypto
from forsaken.common.secagg.client_states import (
    ClientAborted,
    ClientAwaitConsistency,
    ClientAwaitUnmask,
    ClientDone,
    ClientIdentity,
    start_client,
)
from forsaken.common.secagg.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    KeysBroadcast,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
)
from forsaken.common.secagg.params import SecAggConfig, SecAggParams
from forsaken.common.secagg.runner import RoundReport, run_round
from forsaken.common.secagg.server_states import ServerCollectConsistency, start_server

N, K, T, D = 10, 8, 5, 6
CONFIG = SecAggConfig(SecAggParams(N, K, T, 20), D + 1, active=True, context=b"round-3")
SIGNING = {i: hashlib.sha256(b"long-term" + bytes([i])).digest() for i in range(1, N + 1)}
VERIFYING = {i: crypto.signing_public_key(sk) for i, sk in SIGNING.items()}


def x(i: int) -> np.ndarray:
    return np.full(D + 1, 7 * i, dtype=np.uint32)


def identity(i: int) -> ClientIdentity:
    seed = hashlib.sha256(b"active" + bytes([i])).digest()
    return ClientIdentity(CONFIG, i, seed, signing_key=SIGNING[i], verifying_keys=VERIFYING)


def run(drop: dict[Stage, set[int]]) -> RoundReport:
    seeds = {i: identity(i).seed for i in range(1, N + 1)}
    return run_round(
        CONFIG,
        {i: x(i) for i in range(1, N + 1)},
        seeds,
        drop,
        signing_keys=SIGNING,
        verifying_keys=VERIFYING,
        watch=1,
    )


def test_active_round_is_exact_with_dropouts_at_every_stage() -> None:
    report = run({Stage.MASKED_INPUT: {4}, Stage.CONSISTENCY_CHECK: {7}, Stage.UNMASKING: {9}})
    assert report.result is not None, report.server
    survivors = report.result.survivors
    assert survivors == (1, 2, 3, 5, 6, 7, 8, 9, 10)
    assert np.array_equal(report.result.vector, sum(x(i) for i in survivors))
    request = report.watched[-1]
    assert isinstance(request, UnmaskRequest)
    assert {s.index for s in request.signatures} == set(survivors) - {7}


def test_start_client_needs_a_signing_key_in_active_mode() -> None:
    with pytest.raises(InvalidPayload):
        start_client(dataclasses.replace(identity(1), signing_key=None), x(1))


def _advertised() -> tuple[dict, KeysBroadcast]:
    states, adverts = {}, []
    for i in range(1, N + 1):
        states[i], advert = start_client(identity(i), x(i))
        adverts.append(advert)
    return states, KeysBroadcast(tuple(adverts))


def test_client_rejects_an_advertisement_with_a_bad_signature() -> None:
    states, broadcast = _advertised()
    forged = list(broadcast.keys)
    forged[4] = dataclasses.replace(forged[4], mask_public_key=bytes([9]) * 32)  # swapped key
    nxt, reply = states[1].handle(KeysBroadcast(tuple(forged)))
    assert reply is None and isinstance(nxt, ClientAborted)
    assert "client 5" in nxt.reason and "signature" in nxt.reason


def test_server_with_verifying_keys_rejects_bad_signatures_early() -> None:
    _, broadcast = _advertised()
    server = start_server(CONFIG, VERIFYING)
    bad = dataclasses.replace(broadcast.keys[0], signature=bytes(64))
    with pytest.raises(InvalidPayload):
        server.receive(1, bad)
    assert server.receive(1, broadcast.keys[0]).pending == frozenset(range(2, N + 1))


def _at_consistency() -> tuple[dict, ConsistencyRequest, ServerCollectConsistency]:
    """Clients and a server with verifying keys, driven up to the consistency check."""
    states, broadcast = _advertised()
    server = start_server(CONFIG, VERIFYING)
    for advert in broadcast.keys:
        server = server.receive(advert.index, advert)
    server, outbound = server.close()
    for i in states:
        states[i], reply = states[i].handle(outbound[i])
        server = server.receive(i, reply)
    server, outbound = server.close()
    for i in states:
        states[i], reply = states[i].handle(outbound[i])
        assert isinstance(states[i], ClientAwaitConsistency)
        server = server.receive(i, reply)
    server, outbound = server.close()
    assert isinstance(server, ServerCollectConsistency)
    return states, outbound[1], server


def _signed(states: dict, request: ConsistencyRequest) -> tuple[dict, tuple]:
    signatures = []
    for i in request.survivors:
        states[i], reply = states[i].handle(request)
        assert isinstance(states[i], ClientAwaitUnmask) and isinstance(reply, ConsistencySignature)
        signatures.append(SurvivorSignature(i, reply.signature))
    return states, tuple(signatures)


def test_unmask_request_must_carry_the_list_the_client_signed() -> None:
    states, request, _ = _at_consistency()
    states, signatures = _signed(states, request)
    other = tuple(range(1, N))  # a different list than the one signed
    nxt, reply = states[1].handle(UnmaskRequest(other, (N,), signatures))
    assert reply is None and isinstance(nxt, ClientAborted) and "signed" in nxt.reason
    nxt, reply = states[1].handle(UnmaskRequest(request.survivors, (), signatures))
    assert isinstance(nxt, ClientDone) and reply is not None


def test_too_few_or_forged_endorsements_abort() -> None:
    states, request, _ = _at_consistency()
    states, signatures = _signed(states, request)
    few = UnmaskRequest(request.survivors, (), signatures[:2])
    nxt, _ = states[1].handle(few)
    assert isinstance(nxt, ClientAborted) and "signed the survivor list" in nxt.reason
    forged = tuple(SurvivorSignature(s.index, bytes(64)) for s in signatures)
    nxt, _ = states[1].handle(UnmaskRequest(request.survivors, (), forged))
    assert isinstance(nxt, ClientAborted)


def test_server_checks_consistency_signatures() -> None:
    states, request, server = _at_consistency()
    states, signatures = _signed(states, request)
    with pytest.raises(InvalidPayload):
        server.receive(1, ConsistencySignature(bytes(64)))
    with pytest.raises(InvalidPayload):
        server.receive(1, ConsistencySignature(signatures[0].signature[:-1]))
    with pytest.raises(InvalidPayload):  # client 2's signature is not client 1's
        server.receive(1, ConsistencySignature(signatures[1].signature))
    server = server.receive(1, ConsistencySignature(signatures[0].signature))
    assert server.pending == frozenset(range(2, N + 1))


def test_round_aborts_when_too_few_sign() -> None:
    report = run({Stage.CONSISTENCY_CHECK: set(range(2, N + 1))})
    assert report.result is None
    assert "signed the survivor list" in report.server.reason
