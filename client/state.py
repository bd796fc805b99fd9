"""The client's durable local state: which data it holds, what it reserves and what it forgot.

Kept as one JSON document written atomically. The data selection (dataset, partition, seed)
is pinned on first start so a restart with different flags cannot silently change which
samples this node trains on, and the held-out ids never move.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from forsaken.common.errors import ConfigError, CorruptState, InvalidPayload
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_states import PendingState, RequestState, parse_request_state
from forsaken.common.fsutil import atomic_write_json, read_json

STATE_FILE = "client_state.json"
VERSION = 1


@dataclass(frozen=True)
class DataSelection:
    dataset: str
    partition_index: int
    partition_count: int
    scheme: str
    alpha: float
    seed: int
    held_out_fraction: float


@dataclass(frozen=True)
class LocalForget:
    """A forget request as this node knows it; `forget_id` is empty until the server acked."""

    request_id: str
    sample_ids: tuple[int, ...]
    method: ForgetMethod | None  # None: the server's default
    forget_id: str = ""
    state: RequestState = PendingState.SUBMITTING


@dataclass(frozen=True)
class ClientState:
    selection: DataSelection
    excluded_ids: tuple[int, ...] = ()
    rounds_participated: int = 0
    last_round: int = 0
    pushed_request_ids: dict[str, str] = field(default_factory=dict)  # task_id -> request_id
    forgets: tuple[LocalForget, ...] = ()
    forgot_all: bool = False  # every training sample is excluded, present and future

    def with_round(self, round_: int) -> ClientState:
        return replace(self, rounds_participated=self.rounds_participated + 1, last_round=round_)


class StateFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load_or_init(self, selection: DataSelection) -> ClientState:
        if not self.path.exists():
            state = ClientState(selection)
            self.save(state)
            return state
        try:
            raw = read_json(self.path)
            stored = DataSelection(**raw["selection"])
            state = ClientState(
                selection=stored,
                excluded_ids=tuple(int(i) for i in raw.get("excluded_ids", [])),
                rounds_participated=int(raw.get("rounds_participated", 0)),
                last_round=int(raw.get("last_round", 0)),
                pushed_request_ids=dict(raw.get("pushed_request_ids", {})),
                forgets=tuple(
                    LocalForget(
                        f["request_id"],
                        tuple(int(i) for i in f["sample_ids"]),
                        ForgetMethod.parse(f["method"]) if f["method"] else None,
                        f.get("forget_id", ""),
                        parse_request_state(f.get("state", PendingState.SUBMITTING)),
                    )
                    for f in raw.get("forgets", [])
                ),
                forgot_all=bool(raw.get("forgot_all", False)),
            )
        except (ValueError, KeyError, TypeError, InvalidPayload) as exc:
            raise CorruptState(f"{self.path} is not a valid client state file: {exc}") from None
        if stored != selection:
            raise ConfigError(
                f"{self.path.parent} belongs to a node holding {_describe(stored)}; this start "
                f"asked for {_describe(selection)}. Use another --state-dir for other data."
            )
        return state

    def save(self, state: ClientState) -> None:
        doc = asdict(state)
        doc["version"] = VERSION
        doc["excluded_ids"] = list(state.excluded_ids)
        for f in doc["forgets"]:
            f["method"] = f["method"] or ""  # the server's default, as the file has always said
        atomic_write_json(self.path, doc)


def _describe(s: DataSelection) -> str:
    return (
        f"{s.dataset} partition {s.partition_index}/{s.partition_count} ({s.scheme}, "
        f"alpha={s.alpha}, seed={s.seed}, held-out {s.held_out_fraction})"
    )
