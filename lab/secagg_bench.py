"""Cost of a SecAgg+ round measured against the raw speed of the PRG on the same machine.

The cost model: a client pays about k + 1 keystream expansions of 4D
bytes, the server one per survivor plus one per (dropped, surviving neighbour) link. So every
time here is also reported as a ratio to `aes_floor_s`, the best time of one raw AES-256-CTR
expansion of D uint32 words measured in the same run, which makes the numbers comparable
across machines.

    python -c 'from forsaken.lab.secagg_bench import bench_secagg; import json; \
               print(json.dumps(bench_secagg(100, 1_000_000, 16, 0.1)))'
"""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from forsaken.common.secagg.client_states import ClientIdentity, ClientState, start_client
from forsaken.common.secagg.crypto import expand_mask
from forsaken.common.secagg.messages import Stage
from forsaken.common.secagg.params import SecAggConfig, SecAggParams, choose_parameters
from forsaken.common.secagg.quantize import max_bits, quantize
from forsaken.common.secagg.runner import run_round
from forsaken.common.secagg.server_states import ServerCollectUnmask

__all__ = ["bench_secagg"]

_CLIP = 1.0
_WATCHED = 1  # the client whose work is timed; never dropped


def _seed(label: bytes, i: int) -> bytes:
    return hashlib.sha256(b"forsaken/bench/" + label + i.to_bytes(4, "big")).digest()


def _update(i: int, dim: int) -> np.ndarray:
    """A reproducible float32 'model update' in [-1.2, 1.2) (some entries get clipped)."""
    words = expand_mask(_seed(b"update", i), dim)
    return ((words.astype(np.float32) * np.float32(2.0**-32)) - np.float32(0.5)) * np.float32(2.4)


class _QuantizedInputs(Mapping[int, np.ndarray]):
    """Client inputs made on demand, so only the live ones occupy memory."""

    def __init__(self, n: int, dim: int, bits: int) -> None:
        self.n, self.dim, self.bits = n, dim, bits

    def __getitem__(self, i: int) -> np.ndarray:
        if not 1 <= i <= self.n:
            raise KeyError(i)
        return quantize(
            _update(i, self.dim), 1000 + i, _CLIP, self.bits, _seed(b"rounding", i), self.n
        )

    def __iter__(self) -> Iterator[int]:
        return iter(range(1, self.n + 1))

    def __len__(self) -> int:
        return self.n


class _Timer:
    """Best-of-n timing that re-measures the AES floor between runs.

    One-core figures use the thread's CPU clock, so time the scheduler gives to other programs
    on a shared machine is not counted; on an idle machine it equals wall time for this
    single-threaded work. The floor is re-measured between runs with the same clock, so it sees
    the same background load (caches, frequency) as the work it is compared with.
    """

    def __init__(self, dim: int) -> None:
        self._buffer = np.empty(dim, dtype=np.uint32)
        self._seed = _seed(b"aes", 0)
        self.floor = float("inf")
        self.sample_floor(20)

    def sample_floor(self, repeats: int = 3) -> None:
        for _ in range(repeats):
            t0 = time.thread_time()
            expand_mask(self._seed, self._buffer.size, out=self._buffer)
            self.floor = min(self.floor, time.thread_time() - t0)

    def best(
        self, fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.thread_time
    ) -> float:
        best = float("inf")
        for _ in range(repeats):
            self.sample_floor()
            t0 = clock()
            fn()
            best = min(best, clock() - t0)
        return best


def _client_replay(
    config: SecAggConfig,
    inputs: _QuantizedInputs,
    watched: list[object],
    timer: _Timer,
    repeats: int,
) -> float:
    """Best time of the watched client's whole round: quantize, keys, shares, mask, unmask.

    Client states are pure, so replaying the same server messages redoes exactly the work of
    the round that was run.
    """
    update = _update(_WATCHED, inputs.dim)
    identity = ClientIdentity(config, _WATCHED, _seed(b"round", _WATCHED))

    def one_client_round() -> None:
        x = quantize(
            update, 1000 + _WATCHED, _CLIP, inputs.bits, _seed(b"rounding", _WATCHED), inputs.n
        )
        state: ClientState
        state, _ = start_client(identity, x)
        for message in watched:
            state, _ = state.handle(message)

    return timer.best(one_client_round, repeats)


def _expansions(state: ServerCollectUnmask) -> int:
    alive = frozenset(state.survivors)
    graph = state.masked.graph
    return len(state.survivors) + sum(len(alive.intersection(graph[j])) for j in state.dropped)


def bench_secagg(
    clients: int,
    params: int,
    neighbors: int | None,
    dropout: float,
    workers: int = 1,
    *,
    corruption: float = 0.05,
    repeats: int = 5,
    rounds: int = 3,
) -> dict[str, float | int | bool]:
    """Run one round for `clients` clients with `params`-entry updates and time its parts.

    `neighbors=None` takes k and t from `choose_parameters(clients, dropout, corruption)`;
    otherwise t = k // 2 + 1. A `dropout` fraction of clients falls silent after sharing keys,
    which is the case that costs the server most. `server_s` unmasks with `workers` processes
    (1: in this process, the one-core figure); `server_s_2workers` always uses 2.

    Every time is the best of several runs (`repeats` replays, `rounds` whole rounds) because
    the floor is a best time too; one-core times are CPU time of this thread (see `_Timer`),
    the two-worker time is wall-clock. `server_s` is the server's aggregation work: summing the
    masked inputs as they arrive, checking the unmask responses, and the unmasking close.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError("need at least one round and one repeat")
    if neighbors is None:
        p = choose_parameters(clients, dropout, corruption)
    else:
        p = SecAggParams(clients, neighbors, neighbors // 2 + 1, max_bits(clients))
    config = SecAggConfig(p, params + 1)
    inputs = _QuantizedInputs(clients, params, p.bits)
    seeds = {i: _seed(b"round", i) for i in range(1, clients + 1)}
    n_drop = round(dropout * clients)
    dropped = set(range(clients - n_drop + 1, clients + 1)) - {_WATCHED}

    timer = _Timer(params)

    # Whole rounds are repeated so the server's per-message work (summing masked inputs as they
    # arrive, checking responses) can be taken as the best of several, like every other time.
    collect_s = float("inf")
    for _ in range(rounds):
        timer.sample_floor()
        report = run_round(
            config,
            inputs,
            seeds,
            {Stage.MASKED_INPUT: dropped},
            clock=time.thread_time,
            watch=_WATCHED,
        )
        result, unmask_state = report.result, report.unmask_state
        if result is None or unmask_state is None:
            raise RuntimeError(f"benchmark round did not finish: {report.server}")
        seconds = report.server_seconds
        collect = seconds[Stage.MASKED_INPUT] + seconds[Stage.UNMASKING]
        collect_s = min(collect_s, collect - report.close_seconds[Stage.UNMASKING])
    assert result is not None and unmask_state is not None  # rounds >= 1, checked above
    expected = np.zeros(params + 1, dtype=np.uint32)
    for i in result.survivors:
        np.add(expected, inputs[i], out=expected)
    exact = bool(np.array_equal(expected, result.vector))

    client_s = _client_replay(config, inputs, report.watched, timer, repeats)
    # The unmasking close is pure, so it is re-run to take the best of several; `workers`
    # processes for server_s (1: this process alone), 2 for the parallel variant.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(2, workers), mp_context=ctx) as pool:
        list(pool.map(abs, range(max(2, workers))))  # start the workers before timing
        executor = pool if workers > 1 else None
        clock = time.thread_time if workers == 1 else time.perf_counter
        close_1 = timer.best(lambda: unmask_state.close(executor, workers), repeats, clock)
        # Parallel speed-up is about elapsed time, so both sides of it are wall-clock.
        wall_1 = timer.best(lambda: unmask_state.close(), repeats, time.perf_counter)
        wall_2 = timer.best(lambda: unmask_state.close(pool, 2), repeats, time.perf_counter)
    server_s, server_s_2 = collect_s + close_1, collect_s + wall_2
    expansions = _expansions(unmask_state)
    aes_floor = timer.floor
    return {
        "clients": clients,
        "params": params,
        "neighbors": p.neighbors,
        "threshold": p.threshold,
        "bits": p.bits,
        "dropped": len(result.dropped),
        "aes_floor_s": aes_floor,
        "client_s": client_s,
        "server_s": server_s,
        "server_collect_s": collect_s,
        "server_unmask_s": close_1,
        "workers": workers,
        "server_s_2workers": server_s_2,
        "speedup_2workers": (collect_s + wall_1) / server_s_2,
        "mask_expansions_server": expansions,
        "exact": exact,
        "bytes_up_per_client": report.bytes_up[_WATCHED],
        "float32_bytes": 4 * params,
        "client_over_aes_floor": client_s / aes_floor,
        "server_over_expansions_floor": server_s / (expansions * aes_floor),
        "client_bar_ok": client_s <= 2.5 * (p.neighbors + 1) * aes_floor,
        "server_bar_ok": server_s <= 1.5 * expansions * aes_floor,
        "bytes_bar_ok": report.bytes_up[_WATCHED] <= 1.01 * 4 * params,
    }
