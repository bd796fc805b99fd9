"""Flower ClientApp: a light client (no training) or forsaken's local training on mnist5k."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from forsaken.common.training import TrainConfig
from forsaken_flower.task import LIGHT_SAMPLES, light_update, train_update

KILL_MARKER = "kill-{partition}.marker"


class BenchClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.run_config = context.run_config
        self.partition = int(context.node_config["partition-id"])
        self.num_partitions = int(context.node_config["num-partitions"])

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, bool | bytes | float | int | str]
    ) -> tuple[list[np.ndarray], int, dict[str, bool | bytes | float | int | str]]:
        (weights,) = parameters
        server_round = int(config["server-round"])
        rc = self.run_config
        if rc["mode"] == "light":
            return [light_update(weights, self.partition, server_round)], LIGHT_SAMPLES, {}
        cfg = TrainConfig(
            local_epochs=int(rc["local-epochs"]),
            batch_size=int(rc["batch-size"]),
            learning_rate=float(rc["learning-rate"]),
            momentum=float(rc["momentum"]),
        )
        new, samples = train_update(
            weights,
            dataset_name=str(rc["dataset"]),
            partition=self.partition,
            num_partitions=self.num_partitions,
            seed=int(rc["seed"]),
            held_out_fraction=float(rc["held-out-fraction"]),
            server_round=server_round,
            cfg=cfg,
        )
        return [new], samples, {}


def client_fn(context: Context) -> Client:
    return BenchClient(context).to_client()


def drop_after_share_keys(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Scenario 3: the chosen node vanishes once it has shared its keys.

    When the collect-masked-vectors stage reaches it, it leaves a marker and waits; the
    benchmark then SIGKILLs the whole SuperNode (this process included), as forsaken's
    failpoint `secagg-after-ShareKeys` kills a forsaken client.
    """
    victim = int(ctxt.run_config["kill-partition"])
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if (
        victim >= 0
        and int(ctxt.node_config["partition-id"]) == victim
        and configs is not None
        and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS
    ):
        marker = Path(str(ctxt.run_config["out-dir"])) / KILL_MARKER.format(partition=victim)
        marker.write_text(str(time.time()))
        while True:  # the benchmark kills this node's process group
            time.sleep(1.0)
    return call_next(msg, ctxt)


def secaggplus_if_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """One ClientApp for both modes: SecAgg+ only handles messages that carry its stages."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(client_fn=client_fn, mods=[drop_after_share_keys, secaggplus_if_asked])
