"""The durable record of rounds, participants, forget requests and idempotent responses.

The public face of the ledger; import from here. The code is split by concern, as Flower
splits its state store, to keep each module small:

- `ledger_contract`: frozen records, the forget state machine, shared rules, the `Ledger` ABC;
- `ledger_memory`: `MemoryLedger`, for tests and in-process runs;
- `ledger_sqlite`: `SqliteLedger`, the durable one the daemon uses.
"""

from forsaken.server.ledger_contract import (
    FORGET_TRANSITIONS,
    ClientRecord,
    ForgetChanges,
    ForgetRecord,
    ForgetState,
    IllegalTransition,
    Ledger,
    RoundRecord,
    RoundStatus,
)
from forsaken.server.ledger_memory import MemoryLedger
from forsaken.server.ledger_sqlite import SqliteLedger

__all__ = [
    "FORGET_TRANSITIONS",
    "ClientRecord",
    "ForgetChanges",
    "ForgetRecord",
    "ForgetState",
    "IllegalTransition",
    "Ledger",
    "MemoryLedger",
    "RoundRecord",
    "RoundStatus",
    "SqliteLedger",
]
