"""Who the members are: membership, liveness, declared sample counts and who may call at all.

Transport-free and single-threaded like the coordinator (the runtime serialises calls). The
ledger keeps what must survive a restart (the client rows, revocations, quarantines); what
only matters while the server runs (last contact, current declarations, session keys) is
kept here in memory.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from forsaken.common.errors import MemberFault, PermissionDenied, RateLimited, UnknownEntity
from forsaken.server.faults import FaultBook
from forsaken.server.ledger import ClientRecord, Ledger

log = logging.getLogger(__name__)


class ClientRegistry:
    def __init__(self, ledger: Ledger, liveness_s: float, quarantine_after: int) -> None:
        self.ledger = ledger
        self.liveness_s = liveness_s
        self.faults = FaultBook(ledger, quarantine_after)
        self._revoked = {c.node_id for c in ledger.clients() if c.revoked}
        self._live: dict[str, int] = {}  # node -> last call; dropped when it leaves
        # Liveness forgets a node that left; the forget timer needs its true last contact.
        self._contact: dict[str, int] = {}
        self._samples: dict[str, int] = {}  # the count each node declared last
        self._most: dict[str, int] = {}  # the most it ever declared: bounds its forget ids
        self._keys: dict[str, bytes] = {}  # Ed25519 identity keys, for active SecAgg

    # ---- admission ----------------------------------------------------------------------

    def join(
        self,
        node_id: str,
        public_key: bytes,
        num_samples: int,
        now_ms: int,
        max_clients: int = 1_000_000,
    ) -> None:
        self.check_admitted(node_id)
        existing = self.ledger.client(node_id)
        live = self.live(now_ms)
        if node_id not in live and len(live) >= max_clients:
            raise RateLimited(f"the server already serves its limit of {max_clients} clients")
        first_seen = existing.first_seen_ms if existing else now_ms
        self.ledger.upsert_client(
            ClientRecord(node_id, public_key, num_samples, first_seen, now_ms)
        )
        self._keys[node_id] = public_key
        self.seen(node_id, num_samples, now_ms)

    def check_admitted(self, node_id: str) -> None:
        """PermissionDenied for a revoked or quarantined node, saying which and why."""
        if node_id in self._revoked:
            raise PermissionDenied(f"node {node_id} is revoked")
        reason = self.faults.quarantine(node_id)
        if reason:
            raise PermissionDenied(
                f"node {node_id} is quarantined ({reason}); an operator can lift it with "
                f"`forsaken admin release {node_id}`"
            )

    def revoke(self, node_id: str, reason: str) -> bool:
        """Mark a node revoked in the ledger; True if it was already. It is never served again."""
        existing = self.ledger.client(node_id)
        if existing is None:
            raise UnknownEntity(f"no client {node_id} has ever joined")
        self._live.pop(node_id, None)
        if existing.revoked:
            return True
        self.ledger.upsert_client(replace(existing, revoked=True))
        self._revoked.add(node_id)
        log.warning("node %s revoked: %s", node_id, reason or "no reason given")
        return False

    def is_revoked(self, node_id: str) -> bool:
        return node_id in self._revoked

    def release(self, node_id: str) -> bool:
        """Lift a node's quarantine; True if it was quarantined."""
        if self.ledger.client(node_id) is None:
            raise UnknownEntity(f"no client {node_id} has ever joined")
        return self.faults.release(node_id)

    def fault(self, fault: MemberFault, round_: int, now_ms: int) -> None:
        """An attributable fault: the node sits out this round's retries, maybe for good."""
        if self.faults.record(fault.node_id, round_, fault.reason, now_ms):
            self._live.pop(fault.node_id, None)

    # ---- liveness and declarations ------------------------------------------------------

    def seen(self, node_id: str, num_samples: int | None, now_ms: int) -> None:
        """A call from the node, with the sample count it declares if the call carries one."""
        self._live[node_id] = now_ms
        self._contact[node_id] = now_ms
        if num_samples is not None:
            self._samples[node_id] = num_samples
            self._most[node_id] = max(self._most.get(node_id, 0), num_samples)

    def leave(self, node_id: str) -> None:
        """A node left cleanly: stop sampling it (an open round still waits for its deadline)."""
        self._live.pop(node_id, None)

    def live(self, now_ms: int) -> list[str]:
        """Nodes heard from within the liveness window, sorted; never a barred one (the edge
        refuses their calls, but the core does not rely on it)."""
        horizon = now_ms - int(self.liveness_s * 1000)
        return sorted(
            n
            for n, t in self._live.items()
            if t >= horizon and n not in self._revoked and not self.faults.quarantine(n)
        )

    def samples(self, node_id: str, default: int = 1) -> int:
        return self._samples.get(node_id, default)

    def most_declared(self, node_id: str) -> int:
        record = self.ledger.client(node_id)
        return max(self._most.get(node_id, 0), record.num_samples if record else 0)

    def last_contact(self) -> dict[str, int]:
        return self._contact

    def contacts(self) -> dict[str, tuple[int, int | None]]:
        """(last call, samples declared then) of every node heard from since this start."""
        return {n: (t, self._samples.get(n)) for n, t in self._contact.items()}

    def keys(self) -> dict[str, bytes]:
        return self._keys
