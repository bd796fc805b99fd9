"""Every command's --help is complete, and `forsaken status` renders a live server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from forsaken.main import build_parser
from forsaken.procs import forsaken_command

COMMANDS = ["server", "client", "demo", "status", "certs", "forget", "admin", "bench", "evaluate"]


def test_every_subcommand_has_help_with_descriptions() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)  # type: ignore[union-attr]
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert p.description, f"{name} has no description"
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


@pytest.mark.slow
def test_status_renders_a_live_server(tmp_path: Path) -> None:
    from tests.cluster import Cluster

    c = Cluster(tmp_path, rounds=0, **{"min-clients": 5})
    try:
        c.start_server()
        table = subprocess.run(
            forsaken_command("status", "--server", c.address),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert table.returncode == 0, table.stderr
        assert "phase=waiting" in table.stdout and "rounds" in table.stdout
        as_json = subprocess.run(
            forsaken_command("status", "--server", c.address, "--json"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        data = json.loads(as_json.stdout)
        assert data["phase"] == "waiting" and data["secure_aggregation"] is True
        assert data["rounds"][0]["round"] == 0
    finally:
        c.stop()
    down = subprocess.run(
        forsaken_command("status", "--server", c.address, "--timeout", "2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "cannot reach" in down.stdout
