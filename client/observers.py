"""Observation hooks on the client daemon: what it did each round and each forget step.

An observer is anything with `on_round` and `on_forget_step`; the daemon calls every one it was
given (`ClientApp(config, observers=...)`) from its own thread, after the work it reports. An
observer that raises is logged and the daemon carries on: its work never depends
on what watches it. `EventsFile` is the observer of `forsaken client --events-file`, one JSON
line per report, so a process that did not start the daemon in-process can still follow it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoundReport:
    """One round's contribution of this node, once the server has it."""

    round: int
    num_samples: int  # the weight this node reported; 0: it took part with an empty update
    secure: bool  # through secure aggregation (masked), not a plain push
    forget_id: str = ""  # the forget request whose step this round carried; "": training
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ForgetStepReport:
    """One forget step this node computed for an unlearning round."""

    forget_id: str
    method: str
    round: int
    num_samples: int  # the weight the step reports; 0: it contributes nothing this round
    gradient_evaluations: int  # per-sample forward+backward passes it took
    done: bool  # the local oracle says the forget set looks unseen (or the round cap hit)
    seconds: float  # wall time of the step's computation on this node
    metrics: Mapping[str, float] = field(default_factory=dict)


class ClientObserver(Protocol):
    def on_round(self, report: RoundReport) -> None: ...

    def on_forget_step(self, report: ForgetStepReport) -> None: ...


class Observers:
    """The daemon's observers, each called in turn; a failing one is logged, not raised."""

    def __init__(self, observers: Iterable[ClientObserver] = ()) -> None:
        self._observers = tuple(observers)

    def on_round(self, report: RoundReport) -> None:
        for o in self._observers:
            try:
                o.on_round(report)
            except Exception:
                log.exception("observer %r failed on round %d", o, report.round)

    def on_forget_step(self, report: ForgetStepReport) -> None:
        for o in self._observers:
            try:
                o.on_forget_step(report)
            except Exception:
                log.exception("observer %r failed on a forget step", o)


ROUND_EVENT = "round"
FORGET_STEP_EVENT = "forget_step"


class EventsFile:
    """Appends one JSON line per report to `path`: {"event": "round" | "forget_step", ...}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, event: str, fields: dict[str, Any]) -> None:
        line = json.dumps({"event": event, **fields}, sort_keys=True)
        with self.path.open("a") as fh:
            fh.write(line + "\n")

    def on_round(self, report: RoundReport) -> None:
        self._append(ROUND_EVENT, {**asdict(report), "metrics": dict(report.metrics)})

    def on_forget_step(self, report: ForgetStepReport) -> None:
        self._append(FORGET_STEP_EVENT, {**asdict(report), "metrics": dict(report.metrics)})


def read_events(path: Path) -> tuple[list[RoundReport], list[ForgetStepReport]]:
    """The reports an `EventsFile` holds, in order; a torn last line (a daemon killed while
    writing) is skipped, an unknown event is an error naming the line."""
    rounds: list[RoundReport] = []
    steps: list[ForgetStepReport] = []
    if not path.exists():
        return rounds, steps
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        event = entry.pop("event", None)
        if event == ROUND_EVENT:
            rounds.append(RoundReport(**entry))
        elif event == FORGET_STEP_EVENT:
            steps.append(ForgetStepReport(**entry))
        else:
            raise ValueError(f"{path}:{number}: unknown event {event!r}")
    return rounds, steps
