"""Smoke test of `forsaken bench load`: a few secure-aggregation clients, one tiny round."""

from __future__ import annotations

import json
import subprocess

import pytest

from forsaken.launch import forsaken_command

pytestmark = pytest.mark.slow


def test_bench_load_completes_a_secure_round_and_reports_it() -> None:
    out = subprocess.run(
        forsaken_command(
            "bench", "load", "--clients", "4", "--params", "1000", "--rounds", "1", "--json"
        ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["bench"] == "load"
    assert (report["clients"], report["params"], report["rounds"]) == (4, 1000, 1)
    assert report["completed_rounds"] == 1 and report["aborted_attempts"] == 0
    # Every client went through the whole protocol, unmasking included.
    assert report["client_rounds_done"] == 4 and report["client_steps_refused"] == 0
    assert len(report["round_s"]) == 1 and report["round_s"][0] > 0
    assert report["round_s_median"] == report["round_s"][0]
    assert report["server_peak_rss_mb"] > 10
    assert report["aes_floor_s"] > 0
    assert report["round_over_aes_floor"] == pytest.approx(
        report["round_s_median"] / report["aes_floor_s"], rel=0.01
    )
    # Four clients: classic SecAgg's complete graph, k = n - 1, each expanding k + 1 masks.
    assert report["secagg_neighbors"] == 3 and report["aes_expansions_per_round"] == 4 * 4 + 4
    assert report["wall_s"] > 0
