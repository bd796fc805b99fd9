"""A node's invitation to a secure round: its index and what every participant agrees on."""

from __future__ import annotations

from dataclasses import dataclass

from forsaken.common.secagg.params import SecAggConfig


@dataclass(frozen=True, slots=True)
class SetupInfo:
    """Sent by the server with the round's first task.

    The node trains, encodes `weight * update / weight_scale` clipped to [-clip, clip] with
    `config.params.bits` bits, puts `weight` in the clear count slot, then advertises its keys.
    `weight` is the sample count the node declared when the round began, as the server recorded
    it; `weight_scale` is the sum of every selected node's weight. The server divides the sum by
    the survivors' weights, so a node cannot change the divisor, only be caught lying about it.
    """

    index: int
    config: SecAggConfig
    clip: float
    weight_scale: float
    verifying_keys: tuple[bytes, ...] = ()  # active mode: node Ed25519 keys, index i at i - 1
    weight: int = 0
