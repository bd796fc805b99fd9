"""The facade: a federation of real daemons (and of the same daemons in process) that trains,
forgets on request and returns a typed receipt; the README's snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import forsaken
from forsaken.client.observers import ForgetStepReport, RoundReport
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_receipt import Receipt

README = Path(__file__).resolve().parents[1] / "README.md"


class Recorder:
    def __init__(self) -> None:
        self.rounds: list[RoundReport] = []
        self.steps: list[ForgetStepReport] = []

    def on_round(self, report: RoundReport) -> None:
        self.rounds.append(report)

    def on_forget_step(self, report: ForgetStepReport) -> None:
        self.steps.append(report)


def test_federation_refuses_clients_it_does_not_have() -> None:
    with pytest.raises(forsaken.FederationError, match="no client 3"):
        forsaken.Federation(clients=3, client_options_for={3: {"seed": 1}})
    with pytest.raises(forsaken.FederationError, match="at least 1 client"):
        forsaken.Federation(clients=0)


def _train_forget_and_check(fed: forsaken.Federation, recorder: Recorder) -> None:
    with fed.start() as run:
        assert run.wait_rounds(5, timeout_s=240) >= 5
        with pytest.raises(forsaken.FederationError, match="no client 7"):
            run.forget(client=7)
        with pytest.raises(forsaken.FederationError, match="unknown forget method 'erase'"):
            run.forget(client=0, method="erase")
        receipt = run.forget(client=0, method="forsaken", timeout_s=300)
        rounds = {r.model_sha256.hex(): r.round for r in run.rounds()}
    assert isinstance(receipt, Receipt) and forsaken.Receipt is Receipt
    assert receipt.method is ForgetMethod.FORSAKEN and receipt.samples == 0  # all its data
    assert receipt.model_sha256_after in rounds  # a model the ledger holds
    assert receipt.unlearning_rounds >= 1 and receipt.verdict
    # The hooks saw client 0's training rounds and exactly the receipt's forget steps.
    assert [s.forget_id for s in recorder.steps] == [receipt.forget_id] * len(recorder.steps)
    assert len(recorder.steps) == receipt.unlearning_rounds
    assert recorder.steps[-1].done and all(s.gradient_evaluations > 0 for s in recorder.steps)
    training = [r for r in recorder.rounds if not r.forget_id]
    assert training and all(r.num_samples > 0 and r.secure for r in training)
    assert {s.round for s in recorder.steps} <= {r.round for r in recorder.rounds}


def test_in_process_federation_trains_forgets_and_reports(tmp_path: Path) -> None:
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    recorder = Recorder()
    fed = forsaken.Federation(
        dataset="digits", clients=3, in_process=True, root=tmp_path, observers={0: [recorder]}
    )
    _train_forget_and_check(fed, recorder)
    # The daemons' process-wide torch settings do not outlive the run.
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


@pytest.mark.slow
def test_daemon_federation_over_mutual_tls_trains_forgets_and_reports(tmp_path: Path) -> None:
    recorder = Recorder()
    fed = forsaken.Federation(
        dataset="digits", clients=3, tls=True, root=tmp_path, observers={0: [recorder]}
    )
    _train_forget_and_check(fed, recorder)
    # Real processes: each with its own log, all stopped with the run.
    assert {p.name for p in (tmp_path / "logs").glob("*.log")} == {
        "server.log",
        "client-0.log",
        "client-1.log",
        "client-2.log",
    }


@pytest.mark.slow
def test_readme_python_api_snippet_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    unlearning, recovery, digest = out[0].split()
    assert int(unlearning) >= 1 and int(recovery) >= 0 and len(digest) == 12
    assert "asked to forget all the data" in out[1]
