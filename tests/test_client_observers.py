"""The client daemon's observation hooks: reports fan out to every observer, a failing observer
never reaches the daemon, and the events file reads back as the reports written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from forsaken.client.observers import (
    EventsFile,
    ForgetStepReport,
    Observers,
    RoundReport,
    read_events,
)

ROUND = RoundReport(round=3, num_samples=120, secure=True, metrics={"train_loss": 0.5})
STEP = ForgetStepReport(
    forget_id="f-1",
    method="forsaken",
    round=4,
    num_samples=30,
    gradient_evaluations=900,
    done=False,
    seconds=1.25,
    metrics={"forget_acc": 0.4},
)


class Recorder:
    def __init__(self) -> None:
        self.rounds: list[RoundReport] = []
        self.steps: list[ForgetStepReport] = []

    def on_round(self, report: RoundReport) -> None:
        self.rounds.append(report)

    def on_forget_step(self, report: ForgetStepReport) -> None:
        self.steps.append(report)


class Broken:
    def on_round(self, report: RoundReport) -> None:
        raise RuntimeError("observer bug")

    def on_forget_step(self, report: ForgetStepReport) -> None:
        raise RuntimeError("observer bug")


def test_every_observer_sees_every_report_even_after_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, last = Recorder(), Recorder()
    observers = Observers([first, Broken(), last])
    with caplog.at_level(logging.ERROR, logger="forsaken.client.observers"):
        observers.on_round(ROUND)
        observers.on_forget_step(STEP)
    assert first.rounds == last.rounds == [ROUND]
    assert first.steps == last.steps == [STEP]
    assert sum("observer bug" in r.exc_text for r in caplog.records if r.exc_text) == 2


def test_events_file_reads_back_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "events" / "client.jsonl"
    events = EventsFile(path)
    events.on_round(ROUND)
    events.on_forget_step(STEP)
    events.on_round(RoundReport(round=5, num_samples=0, secure=False, forget_id="f-1"))
    rounds, steps = read_events(path)
    assert rounds == [ROUND, RoundReport(5, 0, False, "f-1", {})]
    assert steps == [STEP]


def test_a_torn_last_line_is_skipped_a_bad_line_elsewhere_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    EventsFile(path).on_round(ROUND)
    with path.open("a") as fh:
        fh.write('{"event": "round", "rou')  # the daemon died mid-write
    assert read_events(path) == ([ROUND], [])
    path.write_text('{"event": "round"\n' + path.read_text())
    with pytest.raises(ValueError, match=r"events.jsonl:1: not a JSON line"):
        read_events(path)
    path.write_text('{"event": "train"}\n')
    with pytest.raises(ValueError, match="unknown event 'train'"):
        read_events(path)


def test_no_file_no_events(tmp_path: Path) -> None:
    assert read_events(tmp_path / "missing.jsonl") == ([], [])
