"""Flower ServerApp: FedAvg (the legacy strategy API, which SecAgg+ needs), timed per round.

A round's time runs from the start of the fit workflow (configure_fit, or SecAgg+'s setup
stage) to the end of aggregate_fit: the same span as forsaken's ledger round duration.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

from forsaken_flower.task import initial_vector, test_accuracy

RESULT_FILE = "result.json"


class Recorder:
    """Per-round timings, completions and accuracies, rewritten to out-dir after each round."""

    def __init__(self, out_dir: Path, config: dict[str, Any]) -> None:
        self.path = out_dir / RESULT_FILE
        self.data: dict[str, Any] = {"config": config, "rounds": {}, "done": False}

    def round(self, rnd: int) -> dict[str, Any]:
        return self.data["rounds"].setdefault(str(rnd), {"completed": False})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


class RecordingFedAvg(FedAvg):
    def __init__(self, recorder: Recorder, **kw: Any) -> None:
        super().__init__(**kw)
        self.recorder = recorder

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        params, metrics = super().aggregate_fit(server_round, results, failures)
        entry = self.recorder.round(server_round)
        entry["completed"] = params is not None
        entry["results"] = len(results)
        entry["failures"] = len(failures)
        return params, metrics


class TimedFit:
    """Wraps the fit workflow (plain or SecAgg+) to time each round from outside."""

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __call__(self, grid: Grid, context: Context) -> None:
        rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        entry = self.recorder.round(rnd)
        entry["start_unix"] = time.time()
        t0 = time.perf_counter()
        self.inner(grid, context)
        entry["round_s"] = time.perf_counter() - t0
        self.recorder.save()


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    out_dir = Path(str(rc["out-dir"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(out_dir, dict(rc))
    n = int(rc["num-clients"])
    seed = int(rc["seed"])
    if rc["mode"] == "light":
        initial = np.zeros(int(rc["params"]), dtype=np.float32)
        evaluate_fn = None
    else:
        dataset = str(rc["dataset"])
        initial = initial_vector(dataset, seed)

        def evaluate_fn(
            server_round: int, ndarrays: list[np.ndarray], config: dict[str, Scalar]
        ) -> tuple[float, dict[str, Scalar]]:
            acc = test_accuracy(ndarrays[0], dataset, seed)
            recorder.round(server_round)["accuracy"] = acc
            recorder.save()
            return 0.0, {"accuracy": acc}

    strategy = RecordingFedAvg(
        recorder,
        fraction_fit=1.0,
        fraction_evaluate=0.0,  # no federated evaluation: forsaken's rounds have none either
        min_fit_clients=n,
        min_evaluate_clients=0,
        min_available_clients=n,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda rnd: {"server-round": rnd},
        initial_parameters=ndarrays_to_parameters([initial]),
    )
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=int(rc["num-rounds"])),
        strategy=strategy,
    )
    if bool(rc["secure"]):
        timeout = float(rc["stage-timeout"])
        inner: Any = SecAggPlusWorkflow(
            num_shares=int(rc["num-shares"]),
            reconstruction_threshold=int(rc["threshold"]),
            timeout=timeout if timeout > 0 else None,
        )
    else:
        from flwr.server.workflow.default_workflows import default_fit_workflow

        inner = default_fit_workflow
    DefaultWorkflow(fit_workflow=TimedFit(inner, recorder))(grid, legacy)
    recorder.data["done"] = True
    recorder.save()
