"""Canonical encodings that are hashed or signed: the session id and the signed statements.

Client and server must produce these bytes identically, so they live in one place. All integers
are fixed-width big-endian and every variable-length part is length-prefixed, so distinct
inputs never encode to the same bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from forsaken.common.secagg.messages import AdvertiseKeys
from forsaken.common.secagg.params import SecAggConfig

__all__ = ["SESSION_LABEL", "advertisement_statement", "session_id", "survivors_statement"]

SESSION_LABEL = b"forsaken/secagg/session/v1"
_ADVERTISE_SIG_LABEL = b"forsaken/secagg/advertise-sig/v1"
_SURVIVORS_SIG_LABEL = b"forsaken/secagg/survivors-sig/v1"


def session_id(config: SecAggConfig, keys: Sequence[AdvertiseKeys]) -> bytes:
    """SHA-256 of the configuration and the advertised key list (sorted by index).

    Every derived key binds this value (as HKDF salt and in AES-GCM associated data), so a
    client that saw a different key list or configuration derives unrelated keys.
    """
    digest = hashlib.sha256(SESSION_LABEL)
    config_bytes = config.encode()
    digest.update(struct.pack(">I", len(config_bytes)) + config_bytes)
    ordered = sorted(keys, key=lambda k: k.index)
    digest.update(struct.pack(">I", len(ordered)))
    for adv in ordered:
        digest.update(struct.pack(">I", adv.index))
        digest.update(struct.pack(">H", len(adv.cipher_public_key)) + adv.cipher_public_key)
        digest.update(struct.pack(">H", len(adv.mask_public_key)) + adv.mask_public_key)
    return digest.digest()


def advertisement_statement(
    config: SecAggConfig, index: int, cipher_public_key: bytes, mask_public_key: bytes
) -> bytes:
    """What a client signs in Round 0 of active mode: its keys for this configuration."""
    config_bytes = config.encode()
    return (
        _ADVERTISE_SIG_LABEL
        + struct.pack(">I", len(config_bytes))
        + config_bytes
        + struct.pack(">I", index)
        + cipher_public_key
        + mask_public_key
    )


def survivors_statement(session: bytes, survivors: Sequence[int]) -> bytes:
    """What a client signs in Round 3 (ConsistencyCheck): the survivor list U3 it was shown."""
    return (
        _SURVIVORS_SIG_LABEL
        + session
        + struct.pack(">I", len(survivors))
        + b"".join(struct.pack(">I", i) for i in survivors)
    )
