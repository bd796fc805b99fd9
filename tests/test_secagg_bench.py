"""The benchmark runs end to end on a tiny round and reports consistent figures."""

from __future__ import annotations

from forsaken.lab.secagg_bench import bench_secagg


def test_bench_secagg_smoke() -> None:
    out = bench_secagg(12, 5000, 6, 0.2, repeats=1, rounds=1)
    assert out["exact"] is True
    assert out["dropped"] == 2 and out["threshold"] == 4
    # One self mask per survivor plus one per (dropped, surviving neighbour) link.
    assert 10 + 2 * 5 <= out["mask_expansions_server"] <= 10 + 2 * 6
    assert out["float32_bytes"] == 20_000
    assert out["bytes_up_per_client"] > out["float32_bytes"]
    for key in ("aes_floor_s", "client_s", "server_s", "server_s_2workers", "speedup_2workers"):
        assert out[key] > 0
    assert out["client_over_aes_floor"] == out["client_s"] / out["aes_floor_s"]
