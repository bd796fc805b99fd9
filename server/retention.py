"""Which model checkpoints the server keeps, so the checkpoint directory stops growing forever.

A checkpoint is kept while something can still ask for it:
* the latest `keep_last` completed rounds (the current model, and recent history for operators);
* every rollback anchor: for each client that ever contributed, the last checkpoint before its
  first contribution, which is where `retrain` restarts if that client asks to forget;
* every model a forget request names (before, rollback base, after), so each receipt's digests
  stay verifiable against a model on disk.

Everything else is collected every keep_last / 2 completed rounds. The ledger keeps every
round's digest either way, so the history of the federation is intact; only the bytes of models
nobody can need any more go.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from forsaken.common.errors import UnknownEntity
from forsaken.server.checkpoints import CheckpointStore
from forsaken.server.ledger import ForgetRecord, Ledger

log = logging.getLogger(__name__)

# Keys under which a forget request's progress and receipt name models.
_PROGRESS_MODELS = ("model_before", "rollback_model")
_RECEIPT_MODELS = ("model_sha256_before", "model_sha256_after")


def recent_models(ledger: Ledger, keep_last: int) -> set[str]:
    """Digests of the latest `keep_last` completed rounds (round numbers are consecutive)."""
    last = ledger.last_completed()
    if last is None:
        return set()
    keep: set[str] = set()
    for n in range(max(0, last.round - keep_last + 1), last.round + 1):
        try:
            sha = ledger.completed_round(n).model_sha256
        except UnknownEntity:
            continue
        if sha:
            keep.add(sha)
    return keep


def rollback_anchors(ledger: Ledger) -> set[str]:
    """For each client that ever contributed, the model `retrain` would roll back to."""
    firsts = {
        first
        for client in ledger.clients()
        if (first := ledger.first_contribution(client.node_id)) is not None
    }
    keep: set[str] = set()
    for first in firsts:  # clients mostly share a few first rounds: one lookup each
        base = ledger.last_checkpoint_before(first)
        if base is not None and base.model_sha256:
            keep.add(base.model_sha256)
    return keep


class RetentionError(RuntimeError):
    """The keep set cannot be computed; collect nothing rather than too much."""


def forget_models(forgets: Iterable[ForgetRecord]) -> set[str]:
    """Every model a forget request's progress or receipt names."""
    keep: set[str] = set()
    for rec in forgets:
        for text, keys in (
            (rec.progress_json, _PROGRESS_MODELS),
            (rec.receipt_json, _RECEIPT_MODELS),
        ):
            try:
                doc = json.loads(text or "{}")
            except json.JSONDecodeError as exc:
                # Skipping the row would delete what it names.
                raise RetentionError(f"forget {rec.forget_id} has unreadable JSON: {exc}") from exc
            if isinstance(doc, dict):
                keep.update(v for k in keys if isinstance(v := doc.get(k), str) and v)
    return keep


def checkpoints_to_keep(ledger: Ledger, keep_last: int) -> set[str]:
    """The union of the three rules above."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    return (
        recent_models(ledger, keep_last)
        | rollback_anchors(ledger)
        | forget_models(ledger.forgets())
    )


def collect(
    ledger: Ledger, checkpoints: CheckpointStore, keep_last: int, completed: int, current: str
) -> None:
    """After a round is on record: delete the checkpoints nothing can need any more.

    The keep set asks the ledger about every client, so it runs every keep_last / 2 rounds
    (at most 1.5 x keep_last recent checkpoints on disk), not after each. 0 keeps everything.
    """
    if not keep_last or completed % max(1, keep_last // 2):
        return
    try:
        keep = checkpoints_to_keep(ledger, keep_last) | {current}
        removed = checkpoints.gc(keep)
    except (RetentionError, OSError) as exc:
        # Housekeeping: a failure here must not fail the round that was just recorded.
        log.warning("checkpoint collection skipped: %s", exc)
        return
    if removed:
        log.info("collected %d old checkpoint(s); %d kept", len(removed), len(keep))
