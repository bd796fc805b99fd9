"""The client's side of a secure round: update -> weight and quantize -> mask -> upload.

Each stage message from the server goes to the pure client state of `forsaken.common.secagg`;
this class only keeps that state per task, supplies fresh secrets, and sends what it returns.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from forsaken.common import errors, failpoints
from forsaken.common.round_tasks import SecAggTask
from forsaken.common.secagg.client_states import ClientIdentity, ClientState, start_client
from forsaken.common.secagg.messages import MaskedInput
from forsaken.common.secagg.quantize import quantize
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.tensors import TensorSpec, to_bytes
from forsaken.common.wire_secagg import ClientStage

log = logging.getLogger(__name__)


class SecAggSender(Protocol):
    """What a secure session needs of its connection: FleetConnection, or the load bench's
    outbox, which sends the same messages over asyncio."""

    def send_secagg(self, message: ClientStage, *, request_id: str, task: SecAggTask) -> object: ...

    def push(
        self,
        *,
        request_id: str,
        task: SecAggTask,
        num_samples: int,
        metrics: dict[str, float],
        tensors: tuple[TensorSpec, ...],
        payload: bytes,
    ) -> object: ...


@dataclass
class _Session:
    task_id: str
    state: ClientState  # each has handle(msg) -> (state, outbound)


def weighted_input(update: np.ndarray, weight: int, setup: SetupInfo) -> np.ndarray:
    """weight * update / weight_scale: after the secure sum and a division by the survivors'
    weights, the server gets FedAvg's weighted mean without seeing any single input."""
    return update.astype(np.float64) * (weight / setup.weight_scale)


def input_weight(num_samples: int, setup: SetupInfo) -> int:
    """The weight announced for this node, or 0 when it has nothing to contribute: the only
    two values the server accepts in the clear count slot."""
    return setup.weight if num_samples > 0 else 0


class SecureSessions:
    """At most one live secure round per node; a new round replaces an old one."""

    def __init__(self, conn: SecAggSender, signing_key: bytes) -> None:
        self.conn = conn
        self.signing_key = signing_key
        self._session: _Session | None = None

    def start(
        self, task: SecAggTask, update: np.ndarray, num_samples: int, rounding_seed: bytes
    ) -> None:
        """Round 0: quantize the trained update and advertise fresh keys.

        The stochastic-rounding seed is derived from the node's training seed so that the same
        seeds give the same model; it needs no secrecy, since the server never sees a single
        quantized input, only the masked ones. Key material stays fresh per round.
        """
        setup = task.message
        assert isinstance(setup, SetupInfo)
        n = setup.config.params.num_clients
        if update.size + 1 != setup.config.vector_len:
            raise errors.InvalidPayload("secure setup does not match this node's model size")
        # The weight and the clear count slot are the ones announced (or 0): the server refuses
        # an input whose slot differs, and divides by the survivors' slots.
        weight = input_weight(num_samples, setup)
        quantized = quantize(
            weighted_input(update, weight, setup),
            weight,
            setup.clip,
            setup.config.params.bits,
            rounding_seed,
            n,
        )
        keys = setup.verifying_keys
        identity = ClientIdentity(
            config=setup.config,
            index=setup.index,
            seed=secrets.token_bytes(32),
            signing_key=self.signing_key if setup.config.active else None,
            verifying_keys={i + 1: k for i, k in enumerate(keys)} if setup.config.active else None,
        )
        state, advert = start_client(identity, quantized)
        self._session = _Session(task.task_id, state)
        self._send(task, advert)

    def handle(self, task: SecAggTask) -> None:
        """Rounds 1-4: feed the server's message to the state and send what comes out."""
        session = self._session
        if session is None or session.task_id != task.task_id:
            # We lost this round's secrets (a restart): we are a dropout for this round.
            raise errors.StaleRequest(f"no secure session for task {task.task_id}")
        state, outbound = session.state.handle(task.message)
        session.state = state
        reason = getattr(state, "reason", None)
        if reason:
            self._session = None
            raise errors.ProtocolAborted(f"secure round refused: {reason}")
        if outbound is None:
            return
        if isinstance(outbound, MaskedInput):
            self._push_masked(task, outbound.vector)
        else:
            self._send(task, outbound)

    def current_state(self) -> object:
        return None if self._session is None else self._session.state

    def _send(self, task: SecAggTask, message: ClientStage) -> None:
        self.conn.send_secagg(message, request_id=uuid.uuid4().hex, task=task)
        failpoints.hit(f"secagg-after-{type(message).__name__}")

    def _push_masked(self, task: SecAggTask, vector: np.ndarray) -> None:
        spec = (TensorSpec("masked_input", (int(vector.size),), "uint32"),)
        self.conn.push(
            request_id=uuid.uuid4().hex,
            task=task,
            num_samples=0,
            metrics={},
            tensors=spec,
            payload=to_bytes(vector),
        )
        failpoints.hit("secagg-after-MaskedInput")
