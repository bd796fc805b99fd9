"""Node identity: signed Joins, and keys that must never name a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from forsaken.common.errors import NotAuthenticated
from forsaken.common.identity import NodeIdentity, node_id_for, verify_join


def test_signed_join_verifies_and_binds_every_field(tmp_path: Path) -> None:
    ident = NodeIdentity.load_or_create(tmp_path)
    assert NodeIdentity.load_or_create(tmp_path).node_id == ident.node_id  # stable
    assert (tmp_path / "node_key.ed25519").stat().st_mode & 0o777 == 0o600
    sig = ident.sign_join("r1", 1000, 50, b"c" * 32)
    assert verify_join(ident.public_key, sig, "r1", 1000, 50, b"c" * 32) == ident.node_id
    for args in (
        ("r2", 1000, 50, b"c" * 32),
        ("r1", 1001, 50, b"c" * 32),
        ("r1", 1000, 51, b"c" * 32),
        ("r1", 1000, 50, b"d" * 32),  # another challenge: a replay elsewhere
    ):
        with pytest.raises(NotAuthenticated, match="does not verify"):
            verify_join(ident.public_key, sig, *args)


@pytest.mark.parametrize(
    "key",
    [
        bytes(32),  # order 4
        bytes.fromhex("01" + "00" * 31),  # the identity
        bytes.fromhex("ec" + "ff" * 30 + "7f"),  # order 2
        bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
        b"\xff" * 31 + b"\x7f",  # y >= p: not canonical
    ],
)
def test_small_order_and_non_canonical_keys_name_no_node(key: bytes) -> None:
    with pytest.raises(NotAuthenticated, match=r"small-order|non-canonical"):
        node_id_for(key)
    # A forged (R, S=0) signature is refused before it is ever checked.
    with pytest.raises(NotAuthenticated):
        verify_join(key, key + bytes(32), "r", 0, 0, b"")


def test_wrong_length_keys_are_refused() -> None:
    with pytest.raises(NotAuthenticated, match="32 bytes"):
        node_id_for(b"short")
