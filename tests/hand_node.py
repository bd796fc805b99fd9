"""A node whose SecAgg+ messages a test writes itself, from the protos and the pure states.

Honest unless the test tells it otherwise: hostile tests use it to send, at each stage, what a
malicious member would.
"""

from __future__ import annotations

import secrets
import time
import uuid

import numpy as np

from forsaken.client.transport import SESSION_KEY, FleetConnection
from forsaken.common import wire, wire_secagg
from forsaken.common.chunking import header_for
from forsaken.common.identity import NodeIdentity
from forsaken.common.round_tasks import SecAggTask, WaitTask
from forsaken.common.secagg.client_states import (
    ClientDone,
    ClientIdentity,
    ClientState,
    start_client,
)
from forsaken.common.secagg.messages import AdvertiseKeys, MaskedInput
from forsaken.common.secagg.quantize import quantize
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.tensors import TensorSpec, to_bytes
from forsaken.v1 import fleet_pb2, fleet_pb2_grpc, secagg_pb2

SAMPLES = 100
DIGITS = ("digits", (1, 8, 8), 10)


class HandNode:
    """A node whose SecAgg+ messages the test writes itself (honest unless told otherwise)."""

    def __init__(self, address: str) -> None:
        self.conn = FleetConnection(address, NodeIdentity.generate())
        self.node_id = self.conn.join(SAMPLES, *DIGITS)
        self.stub = fleet_pb2_grpc.FleetStub(self.conn.channel)
        self.state: ClientState | None = None
        self.setup: SetupInfo | None = None
        self.quantized = np.zeros(0, np.uint32)

    @property
    def md(self) -> tuple[tuple[str, bytes], ...]:
        assert self.conn.token is not None
        return ((SESSION_KEY, self.conn.token),)

    def next_task(self, round_: int, timeout_s: float = 60) -> SecAggTask:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            task = self.conn.pull(SAMPLES)
            if isinstance(task, SecAggTask) and task.round == round_:
                return task
            assert isinstance(task, WaitTask), task
        raise AssertionError(f"no round-{round_} task for {self.node_id} in {timeout_s}s")

    def send(
        self,
        message: object,
        task: SecAggTask,
        *,
        request_id: str | None = None,
        task_id: str | None = None,
        round_: int | None = None,
    ) -> secagg_pb2.SecAggAck:
        request = wire_secagg.client_message_to_proto(
            message,
            request_id=uuid.uuid4().hex if request_id is None else request_id,
            task_id=task.task_id if task_id is None else task_id,
            round_=task.round if round_ is None else round_,
        )
        return self.send_raw(request)

    def send_raw(self, request: secagg_pb2.SecAggClientMessage) -> secagg_pb2.SecAggAck:
        return self.stub.SendSecAgg(request, metadata=self.md, timeout=10)

    def push(
        self, vector: np.ndarray, task: SecAggTask, *, request_id: str | None = None
    ) -> fleet_pb2.PushReply:
        data = to_bytes(vector)
        header = fleet_pb2.UploadHeader(
            request_id=request_id or uuid.uuid4().hex,
            task_id=task.task_id,
            round=task.round,
            base_model_sha256=bytes.fromhex(task.model_sha256),
            num_samples=0,
            payload=wire.payload_header_to_proto(
                header_for((TensorSpec("masked_input", (vector.size,), "uint32"),), data)
            ),
        )
        return self.stub.PushUpdate(wire.upload_chunks(header, data), metadata=self.md, timeout=30)

    def begin(self, task: SecAggTask, count_slot: int | None = None) -> AdvertiseKeys:
        """Round 0 with a zero update: quantize, make keys, return the advertisement.

        `count_slot` forges the sample count the masked input will carry (a hostile node).
        """
        setup = task.message
        assert isinstance(setup, SetupInfo)
        self.setup = setup
        params = setup.config.params
        zeros = np.zeros(setup.config.vector_len - 1)
        vector = quantize(
            zeros, SAMPLES, setup.clip, params.bits, secrets.token_bytes(32), params.num_clients
        )
        if count_slot is not None:
            vector[-1] = np.uint32(count_slot % (1 << 32))
        identity = ClientIdentity(setup.config, setup.index, secrets.token_bytes(32))
        self.quantized = vector
        self.state, advert = start_client(identity, vector)
        return advert

    def step(self, task: SecAggTask) -> object:
        """Feed a stage message to the client state; return what it answers."""
        assert self.state is not None
        self.state, out = self.state.handle(task.message)
        assert out is not None, self.state
        return out

    def answer(self, task: SecAggTask, message: object) -> None:
        if isinstance(message, MaskedInput):
            assert self.push(message.vector, task).accepted
        else:
            assert not self.send(message, task).duplicate

    def play(self, round_: int) -> None:
        """An honest node for a whole round."""
        task = self.next_task(round_)
        self.answer(task, self.begin(task))
        while not isinstance(self.state, ClientDone):
            task = self.next_task(round_)
            self.answer(task, self.step(task))
