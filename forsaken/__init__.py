"""forsaken: federated learning in which a participant can take its data back.

The library's front door: `Federation` (what to run) starts a `Run` (a running federation of
real daemons, or of the same daemons in process) that waits for rounds and asks a client to
forget, returning a typed `Receipt`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forsaken.client.observers import ClientObserver, ForgetStepReport, RoundReport
    from forsaken.common.forget_receipt import Receipt
    from forsaken.federation import Federation, FederationError, Run

__version__ = "0.1.0"

# Loaded on first use: every daemon imports this package first (it is the parent of
# forsaken.server and forsaken.client), and a server must not load the facade and the client.
_PUBLIC = {
    "ClientObserver": "forsaken.client.observers",
    "ForgetStepReport": "forsaken.client.observers",
    "RoundReport": "forsaken.client.observers",
    "Federation": "forsaken.federation",
    "FederationError": "forsaken.federation",
    "Run": "forsaken.federation",
    "Receipt": "forsaken.common.forget_receipt",
}


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'forsaken' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ClientObserver",
    "Federation",
    "FederationError",
    "ForgetStepReport",
    "Receipt",
    "RoundReport",
    "Run",
    "__version__",
]
