"""Secure-aggregation messages survive the protobuf round trip field for field."""

from __future__ import annotations

import pytest

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    RelayedShares,
    RevealedShare,
    ShareKeys,
    ShareKind,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from forsaken.common.secagg.params import SecAggConfig, SecAggParams
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.wire_secagg import (
    client_message_from_proto,
    client_message_to_proto,
    server_message_from_proto,
    server_message_to_proto,
)
from forsaken.v1 import secagg_pb2

CONFIG = SecAggConfig(SecAggParams(3, 2, 2, 30), 11, active=True, context=b"round 1")
ADV = AdvertiseKeys(1, b"c" * 32, b"m" * 32, b"s" * 64)
SHARE = EncryptedShare(1, 2, b"x" * 156, b"h" * 64)

SERVER_MESSAGES = [
    SetupInfo(2, CONFIG, 16.0, 123.0, (b"a" * 32, b"b" * 32, b"c" * 32), 41),
    KeysBroadcast((ADV, AdvertiseKeys(2, b"d" * 32, b"e" * 32))),
    RelayedShares((SHARE,)),
    ConsistencyRequest((1, 3)),
    UnmaskRequest((1, 3), (2,), (SurvivorSignature(1, b"s" * 64),)),
]
CLIENT_MESSAGES = [
    ADV,
    ShareKeys((SHARE, EncryptedShare(1, 3, b"y" * 156, b"k" * 64)), b"b" * 32),
    ConsistencySignature(b"z" * 64),
    UnmaskResponse(
        (
            RevealedShare(2, ShareKind.MASK_KEY, b"q" * 66),
            RevealedShare(3, ShareKind.SELF_MASK_SEED, b"r" * 66),
        ),
        (4, 5),
    ),
]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: type(m).__name__)
def test_server_messages_round_trip(message: object) -> None:
    wire = secagg_pb2.SecAggServerMessage.FromString(
        server_message_to_proto(message).SerializeToString()  # type: ignore[arg-type]
    )
    assert server_message_from_proto(wire) == message


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=lambda m: type(m).__name__)
def test_client_messages_round_trip(message: object) -> None:
    proto = client_message_to_proto(message, request_id="r", task_id="t", round_=4)  # type: ignore[arg-type]
    back = secagg_pb2.SecAggClientMessage.FromString(proto.SerializeToString())
    assert (back.request_id, back.task_id, back.round) == ("r", "t", 4)
    assert client_message_from_proto(back) == message


def test_bad_messages_are_named() -> None:
    with pytest.raises(InvalidPayload, match="no stage"):
        client_message_from_proto(secagg_pb2.SecAggClientMessage(request_id="r"))
    with pytest.raises(InvalidPayload, match="unknown share kind"):
        client_message_from_proto(
            secagg_pb2.SecAggClientMessage(
                unmask=secagg_pb2.SecAggUnmaskResponse(
                    shares=[secagg_pb2.SecAggRevealedShare(owner=1, kind=9, share=b"")]
                )
            )
        )
    setup = server_message_to_proto(SERVER_MESSAGES[0])  # type: ignore[arg-type]
    del setup.setup.verifying_keys[:]
    with pytest.raises(InvalidPayload, match="one verifying key per client"):
        server_message_from_proto(setup)
