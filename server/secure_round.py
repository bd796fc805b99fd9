"""One secure-aggregation round as the coordinator sees it: node ids, stages and deadlines.

The protocol itself lives in `forsaken.common.secagg` as pure states; this class only maps
string node ids to protocol indices, keeps what each node should be told next, closes a stage
when everyone answered or its deadline passed, and decodes the final sum into a FedAvg delta.
The server never holds an unmasked individual update: masked inputs are summed on arrival.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from forsaken.common.errors import ConfigError, DuplicateRequest, PermissionDenied, WrongStage
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

log = logging.getLogger(__name__)

ClientStageMessage = AdvertiseKeys | ShareKeys | ConsistencySignature | UnmaskResponse | MaskedInput


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
        declared_samples: dict[str, int],
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
        # Inputs are num_samples * delta / weight_scale, so each stays within the clip range.
        self.weight_scale = float(max(1, sum(declared_samples.get(n, 1) for n in selected)))
        keys: tuple[bytes, ...] = ()
        if settings.active:
            # Active mode signs with the nodes' long-term Ed25519 identity keys from Join.
            keys = tuple(node_keys[self.node_of[i]] for i in range(1, len(selected) + 1))
        verifying = {i: keys[i - 1] for i in range(1, len(keys) + 1)} if keys else None
        self.state: ServerState = start_server(self.config, verifying)
        self.outbox: dict[str, ServerMessage | SetupInfo] = {
            node: SetupInfo(i, self.config, settings.clip, self.weight_scale, keys)
            for node, i in self.index_of.items()
        }
        self.stage_deadline_ms = first_deadline_ms
        self._answered: dict[tuple[str, Stage], str] = {}  # (node, stage) -> request id
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
        key = (node, self.stage)
        seen = self._answered.get(key)
        if seen is not None:
            if seen == request_id:
                return True
            raise DuplicateRequest(f"node {node} already answered stage {self.stage}")
        if self.stage in (Stage.ABORTED, Stage.FINISHED):
            raise WrongStage(f"secure round is {self.stage}")
        self.state = self.state.receive(index, message)  # raises with the state unchanged
        self._answered[key] = request_id
        return False

    def due(self, now_ms: int) -> bool:
        pending = getattr(self.state, "pending", frozenset())
        return not pending or now_ms >= self.stage_deadline_ms

    def close_stage(self, now_ms: int) -> None:
        """Close the current stage and queue the next stage's messages."""
        before = self.stage
        self.state, outbound = self.state.close()
        self.outbox = {self.node_of[i]: msg for i, msg in outbound.items()}
        self.stage_deadline_ms = now_ms + int(self.settings.stage_timeout_s * 1000)
        log.info(
            "secure stage %s closed -> %s (%d messages out)", before, self.stage, len(outbound)
        )

    @property
    def abort_reason(self) -> str | None:
        return self.state.reason if isinstance(self.state, ServerAborted) else None

    def result(self) -> tuple[np.ndarray, int, tuple[str, ...]]:
        """(weighted-average delta, total samples, survivors) once the round has finished."""
        assert isinstance(self.state, ServerFinished)
        res = self.state.result
        summed, total_samples = dequantize_sum(
            res.vector, len(res.survivors), self.settings.clip, self.config.params.bits
        )
        if total_samples < 1:
            raise ValueError("secure sum reports no samples")
        delta = (summed * (self.weight_scale / total_samples)).astype(np.float32)
        return delta, total_samples, tuple(sorted(self.node_of[i] for i in res.survivors))
