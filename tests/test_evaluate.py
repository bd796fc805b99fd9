"""`forsaken evaluate` and the claim it rests on: the daemons compute what the in-process runner
computes for the same seed (bit for bit in plaintext, within quantization under secure
aggregation), so U from real processes can be compared with in-process references."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from forsaken.common.backdoor import dataset_trigger, poison_client
from forsaken.common.datasets import load_dataset
from forsaken.common.fedavg import apply_update, weighted_average
from forsaken.common.models import build_model, default_architecture
from forsaken.common.partition import client_split
from forsaken.common.simulation import client_round_seed, run_fedavg
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, load_vector, train_local
from forsaken.lab.evaluate import DETAIL_FILE
from forsaken.lab.evaluation_report import COST_KEYS, MODEL_KEYS
from forsaken.lab.evaluation_run import ForgetRun, hold_grpc_core
from forsaken.lab.evaluation_scoring import METRICS, unlearning_cost
from forsaken.launch import forsaken_command
from forsaken.server.checkpoints import FileCheckpointStore
from forsaken.server.secure_round import SecureSettings, round_parameters
from tests.cluster import Cluster

SEED = 11
CLIENTS = 3
ROUNDS = 3
EPOCHS = 2


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Client daemons train with one thread; the in-process side must too, for identical bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def checkpoints(state_dir: Path, rounds: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    store = FileCheckpointStore(state_dir / "checkpoints")
    return {
        int(r["round"]): np.frombuffer(store.get(r["model_sha256"]), dtype="<f4")
        for r in rounds
        if r.get("status", "completed") == "completed"
    }


@pytest.mark.slow
def test_plaintext_daemons_match_run_fedavg_bit_for_bit(tmp_path: Path, one_thread: None) -> None:
    hold_grpc_core()  # spawning right after a health check can otherwise hang in fork
    c = Cluster(
        tmp_path,
        "digits",
        aggregation="plaintext",
        rounds=ROUNDS,
        seed=SEED,
        **{"local-epochs": EPOCHS, "min-clients": CLIENTS, "min-completed": CLIENTS},
    )
    try:
        c.start_server()
        for i in range(CLIENTS):
            c.start_client(i, CLIENTS, seed=SEED)
        status = c.wait_for(lambda s: s["phase"] == "finished", 120, f"{ROUNDS} rounds")
    finally:
        c.stop()
    done = [r for r in status["rounds"] if r["status"] == "completed"]
    assert all(len(r["participants"]) == CLIENTS for r in done if r["round"] > 0)
    daemons = checkpoints(tmp_path / "server", done)
    assert sorted(daemons) == list(range(ROUNDS + 1))

    ds = load_dataset("digits")
    cfg = TrainConfig(local_epochs=EPOCHS)
    for k in range(1, ROUNDS + 1):
        sim = run_fedavg(ds, CLIENTS, k, seed=SEED, train_cfg=cfg)
        if k == 1:
            assert np.array_equal(daemons[0], sim.initial_vector)
        assert np.array_equal(daemons[k], sim.final_vector), f"round {k} differs"


def original_in_process(dataset: str, clients: int, rounds: int, seed: int) -> list[np.ndarray]:
    """O after every round, re-derived from the building blocks the daemons use (an oracle
    independent of reference.py): client 0 poisoned, everyone training every round."""
    ds = load_dataset(dataset)
    local = [client_split(ds, i, clients, seed=seed) for i in range(clients)]
    local[0] = poison_client(local[0], seed=seed, trigger=dataset_trigger(ds)).data
    model = build_model(default_architecture(ds.name), ds.input_shape, ds.num_classes, seed)
    cfg = TrainConfig(local_epochs=EPOCHS)
    vec = flatten(model.state_dict())
    out = [vec]
    for r in range(1, rounds + 1):
        updates = []
        for i, data in enumerate(local):
            load_vector(model, vec)
            res = train_local(model, data.x_train, data.y_train, cfg, client_round_seed(seed, i, r))
            updates.append((res.delta, res.num_samples))
        vec = apply_update(vec, weighted_average(updates))
        out.append(vec)
    return out


@pytest.mark.slow
def test_evaluate_end_to_end_with_secure_daemons(tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--dataset", "digits", "--clients", str(CLIENTS), "--rounds", str(ROUNDS)]
    args += ["--local-epochs", str(EPOCHS), "--seeds", "1", "--out", str(out)]
    args += ["--scenario", "backdoor", "--shadows", "4"]
    done = subprocess.run(forsaken_command(*args), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    report = json.loads((out / "evaluation.json").read_text())
    assert set(report) == {
        "dataset",
        "scenario",
        "architecture",
        "method",
        "clients",
        "rounds",
        "seeds",
        "shadow_models",
        "secure_aggregation",
        "models",
        "cost",
        "bars",
    }
    assert (report["dataset"], report["clients"], report["rounds"]) == ("digits", CLIENTS, ROUNDS)
    assert report["seeds"] == [0] and report["secure_aggregation"] is True
    assert (report["scenario"], report["shadow_models"]) == ("backdoor", 4)
    assert set(report["models"]) == set(MODEL_KEYS)
    lira = ("lira_auc", "lira_tpr_at_1pct_fpr", "lira_tpr_at_0.1pct_fpr")
    for row in report["models"].values():
        assert set(row) == set(METRICS) | {f"{f}_std" for f in METRICS}
        # A backdoor bed has a trigger (ASR) but no flipped labels.
        assert row["flip_rate"] is None
        measured = {k: v for k, v in row.items() if not k.startswith("flip_rate")}
        assert all(isinstance(v, float) and np.isfinite(v) for v in measured.values())
        assert all(0.0 <= row[k] <= 1.0 for k in lira)
    assert report["models"]["retrained"]["kl_forget"] == 0.0  # KL(R ‖ R)
    assert set(report["cost"]) == set(COST_KEYS)
    for row in report["cost"].values():
        assert set(row) == {"client_grad_evals", "wall_s", "bytes_up"}
        assert all(v >= 0 for v in row.values())
    for name, bar in report["bars"].items():
        assert isinstance(bar["pass"], bool), name
    assert {
        "asr_U",
        "asr_U+10",
        "acc_U",
        "kl_U",
        "mia_U",
        "conf_U",
        "cost_U",
        "lira_auc_U",
        "lira_tpr_U",
    } <= set(report["bars"])
    png = (out / "evaluation.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    # The distributed run did what the protocol says: ForgetMe right after round T, U named by
    # the receipt, U+10 ten rounds later, every client's engine step recorded.
    (seed,) = json.loads((out / DETAIL_FILE).read_text())["per_seed"]
    rounds = seed["rounds"]
    assert rounds["forget_started_after"] == ROUNDS
    assert rounds["after"] == rounds["unlearned"] + 10
    receipt = seed["receipt"]
    assert receipt["model_sha256_before"] == seed["ledger"][ROUNDS]["model_sha256"]
    steps = seed["forget_steps"]
    assert [s["round"] for s in steps] == list(range(ROUNDS + 1, ROUNDS + 1 + len(steps)))
    assert len(steps) == receipt["unlearning_rounds"]

    # Secure daemons vs the in-process O: round 1 within quantization (per entry, each client's
    # stochastic rounding errs by less than one step; float32 casts add an ulp or two). Later
    # rounds train from models that differ by that much, and local SGD amplifies the gap (about
    # 2.5x over three rounds here); 100x the round-1 bound still sits far below what a round
    # moves the model.
    ledger = [r | {"status": "completed"} for r in seed["ledger"]]
    daemons = checkpoints(out / "runs" / "seed-0" / "server", ledger)
    reference = original_in_process("digits", CLIENTS, ROUNDS, 0)
    assert np.array_equal(daemons[0], reference[0])
    bits = round_parameters(CLIENTS, SecureSettings()).bits
    step = 2 * SecureSettings().clip / ((1 << bits) - 1)
    magnitude = np.maximum(np.abs(daemons[1]), np.abs(reference[1]))
    moved = np.abs(reference[1] - reference[0])
    bound = CLIENTS * step + 2 * np.spacing(magnitude) + 2 * np.spacing(moved)
    gap = np.abs(daemons[1].astype(np.float64) - reference[1].astype(np.float64))
    assert np.all(gap <= bound), f"round 1: worst excess {np.max(gap - bound):.3g}"
    for k in range(2, ROUNDS + 1):
        gap = np.abs(daemons[k].astype(np.float64) - reference[k].astype(np.float64))
        moved = np.abs(reference[k].astype(np.float64) - reference[k - 1].astype(np.float64))
        assert float(np.max(gap)) <= 100 * float(np.max(bound)), f"round {k}"
        assert float(np.max(gap)) < 1e-4 * float(np.max(moved)), f"round {k}"


def test_unlearning_cost_counts_as_reference_does() -> None:
    """Forgetter steps always count; the others' training only in rounds without a step."""

    def rnd(number: int, total: int, participants: int, finished: int) -> dict[str, Any]:
        return {
            "round": number,
            "model_sha256": f"sha{number}",
            "total_samples": total,
            "participants": ["n"] * participants,
            "duration_s": 1.0,
            "finished_unix_ms": finished,
        }

    run = ForgetRun(
        rounds=[rnd(2, 500, 5, 10_000), rnd(3, 500, 5, 12_000), rnd(4, 400, 4, 13_000)],
        trained_rounds=2,
        forget_round=2,
        unlearned_round=4,
        after_round=None,
        receipt={"completed_ms": 14_000, "client_progress": {"gradient_evaluations": 70.0}},
        steps=[
            {"round": 3, "gradient_evaluations": 70, "num_samples": 100, "seconds": 0.5},
        ],
        secure_aggregation=True,
    )
    cost = unlearning_cost(run, local_epochs=5, num_params=9)
    assert cost.forgetter_grad_evals == 70
    assert cost.counted.client_grad_evals == 70 + 400 * 5  # round 3 concurrent, round 4 counted
    assert cost.strict_grad_evals == 70 + 400 * 5 + 400 * 5
    assert cost.uploads == 9
    assert cost.counted.bytes_up == 9 * (9 + 1) * 4
    assert cost.counted.wall_s == pytest.approx((14_000 - 11_000) / 1000)
    assert cost.receipt_grad_evals == 70.0
