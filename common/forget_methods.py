"""The names of the unlearning methods a forget request may ask for, and who computes them.

Kept free of heavy imports: command-line parsers and the server's request validation read it
without loading the methods themselves (forsaken.common.unlearning).
"""

from __future__ import annotations

# In the order help texts list them.
METHOD_NAMES: tuple[str, ...] = ("forsaken", "pga", "fedquit", "finetune", "not", "retrain")
CLIENT_METHODS = ("forsaken", "pga", "fedquit")  # the node computes an unlearning step
SERVER_METHODS = ("retrain", "finetune", "not")  # the server acts; the node only verifies
