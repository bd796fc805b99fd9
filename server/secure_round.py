"""One secure-aggregation round as the coordinator sees it: node ids, stages and deadlines.

The protocol itself lives in `forsaken.common.secagg` as pure states; this class only maps
string node ids to protocol indices, keeps what each node should be told next, closes a stage
when everyone answered or its deadline passed, and decodes the final sum into a FedAvg delta.
The server never holds an unmasked individual update: masked inputs are summed on arrival.

Weights are fixed when the round starts: each node's declared sample count is announced to it,
must come back in the clear count slot of its masked input (else the input is refused and the
node named), and the sum is divided by the survivors' announced weights, never by a total that
a member could forge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from forsaken.common.errors import (
    ConfigError,
    DuplicateRequest,
    MemberFault,
    PermissionDenied,
    WrongStage,
)
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    ServerMessage,
    ShareKeys,
    Stage,
    UnmaskResponse,
)
from forsaken.common.secagg.params import (
    SecAggConfig,
    SecAggParams,
    assign_indices,
    choose_parameters,
    complete_threshold,
    sparse_threshold,
)
from forsaken.common.secagg.quantize import dequantize_sum
from forsaken.common.secagg.server_states import (
    ServerAborted,
    ServerFinished,
    ServerState,
    start_server,
)
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.secagg.unmask import ShareFault

log = logging.getLogger(__name__)

ClientStageMessage = AdvertiseKeys | ShareKeys | ConsistencySignature | UnmaskResponse | MaskedInput


@dataclass(frozen=True, slots=True, eq=False)
class SecureResult:
    delta: np.ndarray  # the survivors' weighted-average update
    total_weight: int  # the survivors' announced weights, summed: the divisor
    survivors: tuple[str, ...]
    quantization_slack: float  # how far rounding alone can move the delta's L2 norm


@dataclass(frozen=True, slots=True)
class SecureSettings:
    """Operator-facing knobs of secure aggregation."""

    clip: float = 16.0  # forget steps are scaled by W/w; their entries reach ~8.5 on mnist5k
    dropout_rate: float = 0.1
    corruption_rate: float = 0.0
    neighbors: int = 0  # 0: chosen by `choose_parameters`
    active: bool = False
    stage_timeout_s: float = 30.0

    def validate(self) -> None:
        if not self.clip > 0:
            raise ConfigError(f"secagg clip must be > 0, got {self.clip}")
        if not 0.0 <= self.dropout_rate < 0.5 or not 0.0 <= self.corruption_rate < 0.5:
            raise ConfigError("secagg dropout and corruption rates must be in [0, 0.5)")
        if self.neighbors < 0:
            raise ConfigError("secagg neighbors must be >= 0")
        if self.stage_timeout_s <= 0:
            raise ConfigError("stage_timeout_s must be > 0")


def round_parameters(n: int, settings: SecureSettings) -> SecAggParams:
    """The rule of `choose_parameters`, relaxed to no dropout tolerance for tiny federations.

    With 3 clients the complete graph cannot both keep an honest majority threshold and
    survive a dropout; we still run the round (any dropout then aborts it cleanly). An
    operator's neighbour count replaces the chosen one, with the threshold recomputed for it.
    """
    c, active = settings.corruption_rate, settings.active
    try:
        params = choose_parameters(n, settings.dropout_rate, c, active)
    except ConfigError:
        params = choose_parameters(n, 0.0, c, active)
    if settings.neighbors and settings.neighbors != params.neighbors:
        k = min(settings.neighbors, n - 1)
        if k < n - 1 and k % 2:
            k += 1  # a sparse (Harary) neighbour graph needs an even degree
        if k == n - 1:
            t = complete_threshold(n, c, active)
        else:
            # No safe threshold for this few neighbours: all k shares are needed.
            t = sparse_threshold(n, k, c, active) or k
        params = SecAggParams(n, k, min(t, k), params.bits)
    return params


class SecureRound:
    def __init__(
        self,
        *,
        selected: tuple[str, ...],
        vector_len: int,
        weights: dict[str, int],
        node_keys: dict[str, bytes],
        settings: SecureSettings,
        context: bytes,
        now_ms: int,
        first_deadline_ms: int,
    ) -> None:
        self.settings = settings
        self.index_of = assign_indices(selected)
        self.node_of = {i: node for node, i in self.index_of.items()}
        params = round_parameters(len(selected), settings)
        self.config = SecAggConfig(params, vector_len, settings.active, context)
        # Inputs are weight * delta / weight_scale, so each stays within the clip range.
        self.weights = {n: max(0, int(weights.get(n, 1))) for n in selected}
        self.weight_scale = float(max(1, sum(self.weights.values())))
        keys: tuple[bytes, ...] = ()
        if settings.active:
            # Active mode signs with the nodes' long-term Ed25519 identity keys from Join.
            keys = tuple(node_keys[self.node_of[i]] for i in range(1, len(selected) + 1))
        verifying = {i: keys[i - 1] for i in range(1, len(keys) + 1)} if keys else None
        self.state: ServerState = start_server(self.config, verifying)
        self.outbox: dict[str, ServerMessage | SetupInfo] = {
            node: SetupInfo(
                i, self.config, settings.clip, self.weight_scale, keys, self.weights[node]
            )
            for node, i in self.index_of.items()
        }
        self.stage_deadline_ms = first_deadline_ms
        self._answered: dict[tuple[str, Stage], str] = {}  # (node, stage) -> request id
        self._request_ids: set[tuple[str, str]] = set()  # (node, request id) of every answer
        self._slots: dict[str, int] = {}  # node -> the weight its masked input carries
        self.faulted: set[str] = set()  # nodes caught sending what no honest node sends
        self.missing: frozenset[str] = frozenset()  # nodes that left a stage unanswered
        self.culprits: frozenset[str] = frozenset()  # whom an abort's evidence names
        self.suspects: frozenset[str] = frozenset()  # who an abort cannot clear
        self.started_ms = now_ms

    @property
    def stage(self) -> Stage:
        return self.state.stage

    def message_for(self, node: str) -> ServerMessage | SetupInfo | None:
        """The stage message a node still has to answer, if any."""
        index = self.index_of.get(node)
        if index is None or index not in getattr(self.state, "pending", frozenset()):
            return None
        return self.outbox.get(node)

    def receive(self, node: str, request_id: str, message: ClientStageMessage) -> bool:
        """Feed one node's message to the current stage; True if it was a retried duplicate."""
        index = self.index_of.get(node)
        if index is None:
            raise PermissionDenied(f"node {node} is not part of this secure round")
        if (node, request_id) in self._request_ids:
            return True  # a retry, possibly of an answer to a stage that has closed since
        key = (node, self.stage)
        if key in self._answered:
            raise DuplicateRequest(f"node {node} already answered stage {self.stage}")
        if self.stage in (Stage.ABORTED, Stage.FINISHED):
            raise WrongStage(f"secure round is {self.stage}")
        slot = None
        if isinstance(message, MaskedInput) and self.stage is Stage.MASKED_INPUT:
            slot = self._check_count_slot(node, message)
        try:
            self.state = self.state.receive(index, message)  # raises with the state unchanged
        except ShareFault as fault:
            self.faulted.add(node)
            raise MemberFault(node, str(fault).replace(f"client {index}", f"node {node}")) from None
        if slot is not None:
            self._slots[node] = slot
        self._answered[key] = request_id
        self._request_ids.add((node, request_id))
        return False

    def _check_count_slot(self, node: str, message: MaskedInput) -> int | None:
        """The input's weight: the one announced for the node, or 0 (it abstains)."""
        vector = message.vector
        if not isinstance(vector, np.ndarray) or vector.shape != (self.config.vector_len,):
            return None  # the protocol state refuses the shape with its own message
        claimed, weight = int(vector[-1]), self.weights[node]
        if claimed not in (weight, 0):
            self.faulted.add(node)
            raise MemberFault(
                node,
                f"node {node}'s masked input carries sample count {claimed}, not the weight "
                f"{weight} announced for it (or 0); the input is refused",
            )
        return claimed

    def answered(self) -> frozenset[tuple[str, str]]:
        """(node, request id) of every message this round accepted."""
        return frozenset(self._request_ids)

    def due(self, now_ms: int) -> bool:
        """The stage may close: everyone answered but nodes caught faulting (whose answers
        will never be accepted), or the deadline passed."""
        waiting = self._pending() - self.faulted
        return not waiting or now_ms >= self.stage_deadline_ms

    def _pending(self) -> frozenset[str]:
        return frozenset(self.node_of[i] for i in getattr(self.state, "pending", frozenset()))

    def close_stage(self, now_ms: int) -> None:
        """Close the current stage and queue the next stage's messages."""
        before = self.stage
        self.missing |= self._pending()
        self.state, outbound = self.state.close()
        if isinstance(self.state, ServerAborted):
            self.culprits = frozenset(self.node_of[i] for i in self.state.culprits)
            self.suspects = frozenset(self.node_of[i] for i in self.state.suspects)
        self.outbox = {self.node_of[i]: msg for i, msg in outbound.items()}
        self.stage_deadline_ms = now_ms + int(self.settings.stage_timeout_s * 1000)
        log.info(
            "secure stage %s closed -> %s (%d messages out)", before, self.stage, len(outbound)
        )

    @property
    def abort_reason(self) -> str | None:
        """The abort's reason, with protocol indices replaced by node ids."""
        if not isinstance(self.state, ServerAborted):
            return None
        reason = self.state.reason
        for i, node in sorted(self.node_of.items(), reverse=True):  # "client 12" before "1"
            reason = reason.replace(f"client {i}", f"node {node}")
        return reason

    def result(self) -> SecureResult:
        """The weighted-average delta of the survivors, once the round has finished."""
        assert isinstance(self.state, ServerFinished)
        res = self.state.result
        bits, n = self.config.params.bits, len(res.survivors)
        summed, slot_total = dequantize_sum(res.vector, n, self.settings.clip, bits)
        survivors = tuple(sorted(self.node_of[i] for i in res.survivors))
        total = sum(self._slots[s] for s in survivors)
        if slot_total != total:  # every slot was checked on arrival; this is a last guard
            raise ValueError(f"count slots sum to {slot_total}, the checked slots to {total}")
        if total < 1:
            raise ValueError("the survivors have no samples")
        factor = self.weight_scale / total
        delta = (summed * factor).astype(np.float32)
        # Stochastic rounding moves each entry of each input by less than one grid step.
        step = 2.0 * self.settings.clip / ((1 << bits) - 1)
        slack = float(np.sqrt(summed.size)) * n * step * factor
        return SecureResult(delta, total, survivors, slack)
