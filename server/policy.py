"""Round policy: how many clients to wait for, sample and require, and how long to wait."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from forsaken.common.errors import ConfigError


@dataclass(frozen=True, slots=True)
class RoundPolicy:
    rounds: int = 10  # 0: run until stopped
    min_clients: int = 2  # connected clients needed before a round starts
    fraction: float = 1.0  # share of connected clients sampled per round
    min_completed: int = 2  # updates needed for a round to complete
    round_timeout_s: float = 60.0
    liveness_s: float = 30.0  # a node not heard from for this long is not sampled
    seed: int = 0

    def validate(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"rounds must be >= 0, got {self.rounds}")
        if self.min_clients < 1:
            raise ConfigError(f"min_clients must be >= 1, got {self.min_clients}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 1 <= self.min_completed <= self.min_clients:
            raise ConfigError(
                f"min_completed must be in 1..min_clients ({self.min_clients}), "
                f"got {self.min_completed}"
            )
        if self.round_timeout_s <= 0:
            raise ConfigError(f"round_timeout_s must be > 0, got {self.round_timeout_s}")
        if self.liveness_s <= 0:
            raise ConfigError(f"liveness_s must be > 0, got {self.liveness_s}")

    def sample(
        self,
        available: Sequence[str],
        round_: int,
        attempt: int,
        required: Sequence[str] = (),
    ) -> tuple[str, ...]:
        """Choose the round's participants: reproducible for a seed, round and attempt.

        `required` nodes (of `available`) are always in; the rest of the places are drawn.
        """
        pool = sorted(available)
        want = min(len(pool), max(self.min_clients, math.ceil(self.fraction * len(pool))))
        digest = hashlib.sha256(f"sample/{self.seed}/{round_}/{attempt}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        must = [n for n in dict.fromkeys(required) if n in pool]
        drawn = [n for n in rng.sample(pool, want) if n not in must]
        chosen = must + drawn[: max(0, want - len(must))]
        return tuple(sorted(chosen))
