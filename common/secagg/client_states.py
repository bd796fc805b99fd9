"""The client side of SecAgg+ as immutable states (Bonawitz et al. Fig. 4, "User").

`start_client` makes the Round 0 advertisement; after that each state's `handle(message)` takes
the server's next message and returns `(next_state, reply)`. A message of the wrong type raises
`WrongStage` and leaves the state untouched; bad content (a tampered share, an unknown id, a
request for both shares of one peer) returns `(ClientAborted(reason), None)`. States do no I/O
and read no clock; all randomness comes from the 32-byte round seed the caller injects, so a
state answers the same message the same way every time (retries are safe).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from forsaken.common.errors import InvalidPayload, WrongStage
from forsaken.common.secagg import crypto, shamir
from forsaken.common.secagg.graph import build_graph, mask_sign
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShare,
    KeysBroadcast,
    MaskedInput,
    RelayedShares,
    RevealedShare,
    ShareKeys,
    ShareKind,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)
from forsaken.common.secagg.params import SecAggConfig
from forsaken.common.secagg.prg import apply_masks, byte_reader
from forsaken.common.secagg.transcript import (
    advertisement_statement,
    session_id,
    survivors_statement,
)

__all__ = [
    "ClientAborted",
    "ClientAwaitConsistency",
    "ClientAwaitKeys",
    "ClientAwaitShares",
    "ClientAwaitUnmask",
    "ClientDone",
    "ClientIdentity",
    "ClientState",
    "start_client",
]

_SHARE_PLAINTEXT = struct.Struct(f">II{shamir.SHARE_BYTES}s{shamir.SHARE_BYTES}s")
# Purposes of the keys derived from a client's round seed (see ClientIdentity.secret).
_CIPHER_KEY = b"cipher-key"  # c^SK: X25519 key that agrees share-encryption keys
_MASK_KEY = b"mask-key"  # s^SK: X25519 key that agrees pairwise mask seeds; Shamir-shared
_SELF_MASK_SEED = b"self-mask-seed"  # b: seed of the self mask; Shamir-shared
_SHAMIR_COINS = b"shamir"  # randomness of the sharing polynomials


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who the client is in this round, and its secrets. Secrets never appear in `repr`."""

    config: SecAggConfig
    index: int
    seed: bytes = field(repr=False)  # fresh 32 secret bytes per round: every coin derives from it
    signing_key: bytes | None = field(default=None, repr=False)  # active mode: Ed25519 seed
    verifying_keys: Mapping[int, bytes] | None = None  # active mode: every client's Ed25519 key

    def secret(self, purpose: bytes) -> bytes:
        return crypto.derive_subkey(self.seed, purpose)


@dataclass(frozen=True, slots=True)
class ClientAborted:
    """Terminal: the client stopped the round and revealed nothing further."""

    reason: str
    stage: ClassVar[Stage] = Stage.ABORTED

    def handle(self, message: object) -> tuple[ClientState, None]:
        raise WrongStage(f"round aborted ({self.reason}); got {type(message).__name__}")


@dataclass(frozen=True, slots=True)
class ClientDone:
    """Terminal: the unmask response was sent; the client takes no further part."""

    stage: ClassVar[Stage] = Stage.FINISHED

    def handle(self, message: object) -> tuple[ClientState, None]:
        raise WrongStage(f"round finished; got {type(message).__name__}")


def share_commitment(
    session: bytes, dealer: int, holder: int, mask_share: bytes, seed_share: bytes
) -> bytes:
    """What `EncryptedShare.commitment` must be for the two shares dealer -> holder."""
    return crypto.commit_share(
        session, dealer, holder, ShareKind.MASK_KEY, mask_share
    ) + crypto.commit_share(session, dealer, holder, ShareKind.SELF_MASK_SEED, seed_share)


def _expect(message: object, kind: type, stage: Stage) -> None:
    if not isinstance(message, kind):
        raise WrongStage(f"{stage} expects {kind.__name__}, got {type(message).__name__}")


def start_client(
    identity: ClientIdentity, quantized_input: np.ndarray
) -> tuple[ClientAwaitKeys, AdvertiseKeys]:
    """Round 0 (AdvertiseKeys): make both key pairs and advertise the public halves.

    `quantized_input` is the output of `quantize` (uint32, length `config.vector_len`).
    """
    config = identity.config
    if not 1 <= identity.index <= config.params.num_clients:
        raise InvalidPayload("client index out of range")
    vec = np.asarray(quantized_input)
    if vec.dtype != np.uint32 or vec.shape != (config.vector_len,):
        raise InvalidPayload(f"input must be uint32 of length {config.vector_len}")
    if config.active and (identity.signing_key is None or identity.verifying_keys is None):
        raise InvalidPayload("active mode needs a signing key and every verifying key")
    _, cipher_pk = crypto.generate_keypair(identity.secret(_CIPHER_KEY))
    _, mask_pk = crypto.generate_keypair(identity.secret(_MASK_KEY))
    signature = b""
    if config.active:
        assert identity.signing_key is not None
        statement = advertisement_statement(config, identity.index, cipher_pk, mask_pk)
        signature = crypto.sign(identity.signing_key, statement)
    advert = AdvertiseKeys(identity.index, cipher_pk, mask_pk, signature)
    return ClientAwaitKeys(identity, vec, advert), advert


def _check_broadcast(identity: ClientIdentity, own: AdvertiseKeys, msg: KeysBroadcast) -> str:
    """Reasons to refuse a key list (empty string: none). Bonawitz Round 1 checks, plus ours."""
    config = identity.config
    indices = [adv.index for adv in msg.keys]
    if indices != sorted(set(indices)):
        return "key list has duplicate or unsorted indices"
    if any(not 1 <= i <= config.params.num_clients for i in indices):
        return "key list names an unknown client index"
    if own not in msg.keys:
        return "key list does not carry this client's own keys"
    all_keys = [k for adv in msg.keys for k in (adv.cipher_public_key, adv.mask_public_key)]
    if any(len(k) != crypto.KEY_BYTES for k in all_keys):
        return f"a public key is not {crypto.KEY_BYTES} bytes"
    if len(set(all_keys)) != len(all_keys):
        return "two advertised public keys are equal"
    if config.active:
        keys = identity.verifying_keys or {}
        for adv in msg.keys:
            statement = advertisement_statement(
                config, adv.index, adv.cipher_public_key, adv.mask_public_key
            )
            if adv.index not in keys or not crypto.verify(
                keys[adv.index], statement, adv.signature
            ):
                return f"advertisement of client {adv.index} has no valid signature"
    return ""


@dataclass(frozen=True, slots=True, eq=False)
class ClientAwaitKeys:
    """Waiting for the server's list of advertised keys (end of Round 0)."""

    identity: ClientIdentity
    quantized_input: np.ndarray = field(repr=False)
    advert: AdvertiseKeys
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS

    def handle(self, message: object) -> tuple[ClientState, ShareKeys | None]:
        """Round 1 (ShareKeys): Shamir-share s^SK and b among the neighbours, encrypt each pair."""
        _expect(message, KeysBroadcast, self.stage)
        assert isinstance(message, KeysBroadcast)
        problem = _check_broadcast(self.identity, self.advert, message)
        if problem:
            return ClientAborted(problem), None
        config, me = self.identity.config, self.identity.index
        sid = session_id(config, message.keys)
        keys = MappingProxyType({a.index: a for a in message.keys})
        graph = build_graph(keys, config.params.neighbors, sid)
        neighbours = graph[me]
        t = config.params.threshold
        if len(neighbours) < t:
            return ClientAborted(f"only {len(neighbours)} neighbours, threshold is {t}"), None
        coins = byte_reader(self.identity.secret(_SHAMIR_COINS), 2 * (t - 1) * shamir.COEFF_BYTES)
        mask_shares = shamir.split_secret(self.identity.secret(_MASK_KEY), t, neighbours, coins)
        seed_shares = shamir.split_secret(
            self.identity.secret(_SELF_MASK_SEED), t, neighbours, coins
        )
        cipher_sk = self.identity.secret(_CIPHER_KEY)
        peers = [(j, keys[j].cipher_public_key) for j in neighbours]
        try:  # only neighbours' keys are ever used, so only they need the low-order check
            derived = crypto.derive_share_keys(cipher_sk, me, peers, sid)
        except InvalidPayload:
            return ClientAborted("a neighbour's public key is a low-order point"), None
        share_keys = dict(zip(neighbours, derived, strict=True))
        shares = tuple(
            EncryptedShare(
                me,
                j,
                crypto.seal_share(
                    share_keys[j],
                    sid,
                    me,
                    j,
                    _SHARE_PLAINTEXT.pack(me, j, mask_shares[j], seed_shares[j]),
                ),
                share_commitment(sid, me, j, mask_shares[j], seed_shares[j]),
            )
            for j in neighbours
        )
        nxt = ClientAwaitShares(
            self.identity, self.quantized_input, sid, keys, graph, MappingProxyType(share_keys)
        )
        seed = crypto.commit_seed(sid, me, self.identity.secret(_SELF_MASK_SEED))
        return nxt, ShareKeys(shares, seed)


@dataclass(frozen=True, slots=True, eq=False)
class ClientAwaitShares:
    """Waiting for the shares relayed from neighbours (end of Round 1)."""

    identity: ClientIdentity
    quantized_input: np.ndarray = field(repr=False)
    session: bytes
    keys: Mapping[int, AdvertiseKeys]
    graph: Mapping[int, tuple[int, ...]] = field(repr=False)
    share_keys: Mapping[int, bytes] = field(repr=False)
    stage: ClassVar[Stage] = Stage.SHARE_KEYS

    def _open(self, share: EncryptedShare) -> tuple[bytes, bytes]:
        me = self.identity.index
        plain = crypto.open_share(
            self.share_keys[share.sender], self.session, share.sender, me, share.ciphertext
        )
        if len(plain) != _SHARE_PLAINTEXT.size:
            raise crypto.DecryptionError("share did not authenticate")
        sender, recipient, mask_share, seed_share = _SHARE_PLAINTEXT.unpack(plain)
        if (sender, recipient) != (share.sender, me):
            raise crypto.DecryptionError("share did not authenticate")
        expected = share_commitment(self.session, sender, me, mask_share, seed_share)
        if share.commitment != expected:
            raise crypto.DecryptionError("share does not match its dealer's commitment")
        return mask_share, seed_share

    def handle(self, message: object) -> tuple[ClientState, MaskedInput | None]:
        """Round 2 (MaskedInput): y = x + PRG(b) + sum over neighbours in U2 of +-PRG(s_ij)."""
        _expect(message, RelayedShares, self.stage)
        assert isinstance(message, RelayedShares)
        me, t = self.identity.index, self.identity.config.params.threshold
        held: dict[int, tuple[bytes, bytes]] = {}
        complaints: set[int] = set()
        for share in message.shares:
            if share.recipient != me or share.sender not in self.share_keys:
                return ClientAborted(
                    f"share from {share.sender} to {share.recipient} "
                    "is not from a neighbour to this client"
                ), None
            if share.sender in held or share.sender in complaints:
                return ClientAborted(f"two shares from client {share.sender}"), None
            try:
                held[share.sender] = self._open(share)
            except crypto.DecryptionError:
                # The dealer's fault, not ours: hold nothing of it, mask without it, and say
                # so at unmasking, where the server can weigh the complaints and name it.
                complaints.add(share.sender)
        if len(held) < t:
            return ClientAborted(f"only {len(held)} neighbours shared keys, threshold is {t}"), None
        sid, mask_sk = self.session, self.identity.secret(_MASK_KEY)
        self_seed = crypto.derive_self_mask_seed(self.identity.secret(_SELF_MASK_SEED), sid, me)
        peers = [(j, self.keys[j].mask_public_key) for j in sorted(held)]
        try:
            seeds = crypto.agree_pairwise_seeds(mask_sk, me, peers, sid)
        except InvalidPayload:
            return ClientAborted("a neighbour's public key is a low-order point"), None
        terms = [(self_seed, 1)] + [
            (pair_seed, mask_sign(me, j)) for (j, _), pair_seed in zip(peers, seeds, strict=True)
        ]
        masked = self.quantized_input.copy()
        apply_masks(masked[: self.identity.config.masked_len], terms)  # the count stays clear
        cls = ClientAwaitConsistency if self.identity.config.active else ClientAwaitUnmask
        nxt = cls(
            self.identity, sid, self.keys, self.graph, MappingProxyType(held), frozenset(complaints)
        )
        return nxt, MaskedInput(masked)


def _check_survivor_list(
    state: ClientAwaitConsistency | ClientAwaitUnmask, survivors: tuple[int, ...]
) -> str:
    if list(survivors) != sorted(set(survivors)):
        return "survivor list has duplicate or unsorted indices"
    if any(i not in state.keys for i in survivors):
        return "survivor list names a client that never advertised keys"
    if state.identity.index not in survivors:
        return "survivor list omits this client"
    t = state.identity.config.params.threshold
    if len(survivors) < t:
        return f"only {len(survivors)} survivors, threshold is {t}"
    return ""


@dataclass(frozen=True, slots=True, eq=False)
class ClientAwaitConsistency:
    """Active mode: waiting for the survivor list to sign (end of Round 2)."""

    identity: ClientIdentity
    session: bytes
    keys: Mapping[int, AdvertiseKeys]
    graph: Mapping[int, tuple[int, ...]] = field(repr=False)
    held: Mapping[int, tuple[bytes, bytes]] = field(repr=False)
    complaints: frozenset[int] = frozenset()
    stage: ClassVar[Stage] = Stage.MASKED_INPUT

    def handle(self, message: object) -> tuple[ClientState, ConsistencySignature | None]:
        """Round 3 (ConsistencyCheck): sign the survivor list U3, committing to this one list."""
        _expect(message, ConsistencyRequest, self.stage)
        assert isinstance(message, ConsistencyRequest)
        problem = _check_survivor_list(self, message.survivors)
        if problem:
            return ClientAborted(problem), None
        assert self.identity.signing_key is not None
        statement = survivors_statement(self.session, message.survivors)
        signature = crypto.sign(self.identity.signing_key, statement)
        nxt = ClientAwaitUnmask(
            self.identity,
            self.session,
            self.keys,
            self.graph,
            self.held,
            self.complaints,
            message.survivors,
        )
        return nxt, ConsistencySignature(signature)


@dataclass(frozen=True, slots=True, eq=False)
class ClientAwaitUnmask:
    """Waiting for the survivor and dropout lists (end of Round 2, or Round 3 when active)."""

    identity: ClientIdentity
    session: bytes
    keys: Mapping[int, AdvertiseKeys]
    graph: Mapping[int, tuple[int, ...]] = field(repr=False)
    held: Mapping[int, tuple[bytes, bytes]] = field(repr=False)
    complaints: frozenset[int] = frozenset()  # neighbours whose share to us was bad
    signed_survivors: tuple[int, ...] | None = None  # active mode: the list signed in Round 3
    stage: ClassVar[Stage] = Stage.UNMASKING

    def _check_request(self, msg: UnmaskRequest) -> str:
        problem = _check_survivor_list(self, msg.survivors)
        if problem:
            return problem
        if list(msg.dropped) != sorted(set(msg.dropped)):
            return "dropout list has duplicate or unsorted indices"
        if any(i not in self.keys for i in msg.dropped):
            return "dropout list names a client that never advertised keys"
        both = set(msg.survivors) & set(msg.dropped)
        if both:
            # Revealing b_j and s_j^SK for the same j would unmask j's input: refuse outright.
            return f"refusing to reveal both shares of client {min(both)}"
        listed = set(msg.survivors) | set(msg.dropped)
        me = self.identity.index
        for j in self.graph[me]:
            if j in self.held and j not in listed:
                return f"neighbour {j} shared keys but is neither surviving nor dropped"
            if j not in self.held and j not in self.complaints and j in listed:
                return f"neighbour {j} never shared keys with this client"
        if self.identity.config.active:
            return self._check_signatures(msg)
        return ""

    def _check_signatures(self, msg: UnmaskRequest) -> str:
        """Active mode: the list must be the signed one, endorsed by t of each peer's neighbours.

        Each honest client signs one list, so a server that shows different lists to different
        neighbours of a peer j cannot collect t endorsements for both unless 2t - k of j's
        neighbours are corrupted; only then could it learn b_j and s_j^SK together.
        """
        if msg.survivors != self.signed_survivors:
            return "survivor list differs from the one this client signed"
        statement = survivors_statement(self.session, msg.survivors)
        vks = self.identity.verifying_keys or {}
        signers = {
            s.index
            for s in msg.signatures
            if s.index in msg.survivors
            and s.index in vks
            and crypto.verify(vks[s.index], statement, s.signature)
        }
        t = self.identity.config.params.threshold
        for j in sorted(self.held):
            endorsed = len(signers.intersection(self.graph[j]))
            if endorsed < t:
                return f"only {endorsed} of client {j}'s neighbours signed the survivor list"
        return ""

    def handle(self, message: object) -> tuple[ClientState, UnmaskResponse | None]:
        """Round 4 (Unmasking): b-shares of survivors, s^SK-shares of dropped, never both."""
        _expect(message, UnmaskRequest, self.stage)
        assert isinstance(message, UnmaskRequest)
        problem = self._check_request(message)
        if problem:
            return ClientAborted(problem), None
        survivors = set(message.survivors)
        revealed = []
        for j in sorted(self.held):
            mask_share, seed_share = self.held[j]
            if j in survivors:
                revealed.append(RevealedShare(j, ShareKind.SELF_MASK_SEED, seed_share))
            else:
                revealed.append(RevealedShare(j, ShareKind.MASK_KEY, mask_share))
        return ClientDone(), UnmaskResponse(tuple(revealed), tuple(sorted(self.complaints)))


ClientState = (
    ClientAwaitKeys
    | ClientAwaitShares
    | ClientAwaitConsistency
    | ClientAwaitUnmask
    | ClientDone
    | ClientAborted
)
