"""What differs per forget method on the server: how a request starts and how it unlearns.

The lifecycle (forget_lifecycle.py) is the same for every method; it asks the method's
strategy two questions, both pure: what starting does (`start`: which stages it passes at
once, whether the federation continues from another model) and what one completed round
does while unlearning (`unlearning_round`). Everything else a method decides is a property
of `ForgetMethod` itself (who computes it, whether the node is needed while unlearning).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar

from forsaken.common.errors import InvalidPayload
from forsaken.common.forget_methods import ForgetMethod
from forsaken.server.forget_state import Checkpoint, ForgetPolicy, ForgetProgress
from forsaken.server.ledger import ForgetState

_S = ForgetState


@dataclass(frozen=True, slots=True)
class StartFacts:
    """What the server knows when the oldest request starts."""

    model_sha256: str  # the current global model
    completed_round: int
    negated_model: str | None = None  # NoT: the negated model's checkpoint, stored already
    before_node: Checkpoint | None = None  # the last checkpoint before the node's first round


@dataclass(frozen=True, slots=True)
class Start:
    """What starting does: the stages passed at once, in order, and the model to go on from."""

    progress: ForgetProgress
    stages: tuple[ForgetState, ...]
    rollback: str | None = None


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """One completed round while unlearning: the new progress and the stage to move to
    (UNLEARNING to stay; RECOVERING; VERIFYING; FAILED with `reason`, which the lifecycle
    says of the node: "node <id> <reason>")."""

    progress: ForgetProgress
    stage: ForgetState
    reason: str = ""


# What an operator's receipt says the server's own work shows, unless the method says more.
NOTHING_BY_ITSELF = (
    "nothing by itself: the node stopped contributing, but what it taught the model earlier "
    "may remain; use retrain for a removal that can be shown"
)


class ForgetStrategy(ABC):
    """The server's part of one method."""

    needs_negated_model: ClassVar[bool] = False  # `start` needs StartFacts.negated_model
    needs_checkpoint_before_node: ClassVar[bool] = False  # `start` needs StartFacts.before_node

    @abstractmethod
    def start(self, progress: ForgetProgress, facts: StartFacts) -> Start:
        """`progress` holds the counts every method starts with."""

    @abstractmethod
    def unlearning_round(
        self, progress: ForgetProgress, took_part: bool, policy: ForgetPolicy
    ) -> RoundOutcome:
        """A round completed while the request is unlearning; `took_part`: the node's update
        is in it."""

    def server_shows(self, progress: ForgetProgress) -> str:
        """What the server's work alone shows, for a receipt no node verified."""
        return NOTHING_BY_ITSELF


@dataclass(frozen=True, slots=True)
class NodeUnlearning(ForgetStrategy):
    """forsaken, pga, fedquit: the node uploads unlearning steps until its membership oracle
    says the data looks unseen, or the round cap is reached.

    Rounds without the node count against it, so a node that stopped taking part cannot
    block the queue: its request fails after as many rounds as unlearning may take at most.
    """

    def start(self, progress: ForgetProgress, facts: StartFacts) -> Start:
        return Start(progress, (_S.UNLEARNING,))

    def unlearning_round(
        self, progress: ForgetProgress, took_part: bool, policy: ForgetPolicy
    ) -> RoundOutcome:
        if not took_part:
            progress = replace(progress, rounds_missed=progress.rounds_missed + 1)
            if progress.rounds_missed >= policy.max_unlearning_rounds:
                reason = f"took no part in {progress.rounds_missed} unlearning rounds"
                return RoundOutcome(progress, _S.FAILED, reason)
        if took_part:
            progress = replace(progress, unlearning_rounds=progress.unlearning_rounds + 1)
        capped = progress.unlearning_rounds >= policy.max_unlearning_rounds
        if not (progress.client_done or capped):
            return RoundOutcome(progress, _S.UNLEARNING)
        stopped_by = "oracle" if progress.client_done else "round cap"
        return RoundOutcome(replace(progress, stopped_by=stopped_by), _S.RECOVERING)


@dataclass(frozen=True, slots=True)
class Retrain(ForgetStrategy):
    """Exact: roll back to the last checkpoint before the node's first contribution and
    retrain without it for as many rounds as were lost; nothing to recover from after."""

    needs_checkpoint_before_node: ClassVar[bool] = True

    def start(self, progress: ForgetProgress, facts: StartFacts) -> Start:
        base = facts.before_node
        if base is None:  # the node never contributed: nothing to undo
            base = Checkpoint(facts.completed_round, facts.model_sha256)
        progress = replace(
            progress,
            rollback_to_round=base.round,
            retrain_rounds_left=facts.completed_round - base.round,
            rollback_model=base.model_sha256,
        )
        return Start(progress, (_S.UNLEARNING,), rollback=base.model_sha256)

    def unlearning_round(
        self, progress: ForgetProgress, took_part: bool, policy: ForgetPolicy
    ) -> RoundOutcome:
        left = (progress.retrain_rounds_left or 0) - 1
        progress = replace(
            progress,
            retrain_rounds_left=max(0, left),
            unlearning_rounds=progress.unlearning_rounds + 1,
        )
        return RoundOutcome(progress, _S.UNLEARNING if left > 0 else _S.VERIFYING)

    def server_shows(self, progress: ForgetProgress) -> str:
        return (
            "exact: the model was rolled back to the checkpoint of round "
            f"{progress.rollback_to_round}, before the node's first contribution, and "
            "retrained without it; nothing the node sent reached the final model"
        )


class _StraightToRecovery(ForgetStrategy):
    """Methods with no unlearning rounds: starting passes unlearning at once."""

    def unlearning_round(
        self, progress: ForgetProgress, took_part: bool, policy: ForgetPolicy
    ) -> RoundOutcome:
        # Only after a restart between the two writes of `start`: finish passing unlearning.
        return RoundOutcome(progress, _S.RECOVERING)


@dataclass(frozen=True, slots=True)
class Negation(_StraightToRecovery):
    """NoT: continue from the model with its first layers negated; recovery fine-tunes it."""

    needs_negated_model: ClassVar[bool] = True

    def start(self, progress: ForgetProgress, facts: StartFacts) -> Start:
        if facts.negated_model is None:
            raise InvalidPayload("NoT needs the negated model's checkpoint to start")
        progress = replace(progress, rollback_model=facts.negated_model)
        return Start(progress, (_S.UNLEARNING, _S.RECOVERING), rollback=facts.negated_model)


@dataclass(frozen=True, slots=True)
class Finetune(_StraightToRecovery):
    """The negative control: the node just stops contributing while the others train on."""

    def start(self, progress: ForgetProgress, facts: StartFacts) -> Start:
        return Start(progress, (_S.UNLEARNING, _S.RECOVERING))


STRATEGIES: Mapping[ForgetMethod, ForgetStrategy] = MappingProxyType(
    {
        ForgetMethod.FORSAKEN: NodeUnlearning(),
        ForgetMethod.PGA: NodeUnlearning(),
        ForgetMethod.FEDQUIT: NodeUnlearning(),
        ForgetMethod.FINETUNE: Finetune(),
        ForgetMethod.NEGATION: Negation(),
        ForgetMethod.RETRAIN: Retrain(),
    }
)
assert set(STRATEGIES) == set(ForgetMethod)
assert all(isinstance(STRATEGIES[m], NodeUnlearning) == m.computed_by_node for m in ForgetMethod)
