"""An in-process driver for one whole SecAgg+ round: every client and the server in one loop.

It runs exactly the states the daemons run, with the network replaced by direct calls, and can
make chosen clients fall silent at any stage. Tests use it for end-to-end properties at n = 100;
the benchmark uses its optional clock to time one client's and the server's work.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from forsaken.common.secagg.client_states import ClientIdentity, ClientState, start_client
from forsaken.common.secagg.messages import (
    AggregateResult,
    ConsistencyRequest,
    KeysBroadcast,
    RelayedShares,
    Stage,
    UnmaskRequest,
    payload_nbytes,
)
from forsaken.common.secagg.params import SecAggConfig
from forsaken.common.secagg.server_states import (
    ServerCollectUnmask,
    ServerFinished,
    ServerState,
    start_server,
)

__all__ = ["RoundReport", "run_round"]

# The stage whose message a client sends in reply to each server message.
_REPLY_STAGE: dict[type, Stage] = {
    KeysBroadcast: Stage.SHARE_KEYS,
    RelayedShares: Stage.MASKED_INPUT,
    ConsistencyRequest: Stage.CONSISTENCY_CHECK,
    UnmaskRequest: Stage.UNMASKING,
}


@dataclass(slots=True)
class RoundReport:
    """What happened in a round: final states, traffic and (with a clock) time spent."""

    server: ServerState
    clients: dict[int, ClientState] = field(default_factory=dict)
    silent: set[int] = field(default_factory=set)  # clients that dropped out
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    client_seconds: dict[int, float] = field(default_factory=dict)
    server_seconds: dict[Stage, float] = field(default_factory=dict)  # receives and close
    close_seconds: dict[Stage, float] = field(default_factory=dict)  # close alone
    watched: list[object] = field(default_factory=list)  # messages delivered to `watch`
    unmask_state: ServerCollectUnmask | None = None  # the last collecting state, for re-timing

    @property
    def result(self) -> AggregateResult | None:
        return self.server.result if isinstance(self.server, ServerFinished) else None


def _no_clock() -> float:
    return 0.0


def run_round(
    config: SecAggConfig,
    inputs: Mapping[int, np.ndarray],
    seeds: Mapping[int, bytes],
    drop: Mapping[Stage, Collection[int]] | None = None,
    *,
    signing_keys: Mapping[int, bytes] | None = None,
    verifying_keys: Mapping[int, bytes] | None = None,
    clock: Callable[[], float] | None = None,
    executor: Executor | None = None,
    workers: int = 1,
    watch: int | None = None,
) -> RoundReport:
    """Run one round for clients 1..n with quantized `inputs` and 32-byte round `seeds`.

    `drop[stage]` lists clients that fall silent instead of sending that stage's message
    (`Stage.SHARE_KEYS`: they drop after advertising keys; `Stage.MASKED_INPUT`: after sharing
    keys; `Stage.UNMASKING`: after sending their masked input). A silent client stays silent.
    Messages delivered to client `watch` are kept in the report so its work can be replayed.
    """
    drop = drop or {}
    now = clock or _no_clock
    n = config.params.num_clients
    report = RoundReport(server=start_server(config, verifying_keys if config.active else None))

    def account(index: int, seconds: float, up: object, down: object) -> None:
        report.client_seconds[index] = report.client_seconds.get(index, 0.0) + seconds
        report.bytes_up[index] = report.bytes_up.get(index, 0) + payload_nbytes(up)
        report.bytes_down[index] = report.bytes_down.get(index, 0) + payload_nbytes(down)

    def server_receive(stage: Stage, index: int, message: object) -> None:
        t0 = now()
        report.server = report.server.receive(index, message)
        report.server_seconds[stage] = report.server_seconds.get(stage, 0.0) + now() - t0

    server_stage = Stage.ADVERTISE_KEYS
    for i in range(1, n + 1):
        if i in drop.get(Stage.ADVERTISE_KEYS, ()):
            report.silent.add(i)
            continue
        identity = ClientIdentity(
            config,
            i,
            seeds[i],
            signing_key=(signing_keys or {}).get(i),
            verifying_keys=verifying_keys if config.active else None,
        )
        t0 = now()
        report.clients[i], advert = start_client(identity, inputs[i])
        account(i, now() - t0, advert, b"")
        server_receive(server_stage, i, advert)
    while report.server.stage not in (Stage.FINISHED, Stage.ABORTED):
        t0 = now()
        if isinstance(report.server, ServerCollectUnmask):
            report.unmask_state = report.server
            report.server, outbound = report.server.close(executor, workers)
        else:
            report.server, outbound = report.server.close()
        report.close_seconds[server_stage] = now() - t0
        report.server_seconds[server_stage] = (
            report.server_seconds.get(server_stage, 0.0) + report.close_seconds[server_stage]
        )
        if not outbound:
            break
        server_stage = _REPLY_STAGE[type(next(iter(outbound.values())))]
        for i, message in outbound.items():
            if i in report.silent or i in drop.get(server_stage, ()):
                report.silent.add(i)
                continue
            if i == watch:
                report.watched.append(message)
            t0 = now()
            report.clients[i], reply = report.clients[i].handle(message)
            account(i, now() - t0, reply if reply is not None else b"", message)
            if reply is not None:
                server_receive(server_stage, i, reply)
    return report
