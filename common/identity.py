"""Node identity: a long-term Ed25519 key pair kept in the node's state directory.

The node id is derived from the public key, so a node cannot claim another's id without its
private key. Join requests are signed; the server hands back a session token for later calls.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from forsaken.common.errors import ConfigError, NotAuthenticated
from forsaken.common.fsutil import atomic_write

JOIN_CONTEXT = b"forsaken/join/v2"  # v2: the signature covers the server's challenge
CHALLENGE_BYTES = 32
KEY_FILE = "node_key.ed25519"


# The eight Ed25519 points of small order. With such a key, signatures can verify without any
# private key (cofactorless verification accepts some (R, S=0) pairs), so they name no node.
_SMALL_ORDER_KEYS = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    )
)
_FIELD_P = 2**255 - 19


def check_public_key(public_key: bytes) -> None:
    """Refuse keys that are not 32 bytes, not canonical, or of small order."""
    if len(public_key) != 32:
        raise NotAuthenticated(f"public key must be 32 bytes, got {len(public_key)}")
    y = int.from_bytes(public_key, "little") & ((1 << 255) - 1)
    if y >= _FIELD_P or public_key in _SMALL_ORDER_KEYS:
        raise NotAuthenticated("public key is a non-canonical or small-order point")


def node_id_for(public_key: bytes) -> str:
    """The stable node id: the first 16 bytes of SHA-256 of the public key, in hex."""
    check_public_key(public_key)
    return hashlib.sha256(b"forsaken/node-id/v1" + public_key).hexdigest()[:32]


def join_message(request_id: str, timestamp_ms: int, num_samples: int, challenge: bytes) -> bytes:
    """What a node signs to join: bound to a single-use server challenge, so a captured Join
    cannot be replayed, and to the request and its claims."""
    rid = request_id.encode()
    return (
        JOIN_CONTEXT
        + struct.pack(">I", len(rid))
        + rid
        + struct.pack(">qq", timestamp_ms, num_samples)
        + struct.pack(">I", len(challenge))
        + challenge
    )


@dataclass(frozen=True)
class NodeIdentity:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def node_id(self) -> str:
        return node_id_for(self.public_key)

    @property
    def signing_seed(self) -> bytes:
        """The raw 32-byte Ed25519 seed, for protocols that sign with the node key (SecAgg)."""
        return self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign_join(
        self, request_id: str, timestamp_ms: int, num_samples: int, challenge: bytes
    ) -> bytes:
        return self.private_key.sign(join_message(request_id, timestamp_ms, num_samples, challenge))

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: Path) -> NodeIdentity:
        """Load the node key, creating it (mode 0600, written atomically) on first start."""
        path = Path(state_dir) / KEY_FILE
        if path.exists():
            raw = path.read_bytes()
            if len(raw) != 32:
                raise ConfigError(f"{path} is not a 32-byte Ed25519 private key")
            return cls(Ed25519PrivateKey.from_private_bytes(raw))
        identity = cls.generate()
        raw = identity.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        os.makedirs(state_dir, exist_ok=True)
        atomic_write(path, raw, mode=0o600)
        return identity


def verify_join(
    public_key: bytes,
    signature: bytes,
    request_id: str,
    timestamp_ms: int,
    num_samples: int,
    challenge: bytes,
) -> str:
    """Check a signed Join; return the node id. Raises NotAuthenticated on any failure."""
    node_id = node_id_for(public_key)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, join_message(request_id, timestamp_ms, num_samples, challenge)
        )
    except (InvalidSignature, ValueError):
        raise NotAuthenticated("join signature does not verify") from None
    return node_id
