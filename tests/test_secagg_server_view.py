"""What the server actually holds in a secure round.

A real `ServerDaemon` runs in this process (gRPC on loopback) with four client processes; the
coordinator's entry points are wrapped before start, so the test records every upload and every
stage message exactly as the server received them, plus the SetupInfo it handed out. Replaying
each client's training shows that no recorded upload is, or decodes to anything near, an
individual update; that each masked vector looks uniform (and a plain quantized input does not);
and that the recorded masked vectors, with the recorded unmask shares, yield exactly the sum of
the quantized inputs, which is the model the server committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from forsaken.common.datasets import load_dataset
from forsaken.common.identity import NodeIdentity
from forsaken.common.round_tasks import AnyTask, SecAggTask
from forsaken.common.secagg.graph import build_graph
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    MaskedInput,
    ShareKeys,
    ShareKind,
    UnmaskResponse,
)
from forsaken.common.secagg.quantize import dequantize_sum
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.secagg.transcript import session_id
from forsaken.common.secagg.unmask import (
    UnmaskFailure,
    collect_unmask_shares,
    commitments_of,
    unmask_sum,
)
from forsaken.common.tensors import from_bytes
from forsaken.server.app import ServerConfig, ServerDaemon
from forsaken.server.checkpoints import FileCheckpointStore
from forsaken.server.coordinator import Coordinator
from forsaken.server.rounds import Submission, SubmitOutcome, masked_input_spec
from tests.cluster import Cluster
from tests.test_secagg_processes import (
    aggregate_model,
    initial_model,
    quantized_input,
    replay_client,
    sha256_of,
    uint32_sum,
)

pytestmark = pytest.mark.slow

SEED = 31
N = 4
SEALED_SHARE_BYTES = 156  # 4 + 4 bytes of indices, two 66-byte field elements, a 16-byte tag
CHI2_ALPHA = 1e-6  # a uniform vector fails one test with this probability


@dataclass
class Transcript:
    """Everything the coordinator was handed by the RPC layer, and the setups it sent."""

    uploads: list[tuple[str, Submission]] = field(default_factory=list)
    messages: list[tuple[str, object]] = field(default_factory=list)
    setups: dict[str, SetupInfo] = field(default_factory=dict)


def record(coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> Transcript:
    seen = Transcript()
    submit, secagg_message, poll = (
        coordinator.submit,
        coordinator.secagg_message,
        coordinator.poll,
    )

    def on_submit(node_id: str, sub: Submission, now_ms: int) -> SubmitOutcome:
        seen.uploads.append((node_id, sub))
        return submit(node_id, sub, now_ms)

    def on_message(
        node_id: str, round_: int, task_id: str, request_id: str, message: object, now_ms: int
    ) -> SubmitOutcome:
        seen.messages.append((node_id, message))
        return secagg_message(node_id, round_, task_id, request_id, message, now_ms)

    def on_poll(node_id: str, num_samples: int, now_ms: int) -> AnyTask | None:
        task = poll(node_id, num_samples, now_ms)
        if isinstance(task, SecAggTask) and isinstance(task.message, SetupInfo):
            seen.setups[node_id] = task.message
        return task

    monkeypatch.setattr(coordinator, "submit", on_submit)
    monkeypatch.setattr(coordinator, "secagg_message", on_message)
    monkeypatch.setattr(coordinator, "poll", on_poll)
    return seen


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    """The in-process server pins torch to one thread (as the replay needs); undo it after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def byte_uniformity(values: np.ndarray) -> tuple[float, float]:
    """Chi-square p-values that (all bytes, the most significant byte of each word) are
    uniform over 0..255."""
    words = np.ascontiguousarray(values, dtype="<u4")
    every = np.bincount(words.view(np.uint8), minlength=256)
    top = np.bincount((words >> 24).astype(np.uint8), minlength=256)
    return float(stats.chisquare(every).pvalue), float(stats.chisquare(top).pvalue)


def test_server_holds_only_masked_vectors_that_sum_to_the_aggregate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_torch_threads: None
) -> None:
    cluster = Cluster(tmp_path / "view")  # spawns the clients; the server runs here
    config = ServerConfig(
        listen=cluster.address,
        state_dir=tmp_path / "view" / "server",
        dataset="digits",
        rounds=1,
        min_clients=N,
        min_completed=N,
        seed=SEED,
        poll_timeout_s=2.0,
        liveness_s=30.0,
        round_timeout_s=120.0,
    )
    config.validate()
    daemon = ServerDaemon(config)
    seen = record(daemon.coordinator, monkeypatch)
    daemon.start()
    try:
        partition = {
            NodeIdentity.load_or_create(cluster.root / f"client-{i}").node_id: i for i in range(N)
        }
        for i in range(N):
            cluster.start_client(i, N, seed=SEED)
        status = cluster.wait_for(lambda s: s["phase"] == "finished", 120, "the secure round")
    finally:
        cluster.stop()
        daemon.stop()
    (done,) = cluster.completed(status)
    assert sorted(done["participants"]) == sorted(partition)
    assert sorted(seen.setups) == sorted(partition)

    # Replay every client; the server's own SetupInfo says how each encoded its update.
    data = load_dataset("digits")
    start = initial_model(data, SEED)
    work = {node: replay_client(data, start, i, N, SEED, 1) for node, i in partition.items()}
    setup = seen.setups[next(iter(partition))]
    assert all(
        s.config == setup.config and s.weight_scale == setup.weight_scale
        for s in seen.setups.values()
    )
    assert setup.weight_scale == sum(w.num_samples for w in work.values())
    plain = {node: quantized_input(work[node], seen.setups[node]) for node in partition}
    bits, d = setup.config.params.bits, start.size

    # Uploads: one per node, each a single uint32 vector; no plaintext count or metrics ride
    # along in the header.
    assert sorted(node for node, _ in seen.uploads) == sorted(partition)
    masked: dict[str, np.ndarray] = {}
    for node, sub in seen.uploads:
        assert sub.tensors == (masked_input_spec(daemon.coordinator.tensors),)
        assert sub.num_samples == 0 and dict(sub.metrics) == {}
        masked[node] = from_bytes(sub.payload, sub.tensors)
        assert masked[node].dtype == np.uint32 and masked[node].shape == (d + 1,)

    for node, y in masked.items():
        # Looks uniform, byte by byte and in the top byte that carries a value's magnitude.
        assert min(byte_uniformity(y)) > CHI2_ALPHA, node
        # Decoded as if it were one client's input, it is nowhere near any client's weighted
        # update (a plain input decodes to within one quantization step of it).
        alone, _ = dequantize_sum(y, 1, setup.clip, bits)
        for other, w in work.items():
            weighted = w.update.astype(np.float64) * (w.num_samples / setup.weight_scale)
            assert np.mean(y == plain[other]) < 1e-3
            assert np.mean(y[:d] == w.update.view(np.uint32)) < 1e-3
            assert np.mean(np.abs(alone - weighted) < 1e-3) < 1e-3, (node, other)
    # The tests can fail: a plain quantized input is far from uniform and decodes to its update.
    for node, q in plain.items():
        assert max(byte_uniformity(q)) < 1e-12
        w = work[node]
        weighted = w.update.astype(np.float64) * (w.num_samples / setup.weight_scale)
        alone, count = dequantize_sum(q, 1, setup.clip, bits)
        assert np.max(np.abs(alone - weighted)) <= 2 * setup.clip / ((1 << bits) - 1)
        assert count == w.num_samples

    # The masks do not cancel in the plain sum of what was uploaded (self masks remain)...
    uploaded_sum = uint32_sum(masked.values())
    plain_sum = uint32_sum(plain.values())
    assert np.mean(uploaded_sum == plain_sum) < 1e-3
    # ...but the uploaded vectors plus the recorded unmask shares give exactly the plain sum.
    index = {node: s.index for node, s in seen.setups.items()}
    adverts = {index[n]: m for n, m in seen.messages if isinstance(m, AdvertiseKeys)}
    shares = {index[n]: m for n, m in seen.messages if isinstance(m, ShareKeys)}
    unmasks = {index[n]: m for n, m in seen.messages if isinstance(m, UnmaskResponse)}
    assert len(seen.messages) == 3 * N  # no other stage in passive mode
    assert len(adverts) == len(shares) == len(unmasks) == N
    assert not any(isinstance(m, MaskedInput) for _, m in seen.messages)
    everyone = tuple(sorted(adverts))
    session = session_id(setup.config, tuple(adverts[i] for i in everyone))
    graph = build_graph(everyone, setup.config.params.neighbors, session)
    commitments = commitments_of(shares)
    revealed = {
        i: collect_unmask_shares(
            m, i, graph[i], frozenset(everyone), frozenset(everyone), commitments, session
        )
        for i, m in unmasks.items()
    }
    result = unmask_sum(
        total=uploaded_sum,
        session=session,
        keys=adverts,
        graph=graph,
        survivors=everyone,
        dropped=(),
        revealed=revealed,
        threshold=setup.config.params.threshold,
        commitments=commitments,
    )
    assert not isinstance(result, UnmaskFailure), result
    assert np.array_equal(result.vector, plain_sum)
    expected = aggregate_model(start, plain_sum, N, setup)
    assert done["model_sha256"] == sha256_of(expected)

    # Shares crossed the server sealed: fixed-size ciphertexts that contain none of the share
    # bytes revealed later, and only self-mask-seed shares were revealed (nobody dropped), so
    # the server never held both secrets of any client.
    sealed = [s for m in shares.values() for s in m.shares]
    assert len(sealed) == N * setup.config.params.neighbors
    assert all(len(s.ciphertext) == SEALED_SHARE_BYTES for s in sealed)
    opened = [r for m in unmasks.values() for r in m.shares]
    assert opened and all(r.kind is ShareKind.SELF_MASK_SEED for r in opened)
    assert not any(r.share in s.ciphertext for r in opened for s in sealed)

    # Nothing per client was persisted: the checkpoint store holds the two global models.
    store = FileCheckpointStore(config.state_dir / "checkpoints")
    (initial,) = [r for r in status["rounds"] if r["round"] == 0]
    assert store.addresses() == {initial["model_sha256"], done["model_sha256"]}
