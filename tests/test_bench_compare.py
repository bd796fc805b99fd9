"""`forsaken.compare` without Flower: the results schema, the targets and the rendered page."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from forsaken.compare import report
from forsaken.compare.run import main

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
        ],
        "notes": ["a note"],
    }


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
    assert "- a note" in page


def test_targets_pass_and_miss_lines() -> None:
    page = report.render(quick_results())
    assert "**PASS** — scenario 1: plaintext round ≤ Flower's (100k params, N=3)" in page
    assert "**MISS** — scenario 2: secure round ≥ 5x faster (100k params, N=3)" in page
    assert "**PASS** — scenario 3: our round completes after a dropout (N=4)" in page
    assert "Flower: did not complete" in page
    assert "**PASS** — scenario 4: accuracies agree within 1 point (plaintext)" in page


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
    ],
)
def test_schema_violations_are_reported(mutate: Any, problem: str) -> None:
    doc = copy.deepcopy(quick_results())
    mutate(doc)
    problems = report.validate(doc)
    assert any(problem in p for p in problems), problems
    with pytest.raises(ValueError, match="invalid results"):
        report.render(doc)


def test_render_only_command(tmp_path: Path) -> None:
    results, page = tmp_path / "bench-results.json", tmp_path / "benchmarks.md"
    results.write_text(json.dumps(quick_results()))
    assert main(["--render-only", str(results), "--doc", str(page)]) == 0
    assert page.read_text() == report.render(quick_results())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenarios": []}))
    assert main(["--render-only", str(bad), "--doc", str(tmp_path / "x.md")]) == 1


def test_flower_app_and_make_target_are_wired() -> None:
    app = REPO / "cli" / "compare" / "flower_app"
    meta = tomllib.loads((app / "pyproject.toml").read_text())
    for ref in meta["tool"]["flwr"]["app"]["components"].values():
        module = ref.split(":")[0]
        assert (app / (module.replace(".", "/") + ".py")).is_file(), ref
    makefile = (REPO / "Makefile").read_text()
    assert "bench-compare:" in makefile
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "compare" not in test_recipe  # the benchmark stays out of `make test`
