"""A node's invitation to a secure round: its index and what every participant agrees on."""

from __future__ import annotations

from dataclasses import dataclass

from forsaken.common.secagg.params import SecAggConfig


@dataclass(frozen=True, slots=True)
class SetupInfo:
    """Sent by the server with the round's first task.

    The node trains, encodes `num_samples * update / weight_scale` clipped to [-clip, clip] with
    `config.params.bits` bits (plus its sample count), then advertises its keys.
    """

    index: int
    config: SecAggConfig
    clip: float
    weight_scale: float
    verifying_keys: tuple[bytes, ...] = ()  # active mode: node Ed25519 keys, index i at i - 1
