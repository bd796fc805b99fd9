"""The cryptographic operations of secure aggregation, under protocol names.

This is the only module of `forsaken` that imports `cryptography.hazmat`. Every other module deals
in plain bytes and numpy arrays, so messages stay serializable and keys never become objects
that could leak through a `repr`. Nothing here logs: keys, seeds, shares and masks are secret.

Primitives (Bonawitz et al., CCS 2017, §4 "cryptographic primitives"):
- key agreement: X25519 (`generate_keypair`, `agree_pairwise_seed`, `derive_share_key`);
- key derivation: HKDF-SHA256 with the session id as salt and a distinct label per purpose;
- authenticated encryption of Shamir shares: AES-256-GCM (`seal_share`, `open_share`);
- pseudo-random generator for masks: AES-256-CTR keystream (`expand_mask`);
- signatures for the active-adversary variant: Ed25519 (`sign`, `verify`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from forsaken.common.errors import InvalidPayload

__all__ = [
    "CLIENT_COINS_LABEL",
    "COMMITMENT_BYTES",
    "KEY_BYTES",
    "PAIRMASK_LABEL",
    "SEED_COMMIT_LABEL",
    "SELFMASK_LABEL",
    "SHAREKEY_LABEL",
    "SHARE_AD_LABEL",
    "SHARE_COMMIT_LABEL",
    "SIGNATURE_BYTES",
    "DecryptionError",
    "agree_pairwise_seed",
    "agree_pairwise_seeds",
    "check_public_key",
    "commit_seed",
    "commit_share",
    "derive_self_mask_seed",
    "derive_share_key",
    "derive_share_keys",
    "derive_subkey",
    "expand_mask",
    "generate_keypair",
    "hkdf_sha256",
    "keystream",
    "mask_public_key",
    "mask_stream",
    "open_share",
    "seal_share",
    "sign",
    "signing_public_key",
    "verify",
    "x25519",
]

# Distinct HKDF labels: a key derived for one purpose can never equal a key for another, even
# from the same Diffie-Hellman secret. The version suffix lets a future change coexist.
PAIRMASK_LABEL = b"forsaken/secagg/pairmask/v1"
SHAREKEY_LABEL = b"forsaken/secagg/sharekey/v1"
SELFMASK_LABEL = b"forsaken/secagg/selfmask/v1"
CLIENT_COINS_LABEL = b"forsaken/secagg/client-coins/v1"
SHARE_AD_LABEL = b"forsaken/secagg/share-ad/v1"
SHARE_COMMIT_LABEL = b"forsaken/secagg/share-commit/v1"
SEED_COMMIT_LABEL = b"forsaken/secagg/seed-commit/v1"
COMMITMENT_BYTES = 32

KEY_BYTES = 32  # X25519 keys, AES-256 keys, mask seeds
SIGNATURE_BYTES = 64  # Ed25519
_GCM_TAG_BYTES = 16
_ZERO_COUNTER = bytes(16)  # CTR starts at 0: every mask seed is used for exactly one stream
_KEY_CHECK_SCALAR = bytes([0x42]) * 32  # any scalar exposes a low-order point

# A read-only block of zeros that AES-CTR "encrypts" to produce raw keystream. Kept across calls
# so a mask expansion allocates nothing; it only ever grows.
_zero_block = np.zeros(0, dtype=np.uint8)


class DecryptionError(InvalidPayload):
    """An encrypted share failed authentication: wrong key, tampered bytes or wrong context.

    Every decryption failure raises exactly this type and carries no detail about why, so a
    caller cannot build an oracle from different error messages.
    """


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise InvalidPayload(f"{what} must be {KEY_BYTES} bytes")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """Plain HKDF-SHA256 (RFC 5869); the protocol's derivations below all go through it."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def x25519(private_key: bytes, peer_public_key: bytes) -> bytes:
    """Raw X25519 (RFC 7748): the shared u-coordinate. Low-order peers are rejected."""
    _check_key(private_key, "private key")
    _check_key(peer_public_key, "public key")
    try:
        return X25519PrivateKey.from_private_bytes(private_key).exchange(
            X25519PublicKey.from_public_bytes(peer_public_key)
        )
    except ValueError as exc:  # the all-zero shared secret of a low-order point
        raise InvalidPayload("public key is not usable for key agreement") from exc


def check_public_key(public_key: bytes) -> None:
    """Reject a public key that is not 32 bytes or lies in the small subgroup.

    A low-order point makes every agreement with it the all-zero secret, whatever the private
    key, so a peer advertising one would make its "pairwise" masks known to everybody.
    """
    x25519(_KEY_CHECK_SCALAR, public_key)


def generate_keypair(private_seed: bytes) -> tuple[bytes, bytes]:
    """Round 0 (AdvertiseKeys): an X25519 key pair (private, public) from 32 secret bytes.

    The caller supplies the randomness so that client states stay pure and reproducible.
    """
    _check_key(private_seed, "private key seed")
    private = X25519PrivateKey.from_private_bytes(private_seed)
    return private_seed, private.public_key().public_bytes_raw()


def mask_public_key(private_key: bytes) -> bytes:
    """The X25519 public key of a private key; the server uses it to check a reconstruction."""
    return generate_keypair(private_key)[1]


def _pair_info(label: bytes, i: int, j: int) -> bytes:
    # Ordered so that both ends of the pair derive the same key.
    lo, hi = min(i, j), max(i, j)
    return label + struct.pack(">II", lo, hi)


def _agree_many(
    label: bytes,
    private_key: bytes,
    own: int,
    peers: Sequence[tuple[int, bytes]],
    session_id: bytes,
) -> list[bytes]:
    # One private-key object for all peers: building it is a third of an X25519 agreement.
    _check_key(private_key, "private key")
    private = X25519PrivateKey.from_private_bytes(private_key)
    keys = []
    for peer, public in peers:
        _check_key(public, "public key")
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:  # the all-zero shared secret of a low-order point
            raise InvalidPayload("public key is not usable for key agreement") from exc
        keys.append(hkdf_sha256(shared, session_id, _pair_info(label, own, peer)))
    return keys


def agree_pairwise_seeds(
    private_key: bytes, own: int, peers: Sequence[tuple[int, bytes]], session_id: bytes
) -> list[bytes]:
    """Round 2 (MaskedInput): pairwise mask seeds s_{own,j} = KA.agree(s_own^SK, s_j^PK).

    `peers` lists (j, s_j^PK). Both ends of a pair derive the same 32 bytes, bound to the
    session and to the pair. The server calls this in Round 4 with a reconstructed s_j^SK.
    """
    return _agree_many(PAIRMASK_LABEL, private_key, own, peers, session_id)


def agree_pairwise_seed(
    private_key: bytes, peer_public_key: bytes, session_id: bytes, i: int, j: int
) -> bytes:
    """`agree_pairwise_seeds` for one pair (i, j) from client i's private key."""
    return agree_pairwise_seeds(private_key, i, [(j, peer_public_key)], session_id)[0]


def derive_share_keys(
    private_key: bytes, own: int, peers: Sequence[tuple[int, bytes]], session_id: bytes
) -> list[bytes]:
    """Round 1 (ShareKeys): AES-256-GCM keys c_{own,j} = KA.agree(c_own^SK, c_j^PK)."""
    return _agree_many(SHAREKEY_LABEL, private_key, own, peers, session_id)


def derive_share_key(
    private_key: bytes, peer_public_key: bytes, session_id: bytes, i: int, j: int
) -> bytes:
    """`derive_share_keys` for one pair (i, j) from client i's private key."""
    return derive_share_keys(private_key, i, [(j, peer_public_key)], session_id)[0]


def derive_self_mask_seed(self_seed: bytes, session_id: bytes, index: int) -> bytes:
    """Round 2: the AES key that expands the self mask PRG(b_i), bound to session and client."""
    _check_key(self_seed, "self-mask seed")
    return hkdf_sha256(self_seed, session_id, SELFMASK_LABEL + struct.pack(">I", index))


def derive_subkey(seed: bytes, purpose: bytes) -> bytes:
    """A 32-byte key for one named purpose from a client's round seed (its private coins)."""
    _check_key(seed, "round seed")
    return hkdf_sha256(seed, b"", CLIENT_COINS_LABEL + b"/" + purpose)


def commit_share(session_id: bytes, owner: int, holder: int, kind: int, share: bytes) -> bytes:
    """A binding, hiding commitment to one Shamir share: SHA-256 over the session, the two
    indices, the kind and the share. A share is a uniform 521-bit field element, so its hash
    reveals nothing of it; a different share cannot match."""
    digest = hashlib.sha256(SHARE_COMMIT_LABEL + session_id)
    digest.update(struct.pack(">III", owner, holder, kind) + share)
    return digest.digest()


def commit_seed(session_id: bytes, owner: int, seed: bytes) -> bytes:
    """A commitment to a dealt secret (a uniform 32-byte seed), checked after reconstruction."""
    return hashlib.sha256(SEED_COMMIT_LABEL + session_id + struct.pack(">I", owner) + seed).digest()


def _share_nonce_and_ad(session_id: bytes, sender: int, recipient: int) -> tuple[bytes, bytes]:
    # The key c_{i,j} is fresh per session and pair and each direction carries one message,
    # so the direction itself is a unique nonce; the associated data repeats it with the session
    # so that a ciphertext replayed into another session or pair fails authentication.
    direction = struct.pack(">II", sender, recipient)
    return direction + bytes(4), SHARE_AD_LABEL + session_id + direction


def seal_share(
    key: bytes, session_id: bytes, sender: int, recipient: int, plaintext: bytes
) -> bytes:
    """Round 1 (ShareKeys): AE.enc(c_{u,v}, u || v || s_u^SK share || b_u share)."""
    _check_key(key, "share key")
    nonce, ad = _share_nonce_and_ad(session_id, sender, recipient)
    return AESGCM(key).encrypt(nonce, plaintext, ad)


def open_share(
    key: bytes, session_id: bytes, sender: int, recipient: int, ciphertext: bytes
) -> bytes:
    """Round 2 (MaskedInput), on receipt: AE.dec of a relayed share; any failure is one type."""
    _check_key(key, "share key")
    if len(ciphertext) < _GCM_TAG_BYTES:
        raise DecryptionError("share did not authenticate")
    nonce, ad = _share_nonce_and_ad(session_id, sender, recipient)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        raise DecryptionError("share did not authenticate") from None


def _zeros(nbytes: int) -> memoryview:
    global _zero_block
    if _zero_block.size < nbytes:
        _zero_block = np.zeros(nbytes, dtype=np.uint8)
        _zero_block.flags.writeable = False
    return _zero_block.data[:nbytes]


def expand_mask(seed: bytes, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """PRG(seed): n little-endian uint32 words of AES-256-CTR keystream (counter from zero).

    This is the mask expansion of Round 2 and of the server's unmasking. The keystream is
    written straight into `out` (or a fresh array): AES-NI runs at several GB/s and no Python
    touches individual entries. A seed must be used for one stream only, which the derivations
    above guarantee by binding session and pair or client.
    """
    _check_key(seed, "mask seed")
    if out is None:
        out = np.empty(n, dtype=np.uint32)
    elif out.dtype != np.uint32 or out.shape != (n,) or not out.flags.c_contiguous:
        raise ValueError("out must be a contiguous uint32 vector of length n")
    nbytes = 4 * n
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    encryptor.update_into(_zeros(nbytes), out.data.cast("B"))
    return out


def mask_stream(seed: bytes, max_chunk_bytes: int) -> Callable[[memoryview], None]:
    """PRG(seed) in pieces: each call fills a byte buffer with the next bytes of the stream.

    Filling consecutive buffers (each at most `max_chunk_bytes`) yields exactly
    `expand_mask(seed, ...)`; masking and unmasking use it to apply many masks chunk by chunk
    while the chunk stays in cache.
    """
    _check_key(seed, "mask seed")
    update_into = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor().update_into
    zeros = _zeros(max_chunk_bytes)

    def fill(buf: memoryview) -> None:
        update_into(zeros[: len(buf)], buf)

    return fill


def keystream(key: bytes, nbytes: int) -> bytes:
    """AES-256-CTR keystream as bytes: the source of a client's derived private coins."""
    words = expand_mask(key, (nbytes + 3) // 4)
    return words.tobytes()[:nbytes]


def signing_public_key(signing_key: bytes) -> bytes:
    """The Ed25519 verifying key (32 bytes) of a 32-byte signing key seed."""
    _check_key(signing_key, "signing key")
    return Ed25519PrivateKey.from_private_bytes(signing_key).public_key().public_bytes_raw()


def sign(signing_key: bytes, message: bytes) -> bytes:
    """Active mode: an Ed25519 signature (advertised keys, Round 0; survivor list, Round 3)."""
    _check_key(signing_key, "signing key")
    return Ed25519PrivateKey.from_private_bytes(signing_key).sign(message)


def verify(verifying_key: bytes, message: bytes, signature: bytes) -> bool:
    """Active mode: whether `signature` is a valid Ed25519 signature; never raises on bad input."""
    if len(verifying_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(verifying_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
