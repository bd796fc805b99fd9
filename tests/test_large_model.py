"""A model far above gRPC's 4 MiB message limit travels in chunks, both ways."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from forsaken.client.transport import FleetConnection
from forsaken.common.identity import NodeIdentity
from forsaken.common.round_tasks import TrainTask
from forsaken.common.tensors import from_bytes, to_bytes
from forsaken.launch import free_port
from forsaken.server.app import ServerConfig, ServerDaemon
from forsaken.server.evaluation import SyntheticModel

pytestmark = pytest.mark.slow
PARAMS = 10_000_000  # 40 MB of float32


def test_ten_million_parameter_round_trip(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = ServerConfig(
        aggregation="plaintext",
        listen=address,
        state_dir=tmp_path,
        rounds=1,
        min_clients=1,
        min_completed=1,
        evaluate=False,
        poll_timeout_s=2,
        max_payload_mb=64,
    )
    daemon = ServerDaemon(config, model=SyntheticModel(PARAMS))
    daemon.start()
    try:
        conn = FleetConnection(address, NodeIdentity.generate())
        conn.join(10, "synthetic", (PARAMS,), 1)
        task = conn.pull(10)
        while not isinstance(task, TrainTask):
            task = conn.pull(10)
        specs, payload = conn.fetch_model(task.model_sha256, 64 << 20)
        assert len(payload) == 4 * PARAMS
        delta = np.random.default_rng(0).standard_normal(PARAMS).astype(np.float32) * 1e-3
        reply = conn.push(
            request_id=uuid.uuid4().hex,
            task=task,
            num_samples=10,
            metrics={},
            tensors=specs,
            payload=to_bytes(delta),
        )
        assert reply.accepted
        deadline = time.monotonic() + 30
        while daemon.coordinator.completed_rounds < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        expected = from_bytes(payload, specs) + delta
        assert daemon.coordinator.model.sha256 == hashlib.sha256(to_bytes(expected)).hexdigest()
        conn.close()
    finally:
        daemon.stop(grace_s=1)
