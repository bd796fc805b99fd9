"""The unlearning methods a forget request may ask for, and what kind of work each one is.

Kept free of heavy imports: command-line parsers and the server's request validation read it
without loading the methods themselves (forsaken.common.unlearning). A method's value is the
string the ledger stores and the wire carries; it never changes.
"""

from __future__ import annotations

from enum import StrEnum

from forsaken.common.errors import InvalidPayload


class ForgetMethod(StrEnum):
    """An unlearning method; members are listed in the order help texts show them."""

    FORSAKEN = "forsaken"  # a dummy-gradient generator (Learn to Forget), on the node
    PGA = "pga"  # projected gradient ascent on the forget set, on the node
    FEDQUIT = "fedquit"  # a virtual teacher distilled on the forget set, on the node
    FINETUNE = "finetune"  # the negative control: the node stops contributing
    NEGATION = "not"  # NoT: the server negates the first layers, the others fine-tune
    RETRAIN = "retrain"  # exact: roll back to before the node's first round, retrain

    @classmethod
    def parse(cls, name: str) -> ForgetMethod:
        """The method called `name`, or `InvalidPayload` naming the choices."""
        try:
            return cls(name)
        except ValueError:
            raise InvalidPayload(
                f"unknown method {name!r}; expected one of {list(METHOD_NAMES)}"
            ) from None

    @property
    def computed_by_node(self) -> bool:
        """The forgetting node computes unlearning steps, uploaded through ordinary rounds."""
        return self in _COMPUTED_BY_NODE

    @property
    def server_side(self) -> bool:
        """The server does the unlearning and the node only verifies, so an operator may use
        it for a node that can no longer take part."""
        return not self.computed_by_node

    @property
    def replaces_model(self) -> bool:
        """Starting it swaps the global model (a rollback, or the negated model)."""
        return self in _REPLACES_MODEL

    @property
    def unlearns_in_rounds(self) -> bool:
        """It spends rounds unlearning before recovery starts; the others go straight on."""
        return self.computed_by_node or self is ForgetMethod.RETRAIN


_COMPUTED_BY_NODE = frozenset({ForgetMethod.FORSAKEN, ForgetMethod.PGA, ForgetMethod.FEDQUIT})
_REPLACES_MODEL = frozenset({ForgetMethod.RETRAIN, ForgetMethod.NEGATION})

# The plain strings, for argparse `choices` (its messages print choices with repr).
METHOD_NAMES: tuple[str, ...] = tuple(m.value for m in ForgetMethod)
SERVER_METHODS: tuple[ForgetMethod, ...] = tuple(m for m in ForgetMethod if m.server_side)
