"""What a forgetting node may report about its request; the value is what the wire carries."""

from __future__ import annotations

from enum import StrEnum

from forsaken.common.errors import InvalidPayload


class ReportKind(StrEnum):
    PROGRESS = "progress"  # one unlearning step done; metrics describe it
    DONE = "done"  # the same, and the node's membership oracle says the data looks unseen
    EVIDENCE = "evidence"  # the measurements on the final model that complete the request
    FAILED = "failed"  # the node cannot go on; the reason says why

    @classmethod
    def parse(cls, kind: str) -> ReportKind:
        try:
            return cls(kind)
        except ValueError:
            raise InvalidPayload(f"unknown report kind {kind!r}") from None
