"""Secure-aggregation messages <-> protobuf. Field for field; validation stays in the states."""

from __future__ import annotations

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    RelayedShares,
    RevealedShare,
    ServerMessage,
    ShareKeys,
    ShareKind,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from forsaken.common.secagg.params import SecAggConfig, SecAggParams
from forsaken.common.secagg.setup import SetupInfo
from forsaken.v1 import secagg_pb2 as pb

ClientStage = AdvertiseKeys | ShareKeys | ConsistencySignature | UnmaskResponse


def setup_to_proto(s: SetupInfo) -> pb.SecAggSetup:
    p = s.config.params
    return pb.SecAggSetup(
        index=s.index,
        num_clients=p.num_clients,
        neighbors=p.neighbors,
        threshold=p.threshold,
        bits=p.bits,
        clip=s.clip,
        vector_len=s.config.vector_len,
        active=s.config.active,
        context=s.config.context,
        weight_scale=s.weight_scale,
        verifying_keys=list(s.verifying_keys),
        weight=s.weight,
    )


def setup_from_proto(m: pb.SecAggSetup) -> SetupInfo:
    params = SecAggParams(m.num_clients, m.neighbors, m.threshold, m.bits)  # validates
    if not (m.clip > 0 and m.weight_scale > 0):
        raise InvalidPayload("secure setup needs positive clip and weight_scale")
    config = SecAggConfig(params, int(m.vector_len), m.active, m.context)
    keys = tuple(m.verifying_keys)
    if m.active and len(keys) != params.num_clients:
        raise InvalidPayload("active secure setup needs one verifying key per client")
    if m.weight > m.weight_scale:
        raise InvalidPayload("secure setup gives this client more weight than the whole round")
    return SetupInfo(m.index, config, m.clip, m.weight_scale, keys, int(m.weight))


def _adv_to(a: AdvertiseKeys) -> pb.SecAggAdvertiseKeys:
    return pb.SecAggAdvertiseKeys(
        index=a.index,
        cipher_public_key=a.cipher_public_key,
        mask_public_key=a.mask_public_key,
        signature=a.signature,
    )


def _adv_from(m: pb.SecAggAdvertiseKeys) -> AdvertiseKeys:
    return AdvertiseKeys(m.index, m.cipher_public_key, m.mask_public_key, m.signature)


def _share_to(e: EncryptedShare) -> pb.SecAggEncryptedShare:
    return pb.SecAggEncryptedShare(
        sender=e.sender, recipient=e.recipient, ciphertext=e.ciphertext, commitment=e.commitment
    )


def _share_from(m: pb.SecAggEncryptedShare) -> EncryptedShare:
    return EncryptedShare(m.sender, m.recipient, m.ciphertext, m.commitment)


def server_message_to_proto(msg: ServerMessage | SetupInfo) -> pb.SecAggServerMessage:
    if isinstance(msg, SetupInfo):
        return pb.SecAggServerMessage(setup=setup_to_proto(msg))
    if isinstance(msg, KeysBroadcast):
        return pb.SecAggServerMessage(
            keys=pb.SecAggKeysBroadcast(keys=[_adv_to(a) for a in msg.keys])
        )
    if isinstance(msg, RelayedShares):
        return pb.SecAggServerMessage(
            shares=pb.SecAggRelayedShares(shares=[_share_to(e) for e in msg.shares])
        )
    if isinstance(msg, ConsistencyRequest):
        return pb.SecAggServerMessage(
            consistency=pb.SecAggConsistencyRequest(survivors=list(msg.survivors))
        )
    if isinstance(msg, UnmaskRequest):
        return pb.SecAggServerMessage(
            unmask=pb.SecAggUnmaskRequest(
                survivors=list(msg.survivors),
                dropped=list(msg.dropped),
                signatures=[
                    pb.SecAggSurvivorSignature(index=s.index, signature=s.signature)
                    for s in msg.signatures
                ],
            )
        )
    raise TypeError(f"not a server stage message: {type(msg).__name__}")


def server_message_from_proto(m: pb.SecAggServerMessage) -> ServerMessage | SetupInfo:
    kind = m.WhichOneof("stage")
    if kind == "setup":
        return setup_from_proto(m.setup)
    if kind == "keys":
        return KeysBroadcast(tuple(_adv_from(a) for a in m.keys.keys))
    if kind == "shares":
        return RelayedShares(tuple(_share_from(e) for e in m.shares.shares))
    if kind == "consistency":
        return ConsistencyRequest(tuple(m.consistency.survivors))
    if kind == "unmask":
        return UnmaskRequest(
            tuple(m.unmask.survivors),
            tuple(m.unmask.dropped),
            tuple(SurvivorSignature(s.index, s.signature) for s in m.unmask.signatures),
        )
    raise InvalidPayload("secure-aggregation task carries no stage message")


def client_message_to_proto(
    msg: ClientStage, *, request_id: str, task_id: str, round_: int
) -> pb.SecAggClientMessage:
    out = pb.SecAggClientMessage(request_id=request_id, task_id=task_id, round=round_)
    if isinstance(msg, AdvertiseKeys):
        out.advertise.CopyFrom(_adv_to(msg))
    elif isinstance(msg, ShareKeys):
        out.share_keys.CopyFrom(
            pb.SecAggShareKeys(
                shares=[_share_to(e) for e in msg.shares], seed_commitment=msg.seed_commitment
            )
        )
    elif isinstance(msg, ConsistencySignature):
        out.consistency.CopyFrom(pb.SecAggConsistencySignature(signature=msg.signature))
    elif isinstance(msg, UnmaskResponse):
        out.unmask.CopyFrom(
            pb.SecAggUnmaskResponse(
                shares=[
                    pb.SecAggRevealedShare(owner=s.owner, kind=int(s.kind), share=s.share)
                    for s in msg.shares
                ],
                complaints=list(msg.complaints),
            )
        )
    else:
        raise TypeError(f"not a client stage message: {type(msg).__name__}")
    return out


def client_message_from_proto(m: pb.SecAggClientMessage) -> ClientStage:
    kind = m.WhichOneof("stage")
    if kind == "advertise":
        return _adv_from(m.advertise)
    if kind == "share_keys":
        return ShareKeys(
            tuple(_share_from(e) for e in m.share_keys.shares), m.share_keys.seed_commitment
        )
    if kind == "consistency":
        return ConsistencySignature(m.consistency.signature)
    if kind == "unmask":
        shares = []
        for s in m.unmask.shares:
            try:
                share_kind = ShareKind(s.kind)
            except ValueError:
                raise InvalidPayload(f"unknown share kind {s.kind}") from None
            shares.append(RevealedShare(s.owner, share_kind, s.share))
        return UnmaskResponse(tuple(shares), tuple(m.unmask.complaints))
    raise InvalidPayload("secure-aggregation message carries no stage")
