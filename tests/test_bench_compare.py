"""`forsaken.lab.compare` without Flower: the results schema, the targets and the rendered page."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from forsaken.lab.compare import report
from forsaken.lab.compare.run import main, merge_previous, unlearning_summary

REPO = Path(__file__).resolve().parents[1]


def _entry(name: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "params": {"model_params": 100_000, "rounds": 2},
        "clients": 3,
        "secure": False,
        "forsaken_round_s": None,
        "flower_round_s": None,
        "forsaken_completed": None,
        "flower_completed": None,
        "forsaken_acc": None,
        "flower_acc": None,
    }
    base.update(kw)
    return base


def quick_results() -> dict[str, Any]:
    secure_params = {"model_params": 100_000, "rounds": 2, "neighbors": 2, "threshold": 2}
    return {
        "flower_version": "1.42.0",
        "mode": "quick",
        "repetitions": 1,
        "host": {"cpus": 2, "aes_ctr_gb_s": 1.5, "platform": "Linux"},
        "scenarios": [
            _entry(
                "round-overhead",
                forsaken_round_s=0.08,
                flower_round_s=12.0,
                forsaken_completed=True,
                flower_completed=True,
                forsaken_round_s_spread=report.spread([0.08]),
                flower_round_s_spread=report.spread([12.0]),
            ),
            _entry(
                "secure-round",
                params={**secure_params, "num_shares": 3},
                secure=True,
                forsaken_round_s=0.5,
                flower_round_s=2.0,  # only 4x: a miss
                forsaken_completed=True,
                flower_completed=True,
            ),
            _entry(
                "dropout",
                params={**secure_params, "stage_timeout_s": 5.0},
                clients=4,
                secure=True,
                forsaken_round_s=5.2,
                flower_round_s=None,
                forsaken_completed=True,
                flower_completed=False,
            ),
            _entry(
                "training",
                params={"model_params": None, "dataset": "mnist5k", "rounds": 2},
                forsaken_round_s=1.0,
                flower_round_s=14.0,
                forsaken_completed=True,
                flower_completed=True,
                forsaken_acc=0.9012,
                flower_acc=0.8950,
                forsaken_total_s=report.spread([9.0]),
                flower_total_s=report.spread([60.0]),
            ),
            _entry(
                "unlearning",
                params={
                    "dataset": "digits",
                    "rounds": 3,
                    "local_epochs": 1,
                    "methods": ["forsaken", "retrain"],
                },
                secure=True,
                forsaken_round_s=2.0,
                forsaken_completed=True,
                forsaken_acc=0.9,
                retrain_acc=0.85,
                forget_wall_s=report.spread([2.0]),
                retrain_wall_s=report.spread([20.0]),
                forget_client_grad_evals=report.spread([1000.0]),
                retrain_client_grad_evals=report.spread([25_000.0]),
                runs=[],
            ),
        ],
        "notes": ["a note"],
    }


def _unlearning(doc: dict[str, Any]) -> dict[str, Any]:
    (entry,) = [e for e in doc["scenarios"] if e["name"] == "unlearning"]
    return entry


def test_quick_results_validate_and_render() -> None:
    doc = quick_results()
    assert report.validate(doc) == []
    page = report.render(doc)
    assert "flwr` 1.42.0" in page
    assert "2 CPUs" in page and "1.5 GB/s" in page
    # One table row per measurement, with both systems' medians.
    assert "| 100k params | 3 | 0.08 s [0.08-0.08] x1 | 12 s [12-12] x1 | 150.0x |" in page
    assert "| 100k params | 3 | k=2, t=2 (Flower num_shares=3) | 0.5 s | 2 s | 4.0x |" in page
    assert "| 100k params | 4 | 5.0 s | completed | 5.2 s | did not complete | — |" in page
    assert "0.9012 | 0.8950 |" in page
    assert "## 5. Unlearning (forsaken only; Flower has no unlearning)" in page
    assert (
        "| digits | 3 | 3 | 1 | 2 s [2-2] x1 | 20 s [20-20] x1 | 10.0x | "
        "1,000 [1,000-1,000] x1 | 25,000 [25,000-25,000] x1 | 25.0x | 0.9000 | 0.8500 |"
    ) in page
    assert "Not measured in this run" not in page
    assert "- a note" in page


def test_without_an_unlearning_entry_section_5_is_a_placeholder() -> None:
    doc = quick_results()
    doc["scenarios"] = [e for e in doc["scenarios"] if e["name"] != "unlearning"]
    page = report.render(doc)
    assert "## 5. Unlearning (forsaken only; Flower has no unlearning)" in page
    assert "Not measured in this run" in page
    assert "scenario 5" not in page


def test_targets_pass_and_miss_lines() -> None:
    page = report.render(quick_results())
    assert "**PASS** — scenario 1: plaintext round ≤ Flower's (100k params, N=3)" in page
    assert "**MISS** — scenario 2: secure round ≥ 5x faster (100k params, N=3)" in page
    assert "**PASS** — scenario 3: our round completes after a dropout (N=4)" in page
    assert "Flower: did not complete" in page
    assert "**PASS** — scenario 4: accuracies agree within 1 point (plaintext)" in page
    assert (
        "**PASS** — scenario 5: ForgetMe uses ≤ 1/10 of retraining's client gradient evaluations "
        "(N=3): ForgetMe 1,000 vs retrain 25,000 gradient evaluations (0.04x retraining's); "
        "wall time 2 s vs 20 s (retraining takes 10.0x as long)"
    ) in page


@pytest.mark.parametrize(
    ("forget", "retrain", "met"),
    [
        ([1000.0], [25_000.0], True),
        ([2500.0], [25_000.0], True),  # exactly a tenth meets the bar
        ([2501.0], [25_000.0], False),
        ([10_462.0, 9000.0, 12_000.0], [2586.0, 2600.0, 2500.0], False),  # medians decide
        ([], [25_000.0], None),  # no ForgetMe run completed
    ],
)
def test_unlearning_target(forget: list[float], retrain: list[float], met: bool | None) -> None:
    doc = quick_results()
    entry = _unlearning(doc)
    entry["forget_client_grad_evals"] = report.spread(forget)
    entry["retrain_client_grad_evals"] = report.spread(retrain)
    (target,) = [t for t in report.targets(doc) if t.scenario == "5"]
    assert target.met is met
    mark = {True: "PASS", False: "MISS", None: "NOT MEASURED"}[met]
    assert f"**{mark}** — scenario 5: ForgetMe uses ≤ 1/10" in report.render(doc)


def test_unlearning_summary_of_repetitions() -> None:
    def run(method: str, wall: float, evals: float, acc: float) -> dict[str, Any]:
        return {
            "method": method,
            "completed": True,
            "wall_s": wall,
            "client_grad_evals": evals,
            "accuracy": acc,
        }

    forget = [run("forsaken", 3.0, 900.0, 0.9), run("forsaken", 5.0, 1100.0, 0.8)]
    retrain = [run("retrain", 30.0, 20_000.0, 0.85), run("retrain", 40.0, 20_000.0, 0.87)]
    s = unlearning_summary(forget, retrain, repetitions=2)
    assert s["forsaken_round_s"] == 4.0 and s["forsaken_acc"] == pytest.approx(0.85)
    assert s["forsaken_completed"] is True
    assert s["retrain_wall_s"] == {"median": 35.0, "min": 30.0, "max": 40.0, "n": 2}
    assert s["forget_client_grad_evals"]["median"] == 1000.0
    assert s["runs"] == forget + retrain
    # A failed repetition: not completed, and its numbers (none) are left out of the spreads.
    failed = {"method": "retrain", "completed": False, "error": "timed out"}
    s = unlearning_summary(forget, [retrain[0], failed], repetitions=2)
    assert s["forsaken_completed"] is False
    assert s["retrain_wall_s"]["n"] == 1
    doc = quick_results()
    _unlearning(doc).update(s)
    assert report.validate(doc) == []


def test_accuracy_gap_is_a_miss_and_missing_numbers_are_not_measured() -> None:
    doc = quick_results()
    doc["scenarios"][3]["flower_acc"] = 0.88
    doc["scenarios"][0]["flower_round_s"] = None
    marks = {(t.scenario, t.met) for t in report.targets(doc)}
    assert ("4", False) in marks
    assert ("1", None) in marks
    assert "**NOT MEASURED** — scenario 1" in report.render(doc)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.pop("flower_version"), "missing top-level key 'flower_version'"),
        (lambda d: d["scenarios"][0].pop("flower_acc"), "lacks 'flower_acc'"),
        (lambda d: d["scenarios"][0].update(name="bogus"), "unknown scenario name"),
        (lambda d: d["scenarios"][1].update(flower_round_s="slow"), "must be a number or null"),
        (lambda d: d["scenarios"][2].update(forsaken_completed=1), "must be a boolean or null"),
        (lambda d: d["scenarios"][4].pop("retrain_wall_s"), "retrain_wall_s must be a spread"),
        (
            lambda d: d["scenarios"][4]["forget_client_grad_evals"].update(median="many"),
            "forget_client_grad_evals.median must be a number or null",
        ),
    ],
)
def test_schema_violations_are_reported(mutate: Any, problem: str) -> None:
    doc = copy.deepcopy(quick_results())
    mutate(doc)
    problems = report.validate(doc)
    assert any(problem in p for p in problems), problems
    with pytest.raises(ValueError, match="invalid results"):
        report.render(doc)


def test_merge_keeps_the_scenarios_not_rerun() -> None:
    previous = quick_results()
    kept, notes = merge_previous(previous, "quick", {"5"})
    assert [e["name"] for e in kept] == ["round-overhead", "secure-round", "dropout", "training"]
    assert notes == ["a note"]
    # Scenarios 1 and 2 share their Flower clusters: asking for either reruns both.
    kept, _ = merge_previous(previous, "quick", {"2"})
    assert [e["name"] for e in kept] == ["dropout", "training", "unlearning"]
    kept, _ = merge_previous(previous, "quick", {"3", "4", "5"})
    assert [e["name"] for e in kept] == ["round-overhead", "secure-round"]
    with pytest.raises(ValueError, match="'quick' run"):
        merge_previous(previous, "full", {"5"})


def test_render_only_command(tmp_path: Path) -> None:
    results, page = tmp_path / "bench-results.json", tmp_path / "benchmarks.md"
    results.write_text(json.dumps(quick_results()))
    assert main(["--render-only", str(results), "--doc", str(page)]) == 0
    assert page.read_text() == report.render(quick_results())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenarios": []}))
    assert main(["--render-only", str(bad), "--doc", str(tmp_path / "x.md")]) == 1


def test_flower_app_and_make_target_are_wired() -> None:
    app = REPO / "lab" / "compare" / "flower_app"
    meta = tomllib.loads((app / "pyproject.toml").read_text())
    for ref in meta["tool"]["flwr"]["app"]["components"].values():
        module = ref.split(":")[0]
        assert (app / (module.replace(".", "/") + ".py")).is_file(), ref
    makefile = (REPO / "Makefile").read_text()
    assert "bench-compare:" in makefile
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "compare" not in test_recipe  # the benchmark stays out of `make test`
