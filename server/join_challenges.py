"""Single-use Join challenges, so that a captured Join cannot be replayed.

A node asks for a challenge, signs it into its Join, and the server accepts each challenge
once, within its lifetime. Without this a Join signed five minutes ago could be replayed to
open a session as its node and end the real node's one (mutual TLS stops that too, but a
plaintext federation has nothing else). Challenges live in memory: a restart voids them all,
which is what makes old Joins useless across restarts as well.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

from forsaken.common.errors import NotAuthenticated
from forsaken.common.identity import CHALLENGE_BYTES

DEFAULT_TTL_S = 60.0
# Bounded against a flood of challenge requests: the oldest go first, and a node whose
# challenge was pushed out simply asks again.
DEFAULT_CAPACITY = 100_000


class ChallengeBook:
    def __init__(
        self,
        clock: Callable[[], float],
        ttl_s: float = DEFAULT_TTL_S,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.capacity = capacity
        self._issued: OrderedDict[bytes, float] = OrderedDict()  # challenge -> expiry
        self._lock = threading.Lock()

    def issue(self) -> tuple[bytes, float]:
        """A fresh challenge and the time it expires."""
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        expires = self.clock() + self.ttl_s
        with self._lock:
            self._issued[challenge] = expires
            while len(self._issued) > self.capacity:
                self._issued.popitem(last=False)
        return challenge, expires

    def redeem(self, challenge: bytes) -> None:
        """Spend a challenge, or NotAuthenticated if it was never issued, is spent or expired."""
        with self._lock:
            expires = self._issued.pop(challenge, None)
        if expires is None:
            raise NotAuthenticated(
                "join challenge unknown or already used: ask JoinChallenge for a fresh one "
                "(a replayed Join is refused)"
            )
        if self.clock() > expires:
            raise NotAuthenticated("join challenge expired: ask JoinChallenge for a fresh one")

    def outstanding(self) -> int:
        with self._lock:
            return len(self._issued)
