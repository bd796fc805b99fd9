"""Who takes part in a round, and with what FedAvg weight.

Both are decided once, when the round starts, from the registry (who is live, what each node
declared, who spoiled an earlier attempt) and the forget lifecycle (who is forgetting, who
has nothing left to train on); the weights are announced with the tasks.
"""

from __future__ import annotations

from forsaken.server.forgetting import ForgetManager
from forsaken.server.policy import RoundPolicy
from forsaken.server.registry import ClientRegistry


def select_participants(
    policy: RoundPolicy,
    registry: ClientRegistry,
    forgets: ForgetManager,
    missed: frozenset[str],
    number: int,
    attempt: int,
    now_ms: int,
) -> tuple[str, ...] | None:
    """The round's participants, or None while too few nodes can take part. `missed`: nodes
    that left an earlier attempt of this round unanswered."""
    everyone = registry.live(now_ms)
    # A node that spoiled an attempt of this round sits out its retries; one that has no
    # samples left (it forgot them all) has nothing to train on and no longer counts
    # towards the quorum either.
    excluded = forgets.excluded_nodes() | registry.faults.spoiled(number)
    live = [
        n
        for n in everyone
        if n not in excluded and (registry.samples(n) > 0 or forgets.instruction_for(n) is not None)
    ]
    needed = max(policy.min_completed, policy.min_clients - (len(everyone) - len(live)))
    if len(live) < needed:
        return None
    # Nodes that left an earlier attempt unanswered sit its retries out while enough others
    # remain: a live but unresponsive node cannot stall the round.
    responsive = [n for n in live if n not in missed]
    if len(responsive) >= needed:
        live = responsive
    # The node uploading forget steps takes part in every round until it is done.
    forgetter = [n for n in live if forgets.instruction_for(n) is not None]
    return policy.sample(live, number, attempt, required=forgetter)


def round_weight(registry: ClientRegistry, node_id: str, forget_node: str) -> int:
    """The FedAvg weight a round announces for a node: the count it declares, except that
    the node uploading forget steps keeps the most it ever declared (its weight from before
    the request), so its steps land with the share its training had. After a server restart
    mid-request only the ledger's count is known; at least 1 keeps the step's scale W / w
    consistent, whatever w is."""
    if node_id == forget_node:
        return max(1, registry.most_declared(node_id))
    return max(0, registry.samples(node_id))
