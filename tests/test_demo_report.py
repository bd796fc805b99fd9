"""The demo's report and plot: phases per round, ASR and membership beside accuracy."""

from __future__ import annotations

import argparse
from pathlib import Path

from forsaken.cli import demo
from forsaken.lab.evaluation_run import ForgetRun


def _run() -> ForgetRun:
    rounds = [
        {
            "round": r,
            "test_acc": 0.5 + r / 100,
            "participants": ["a"] * 3,
            "duration_s": 0.1,
            "model_sha256": f"{r:064x}",
        }
        for r in range(0, 8)
    ]
    receipt = {
        "method": "forsaken",
        "unlearning_rounds": 2,
        "recovery_rounds": 1,
        "model_sha256_before": "o",
        "model_sha256_after": "u",
        "evidence": {},
    }
    return ForgetRun(
        rounds=rounds,
        trained_rounds=4,
        forget_round=4,
        unlearned_round=7,
        after_round=None,
        receipt=receipt,
        steps=[],
        secure_aggregation=True,
    )


def test_report_marks_phases_and_carries_the_curves(tmp_path: Path) -> None:
    curves = {
        r: {"asr": 0.9 if r <= 4 else 0.02, "mia_auc": 0.7 if r <= 4 else 0.2}
        for r in (1, 2, 3, 4, 5, 6)
    }
    models = {
        name: {"test_acc": 0.9, "asr": asr, "mia_auc": 0.2, "kl_forget": 0.1, "fr": 0.5}
        for name, asr in (("O", 0.99), ("U", 0.02), ("R", 0.01))
    }
    args = argparse.Namespace(dataset="digits", clients=3, task="")
    report = demo._report(_run(), models, "", curves, args, 12.0)
    phases = {r["round"]: r["phase"] for r in report["rounds"]}
    assert phases == {
        1: "training",
        2: "training",
        3: "training",
        4: "training",
        5: "unlearning",
        6: "unlearning",
        7: "recovery",
    }
    by_round = {r["round"]: r for r in report["rounds"]}
    assert by_round[4]["asr"] == 0.9 and by_round[5]["asr"] == 0.02
    assert by_round[7]["asr"] is None  # no checkpoint: shown as missing, not made up
    demo._plot(report, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
