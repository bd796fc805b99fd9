"""Hostile secure-aggregation traffic over real gRPC against a real server process.

Two test-driven nodes join properly and play SecAgg+ by hand with the pure client states, one
of them sending, at each stage, messages that do not belong. Each gets a specific status and
reason and leaves the round as it was: the round still completes, with a real client process
taking part, on exactly the aggregate of the honest inputs; and so does the next, normal round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from forsaken.common import tls, wire
from forsaken.common.chunking import header_for
from forsaken.common.datasets import load_dataset
from forsaken.common.identity import NodeIdentity
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
from forsaken.v1 import fleet_pb2, secagg_pb2
from tests.cluster import Cluster
from tests.hand_node import SAMPLES, HandNode
from tests.test_secagg_processes import (
    aggregate_model,
    initial_model,
    quantized_input,
    replay_client,
    sha256_of,
    uint32_sum,
)

pytestmark = pytest.mark.slow

SEED = 5


def expect(code: grpc.StatusCode, match: str, call: Callable[[], object]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details(), info.value.details()


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    opts: dict[str, Any] = {
        "rounds": 2,
        "seed": SEED,
        "min-clients": 3,
        "min-completed": 3,
        "liveness-s": 60,
        "round-timeout-s": 60,
        "stage-timeout-s": 30,
    }
    c = Cluster(tmp_path_factory.mktemp("hostile"), **opts)
    c.start_server()
    yield c
    c.stop()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The real client trains with one thread; replaying it here must too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_hostile_stage_messages_are_refused_and_rounds_still_complete(
    cluster: Cluster, one_torch_thread: None
) -> None:
    a, b = HandNode(cluster.address), HandNode(cluster.address)
    real = NodeIdentity.load_or_create(cluster.root / "client-0").node_id
    cluster.start_client(0, 1, seed=SEED)  # the third live node starts round 1
    everyone = sorted([a.node_id, b.node_id, real])

    # ---- Round 0 (AdvertiseKeys). b holds back, so the stage stays open throughout.
    task = a.next_task(1)
    b_task = b.next_task(1)
    advert = a.begin(task)
    assert a.setup is not None
    d1 = a.setup.config.vector_len
    assert cluster.status()["secagg_stage"] == "advertise_keys"

    expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "advertise_keys expects AdvertiseKeys, got UnmaskResponse",
        lambda: a.send(UnmaskResponse(()), task),
    )
    expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "expects AdvertiseKeys, got MaskedInput",
        lambda: a.push(np.zeros(d1, np.uint32), task),
    )
    short_key = AdvertiseKeys(advert.index, advert.cipher_public_key[:31], advert.mask_public_key)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "32-byte", lambda: a.send(short_key, task))
    long_key = AdvertiseKeys(advert.index, advert.cipher_public_key, advert.mask_public_key + b"x")
    expect(grpc.StatusCode.INVALID_ARGUMENT, "32-byte", lambda: a.send(long_key, task))
    same_keys = AdvertiseKeys(advert.index, advert.cipher_public_key, advert.cipher_public_key)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "distinct", lambda: a.send(same_keys, task))
    someone_else = AdvertiseKeys(
        advert.index % 3 + 1, advert.cipher_public_key, advert.mask_public_key
    )
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "does not match the sender",
        lambda: a.send(someone_else, task),
    )
    expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "is not this node's open task",
        lambda: a.send(advert, task, task_id="r1.a0.not-mine"),
    )
    expect(
        grpc.StatusCode.NOT_FOUND,
        "round 9 does not exist",
        lambda: a.send(advert, task, round_=9),
    )
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"one uint32 masked vector of {d1} entries",
        lambda: a.push(np.zeros(d1 - 1, np.uint32), task),
    )
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id is required",
        lambda: a.send(advert, task, request_id=""),
    )
    no_stage = secagg_pb2.SecAggClientMessage(request_id="x", task_id=task.task_id, round=1)
    expect(grpc.StatusCode.INVALID_ARGUMENT, "carries no stage", lambda: a.send_raw(no_stage))
    specs, _ = a.conn.fetch_model(task.model_sha256, 1 << 24)
    plaintext = fleet_pb2.UploadHeader(
        request_id="plain",
        task_id=task.task_id,
        round=1,
        base_model_sha256=bytes.fromhex(task.model_sha256),
        num_samples=SAMPLES,
        payload=wire.payload_header_to_proto(header_for(specs, bytes(4 * (d1 - 1)))),
    )
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "a secure round takes one uint32 masked vector",
        lambda: a.stub.PushUpdate(
            wire.upload_chunks(plaintext, bytes(4 * (d1 - 1))), metadata=a.md, timeout=30
        ),
    )
    late = HandNode(cluster.address)  # joined after the round started: not selected
    expect(
        grpc.StatusCode.PERMISSION_DENIED,
        "was not selected for round 1",
        lambda: late.send(advert, task),
    )
    late.conn.leave()  # or it would be sampled for round 2

    # A retried advertisement is acknowledged once; a second, new one is refused.
    assert not a.send(advert, task, request_id="adv-1").duplicate
    assert a.send(advert, task, request_id="adv-1").duplicate
    expect(
        grpc.StatusCode.ALREADY_EXISTS,
        "already answered stage advertise_keys",
        lambda: a.send(advert, task, request_id="adv-2"),
    )
    status = cluster.status()
    assert (status["secagg_stage"], status["completed_rounds"]) == ("advertise_keys", 0)
    b.answer(b_task, b.begin(b_task))

    # ---- Round 1 (ShareKeys).
    task = a.next_task(1)
    assert isinstance(task.message, KeysBroadcast)
    shares = a.step(task)
    assert isinstance(shares, ShareKeys)
    first = shares.shares[0]
    cut = ShareKeys(
        (EncryptedShare(first.sender, first.recipient, first.ciphertext[:-1]), *shares.shares[1:])
    )
    expect(grpc.StatusCode.INVALID_ARGUMENT, "156 bytes", lambda: a.send(cut, task))
    forged = ShareKeys(
        tuple(EncryptedShare(s.recipient, s.recipient, s.ciphertext) for s in shares.shares)
    )
    expect(grpc.StatusCode.INVALID_ARGUMENT, "sender other than", lambda: a.send(forged, task))
    expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "share_keys expects ShareKeys, got AdvertiseKeys",
        lambda: a.send(advert, task),
    )
    a.answer(task, shares)
    b_task = b.next_task(1)
    b.answer(b_task, b.step(b_task))

    # ---- Round 2 (MaskedInput).
    task = a.next_task(1)
    assert isinstance(task.message, RelayedShares)
    masked = a.step(task)
    assert isinstance(masked, MaskedInput)
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"one uint32 masked vector of {d1} entries",
        lambda: a.push(masked.vector[:-1], task),
    )
    expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "masked_input expects MaskedInput, got AdvertiseKeys",
        lambda: a.send(advert, task),
    )
    assert not a.push(masked.vector, task, request_id="masked-1").duplicate
    assert a.push(masked.vector, task, request_id="masked-1").duplicate
    expect(
        grpc.StatusCode.ALREADY_EXISTS,
        "already answered stage masked_input",
        lambda: a.push(masked.vector + np.uint32(1), task, request_id="masked-2"),
    )
    b_task = b.next_task(1)
    b.answer(b_task, b.step(b_task))

    # ---- Round 4 (Unmasking).
    task = a.next_task(1)
    assert isinstance(task.message, UnmaskRequest)
    assert task.message.survivors == (1, 2, 3) and task.message.dropped == ()
    response = a.step(task)
    assert isinstance(response, UnmaskResponse)
    flipped = UnmaskResponse(
        tuple(RevealedShare(r.owner, ShareKind.MASK_KEY, r.share) for r in response.shares)
    )
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "must reveal one share per neighbour",
        lambda: a.send(flipped, task),
    )
    a.answer(task, response)
    b_task = b.next_task(1)
    b.answer(b_task, b.step(b_task))

    status = cluster.wait_for(lambda s: s["completed_rounds"] >= 1, 60, "round 1")
    (one,) = [r for r in status["rounds"] if r["round"] == 1]
    assert one["status"] == "completed" and one["attempt"] == 0
    assert sorted(one["participants"]) == everyone
    # None of the refused messages reached the sum: the new model is exactly the aggregate of
    # the three honest inputs (the real client's replayed in this process).
    data = load_dataset("digits")
    start = initial_model(data, SEED)
    real_work = replay_client(data, start, 0, 1, SEED, 1)
    setup = a.setup
    assert setup.weight_scale == 2 * SAMPLES + real_work.num_samples
    inputs = [a.quantized, b.quantized, quantized_input(real_work, setup)]
    expected = aggregate_model(start, uint32_sum(inputs), 3, setup)
    assert one["model_sha256"] == sha256_of(expected)

    expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "round 1 is not open",
        lambda: a.send(advert, task),
    )

    # After all that the server is healthy, and a normal round completes.
    assert tls.health_check(cluster.address, None, timeout_s=5)
    with ThreadPoolExecutor(2) as pool:
        plays = [pool.submit(node.play, 2) for node in (a, b)]
        for play in plays:
            play.result(timeout=120)
    status = cluster.wait_for(lambda s: s["phase"] == "finished", 60, "round 2")
    (two,) = [r for r in status["rounds"] if r["round"] == 2]
    assert two["status"] == "completed" and sorted(two["participants"]) == everyone
    assert two["model_sha256"] != one["model_sha256"]
    assert cluster.clients[0].wait(timeout=30) == 0  # the real client finished normally
