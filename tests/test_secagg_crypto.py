"""Known-answer and misuse tests for the SecAgg crypto wrapper (the only hazmat importer)."""

from __future__ import annotations

import numpy as np
import pytest

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg import crypto
from forsaken.common.secagg.prg import CHUNK, apply_masks, byte_reader, net_mask


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# RFC 7748 §5.2, first test vector: scalar, input u-coordinate, output u-coordinate.
RFC7748_SCALAR = h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
RFC7748_U_IN = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
RFC7748_U_OUT = h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
# RFC 7748 §6.1: the Diffie-Hellman example.
ALICE_SK = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# Frozen output of expand_mask(bytes(range(32)), 8): any change to the PRG breaks this.
GOLDEN_SEED = bytes(range(32))
GOLDEN_MASK = h("f29000b62a499fd0a9f39a6add2e7780f05d76ae4ab99fe5a6f69b3148c2363d")
# AES-256 of the zero block under the zero key (FIPS-197 style known answer): the first CTR
# block with the counter at zero.
AES256_ZERO = h("dc95c078a2408989ad48a21492842087")

SESSION = bytes(32)


def test_x25519_rfc7748_scalar_multiplication() -> None:
    assert crypto.x25519(RFC7748_SCALAR, RFC7748_U_IN) == RFC7748_U_OUT


def test_x25519_rfc7748_diffie_hellman_through_keypair_wrapper() -> None:
    assert crypto.generate_keypair(ALICE_SK) == (ALICE_SK, ALICE_PK)
    assert crypto.mask_public_key(BOB_SK) == BOB_PK
    assert crypto.x25519(ALICE_SK, BOB_PK) == SHARED
    assert crypto.x25519(BOB_SK, ALICE_PK) == SHARED


def test_hkdf_rfc5869_test_case_1() -> None:
    okm = crypto.hkdf_sha256(
        ikm=bytes([0x0B] * 22),
        salt=h("000102030405060708090a0b0c"),
        info=h("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm == h(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_expand_mask_golden_bytes() -> None:
    mask = crypto.expand_mask(GOLDEN_SEED, 8)
    assert mask.dtype == np.uint32
    assert mask.tobytes() == GOLDEN_MASK
    assert mask[0] == 0xB60090F2  # little-endian words
    assert crypto.expand_mask(bytes(32), 4).tobytes() == AES256_ZERO


def test_expand_mask_writes_into_out_and_checks_it() -> None:
    out = np.zeros(8, dtype=np.uint32)
    assert crypto.expand_mask(GOLDEN_SEED, 8, out=out) is out
    assert out.tobytes() == GOLDEN_MASK
    with pytest.raises(ValueError):
        crypto.expand_mask(GOLDEN_SEED, 8, out=np.zeros(8, dtype=np.int64))
    with pytest.raises(ValueError):
        crypto.expand_mask(GOLDEN_SEED, 8, out=np.zeros(9, dtype=np.uint32))
    with pytest.raises(InvalidPayload):
        crypto.expand_mask(b"short", 8)


def test_mask_stream_continues_the_expansion() -> None:
    whole = crypto.expand_mask(GOLDEN_SEED, 1000)
    fill = crypto.mask_stream(GOLDEN_SEED, 4 * 500)
    pieces = [np.empty(n, dtype=np.uint32) for n in (3, 500, 497)]
    for piece in pieces:
        fill(memoryview(piece).cast("B"))
    assert np.array_equal(np.concatenate(pieces), whole)


def test_apply_masks_matches_a_slow_reference_across_chunks() -> None:
    n = 2 * CHUNK + 17  # three chunks, the last one ragged
    terms = [(bytes([i]) * 32, 1 if i % 3 else -1) for i in range(1, 6)]
    base = np.arange(n, dtype=np.uint32)
    reference = base.astype(np.int64)
    for seed, sign in terms:
        reference += sign * crypto.expand_mask(seed, n).astype(np.int64)
    expected = (reference % (1 << 32)).astype(np.uint32)
    assert np.array_equal(apply_masks(base.copy(), terms), expected)
    assert np.array_equal(net_mask(terms, n) + base, expected)


def test_byte_reader_is_sequential_and_bounded() -> None:
    read = byte_reader(GOLDEN_SEED, 32)
    assert read(8) + read(24) == GOLDEN_MASK
    with pytest.raises(RuntimeError):
        read(1)


def test_pairwise_seed_is_symmetric_and_bound_to_session_and_pair() -> None:
    a = crypto.agree_pairwise_seed(ALICE_SK, BOB_PK, SESSION, 3, 7)
    assert a == crypto.agree_pairwise_seed(BOB_SK, ALICE_PK, SESSION, 7, 3)
    assert a != crypto.agree_pairwise_seed(ALICE_SK, BOB_PK, bytes([1]) * 32, 3, 7)
    assert a != crypto.agree_pairwise_seed(ALICE_SK, BOB_PK, SESSION, 3, 8)
    # Different labels: the share key from the same DH secret is unrelated to the mask seed.
    assert a != crypto.derive_share_key(ALICE_SK, BOB_PK, SESSION, 3, 7)


def test_low_order_public_key_is_rejected() -> None:
    with pytest.raises(InvalidPayload):
        crypto.x25519(ALICE_SK, bytes(32))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_keys_must_be_32_bytes(length: int) -> None:
    with pytest.raises(InvalidPayload):
        crypto.agree_pairwise_seed(ALICE_SK, bytes([9]) * length, SESSION, 1, 2)
    with pytest.raises(InvalidPayload):
        crypto.seal_share(bytes(length), SESSION, 1, 2, b"x")


def _sealed() -> tuple[bytes, bytes]:
    key = crypto.derive_share_key(ALICE_SK, BOB_PK, SESSION, 1, 2)
    return key, crypto.seal_share(key, SESSION, 1, 2, b"share material")


def test_seal_open_round_trip() -> None:
    key, ct = _sealed()
    assert crypto.open_share(key, SESSION, 1, 2, ct) == b"share material"


def test_tampered_ciphertext_fails_with_one_exception_type() -> None:
    key, ct = _sealed()
    for position in (0, len(ct) // 2, len(ct) - 1):
        bad = bytearray(ct)
        bad[position] ^= 1
        with pytest.raises(crypto.DecryptionError):
            crypto.open_share(key, SESSION, 1, 2, bytes(bad))
    with pytest.raises(crypto.DecryptionError):
        crypto.open_share(key, SESSION, 1, 2, ct[:10])


@pytest.mark.parametrize(
    ("session", "sender", "recipient"),
    [(bytes([1]) * 32, 1, 2), (SESSION, 2, 1), (SESSION, 1, 3), (SESSION, 3, 2)],
)
def test_replayed_share_fails_associated_data(session: bytes, sender: int, recipient: int) -> None:
    key, ct = _sealed()
    with pytest.raises(crypto.DecryptionError):
        crypto.open_share(key, session, sender, recipient, ct)


def test_decryption_error_is_an_invalid_payload() -> None:
    assert issubclass(crypto.DecryptionError, InvalidPayload)


def test_ed25519_sign_and_verify() -> None:
    signing_key = bytes([5]) * 32
    vk = crypto.signing_public_key(signing_key)
    sig = crypto.sign(signing_key, b"statement")
    assert crypto.verify(vk, b"statement", sig)
    assert not crypto.verify(vk, b"statement!", sig)
    assert not crypto.verify(vk, b"statement", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not crypto.verify(vk, b"statement", b"short")
    assert not crypto.verify(bytes(31), b"statement", sig)
