"""Shamir secret sharing over GF(2^521 - 1): every t-subset reconstructs, t - 1 do not."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg import shamir


def _coins(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    holders=st.lists(st.integers(1, 200), min_size=2, max_size=7, unique=True),
    data=st.data(),
)
def test_every_t_subset_reconstructs_and_fewer_do_not(
    secret: bytes, holders: list[int], data: st.DataObject
) -> None:
    t = data.draw(st.integers(1, len(holders)), label="threshold")
    coin_seed = data.draw(st.integers(0, 2**32), label="coins")
    shares = shamir.split_secret(secret, t, holders, _coins(coin_seed))
    assert set(shares) == set(holders)
    assert all(len(s) == shamir.SHARE_BYTES for s in shares.values())
    for subset in itertools.combinations(holders, t):
        assert shamir.reconstruct_secret({x: shares[x] for x in subset}) == secret
    if t > 1:
        for subset in itertools.combinations(holders, t - 1):
            # t - 1 points fix a polynomial of lower degree: its value at 0 is another number
            # (equal only with probability 1/p).
            value = shamir.reconstruct({x: shamir.bytes_to_int(shares[x]) for x in subset})
            assert value != int.from_bytes(secret, "big")


def test_threshold_one_shares_are_the_secret() -> None:
    shares = shamir.split(12345, 1, [1, 2, 3], _coins(0))
    assert set(shares.values()) == {12345}


def test_reconstruct_from_more_than_t_consistent_shares() -> None:
    shares = shamir.split(987654321, 3, range(1, 8), _coins(1))
    assert shamir.reconstruct(shares) == 987654321


def test_a_wrong_share_changes_the_result() -> None:
    shares = shamir.split(42, 3, [1, 2, 3], _coins(2))
    shares[2] = (shares[2] + 1) % shamir.PRIME
    assert shamir.reconstruct(shares) != 42


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        shamir.split(1, 0, [1, 2], _coins(0))
    with pytest.raises(ValueError):
        shamir.split(1, 3, [1, 2], _coins(0))
    with pytest.raises(ValueError):
        shamir.split(1, 1, [0, 2], _coins(0))  # x = 0 would hand out the secret
    with pytest.raises(ValueError):
        shamir.split(1, 1, [2, 2], _coins(0))
    with pytest.raises(ValueError):
        shamir.split(shamir.PRIME, 1, [1], _coins(0))
    with pytest.raises(ValueError):
        shamir.split_secret(b"31 bytes" * 3 + b"1234567", 1, [1], _coins(0))
    with pytest.raises(ValueError):
        shamir.reconstruct({})


def test_share_decoding_rejects_bad_lengths_and_non_field_values() -> None:
    assert shamir.bytes_to_int(shamir.int_to_bytes(7)) == 7
    with pytest.raises(InvalidPayload):
        shamir.bytes_to_int(bytes(65))
    with pytest.raises(InvalidPayload):
        shamir.bytes_to_int(shamir.int_to_bytes(shamir.PRIME))


def test_reconstruction_outside_32_bytes_is_rejected() -> None:
    big = (1 << 300) + 5
    shares = shamir.split(big, 2, [1, 2], _coins(3))
    with pytest.raises(InvalidPayload):
        shamir.reconstruct_secret({x: shamir.int_to_bytes(y) for x, y in shares.items()})
