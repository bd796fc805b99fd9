"""Attributable member faults: who sent what only a faulty or malicious node sends.

A fault is something the server can pin on one node (a forged sample-count slot, an update over
the norm bound in a plaintext round). The node is kept out of every further attempt of the round
it spoiled, so the retry completes with the others; after `quarantine_after` faults it is
quarantined: never sampled again and refused at every call until an operator releases it
(`forsaken admin release`) or revokes it. Quarantines are durable (the ledger's client row);
fault counts are not, so a restart forgives faults short of a quarantine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from forsaken.common.errors import ConfigError, UnknownEntity
from forsaken.server.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fault:
    node_id: str
    round: int
    reason: str
    at_ms: int


class FaultBook:
    def __init__(self, ledger: Ledger, quarantine_after: int) -> None:
        if quarantine_after < 1:
            raise ConfigError("quarantine_after must be at least 1")
        self.ledger = ledger
        self.quarantine_after = quarantine_after
        self._faults: dict[str, list[Fault]] = {}
        self.on_fault: Callable[[Fault], None] | None = None  # e.g. a metrics counter
        self._quarantined = {c.node_id: c.quarantine for c in ledger.clients() if c.quarantine}

    def record(self, node_id: str, round_: int, reason: str, now_ms: int) -> bool:
        """Note one fault; True when it puts the node in quarantine."""
        faults = self._faults.setdefault(node_id, [])
        fault = Fault(node_id, round_, reason, now_ms)
        faults.append(fault)
        if self.on_fault is not None:
            self.on_fault(fault)
        del faults[: -self.quarantine_after]  # only the latest few matter
        log.warning("fault by node %s in round %d: %s", node_id, round_, reason)
        if len(faults) < self.quarantine_after or node_id in self._quarantined:
            return False
        why = f"{len(faults)} faults, the last in round {round_}: {reason}"
        self._set(node_id, why)
        log.error("node %s quarantined after %s", node_id, why)
        return True

    def count(self, node_id: str) -> int:
        return len(self._faults.get(node_id, ()))

    def last(self, node_id: str) -> Fault | None:
        faults = self._faults.get(node_id)
        return faults[-1] if faults else None

    def spoiled(self, round_: int) -> frozenset[str]:
        """Nodes that faulted in round `round_`: left out of its further attempts."""
        return frozenset(n for n, fs in self._faults.items() if fs and fs[-1].round == round_)

    def notes(self, round_: int) -> str:
        """What a completed round's record says about the members it left out, and why."""
        return "; ".join(
            f"left out node {node}: {self._faults[node][-1].reason}"
            for node in sorted(self.spoiled(round_))
        )

    def quarantine(self, node_id: str) -> str | None:
        """Why the node is quarantined, or None."""
        return self._quarantined.get(node_id)

    def release(self, node_id: str) -> bool:
        """Lift a quarantine and forget the node's faults; True if it was quarantined."""
        was = node_id in self._quarantined
        self._faults.pop(node_id, None)
        if was:
            self._set(node_id, "")
            log.warning("node %s released from quarantine by an operator", node_id)
        return was

    def _set(self, node_id: str, reason: str) -> None:
        record = self.ledger.client(node_id)
        if record is None:
            raise UnknownEntity(f"no client {node_id} has ever joined")
        self.ledger.upsert_client(replace(record, quarantine=reason))
        if reason:
            self._quarantined[node_id] = reason
        else:
            self._quarantined.pop(node_id, None)
