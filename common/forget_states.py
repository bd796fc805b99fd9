"""Where a forget request stands: the server's lifecycle, and the one state only a node knows.

A state's value is the string the ledger and a node's state file store; it never changes.
Kept in common/ because both sides name these states: the server moves a request along
them, and the node, its Owner API and the command line follow it.
"""

from __future__ import annotations

from enum import StrEnum

from forsaken.common.errors import InvalidPayload


class ForgetState(StrEnum):
    """The lifecycle of a forget request on the server (README, "Forgetting")."""

    REQUESTED = "requested"
    UNLEARNING = "unlearning"
    RECOVERING = "recovering"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (ForgetState.COMPLETED, ForgetState.FAILED)


class PendingState(StrEnum):
    """A request its node holds but the server has not acknowledged yet."""

    SUBMITTING = "submitting"

    @property
    def terminal(self) -> bool:
        return False


# What a node (and its Owner API) can say of one of its requests.
RequestState = ForgetState | PendingState

# The order a request passes through, as progress displays count it.
REQUEST_STATES: tuple[RequestState, ...] = (
    PendingState.SUBMITTING,
    ForgetState.REQUESTED,
    ForgetState.UNLEARNING,
    ForgetState.RECOVERING,
    ForgetState.VERIFYING,
    ForgetState.COMPLETED,
)


def parse_request_state(text: str) -> RequestState:
    """The state called `text`, or `InvalidPayload` naming it."""
    if text == PendingState.SUBMITTING:
        return PendingState.SUBMITTING
    try:
        return ForgetState(text)
    except ValueError:
        raise InvalidPayload(f"unknown forget state {text!r}") from None
