"""Every command's --help is complete, and `forsaken status` renders a live server."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from forsaken.cli.main import build_parser
from forsaken.launch import forsaken_command

COMMANDS = ["server", "client", "demo", "status", "certs", "forget", "admin", "bench", "evaluate"]


def _parsers(
    parser: argparse.ArgumentParser, path: str = "forsaken"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser under `parser`, nested subcommands (certs init, admin revoke...) too."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_subcommand_has_help_with_descriptions() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)  # type: ignore[union-attr]
    found = list(_parsers(parser))
    assert len(found) > len(COMMANDS) + 5  # the nested ones were walked
    for name, p in found:
        assert p.description, f"{name} has no description"
        for action in p._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert action.help, f"{name} {action.option_strings} has no help"
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                assert all(action.choices), f"{name} {action.option_strings}: an empty choice"
                assert action.metavar is None, f"{name} {action.option_strings} hides choices"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("client", "--scheme {iid,dirichlet}"),
        ("client", "--log-level {debug,info,warning,error}"),
        ("server", "--log-format {text,json}"),
        ("server", "--aggregation {secure,plaintext}"),
        ("forget", "--method {forsaken,pga,fedquit,finetune,not,retrain}"),
    ],
)
def test_help_shows_the_choices(command: str, shown: str) -> None:
    text = build_parser()._subparsers._group_actions[0].choices[command].format_help()  # type: ignore[union-attr]
    assert shown in " ".join(text.split())


def test_version_and_exit_codes_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"forsaken {version('forsaken')}"
    text = build_parser().format_help()
    for code in ("130", "  4 ", "  3 ", "  2 ", "  1 "):
        assert code in text


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
    assert down.returncode == 1 and "cannot reach" in down.stderr
    assert "connection refused" in down.stderr  # named, not a bare UNAVAILABLE


@pytest.mark.slow
def test_status_shows_last_contact_current_samples_and_full_ids(tmp_path: Path) -> None:
    import time

    from forsaken.client.transport import FleetConnection
    from forsaken.common.identity import NodeIdentity
    from tests.cluster import Cluster

    c = Cluster(tmp_path, rounds=0, **{"min-clients": 5, "poll-timeout-s": 1})
    conn = None
    try:
        c.start_server()
        conn = FleetConnection(c.address, NodeIdentity.generate())
        node = conn.join(40, "digits", (1, 8, 8), 10)
        joined_ms = time.time() * 1000
        time.sleep(2.5)
        conn.pull(7)  # the node now declares 7 samples (say, after forgetting most of them)
        (client,) = c.status()["clients"]
        assert client["node_id"] == node
        assert client["num_samples"] == 7  # not the 40 of its Join
        assert client["last_seen_unix_ms"] >= joined_ms + 2000  # its poll, not its Join
        assert client["quarantine"] == "" and client["revoked"] is False
        assert client["recent_faults"] == 0

        def status(*flags: str) -> str:
            out = subprocess.run(
                forsaken_command("status", "--server", c.address, *flags),
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "COLUMNS": "80"},
            )
            assert out.returncode == 0, out.stderr
            return out.stdout

        assert node in status("--wide")
        short = status()
        assert node not in short and node[:12] + "…" in short and "--wide" in short
        assert json.loads(status("--json"))["clients"][0]["node_id"] == node
    finally:
        if conn is not None:
            conn.close()
        c.stop()


def test_demo_help_and_readme_explain_every_column() -> None:
    from forsaken.cli.demo import COLUMNS

    parser = next(p for name, p in _parsers(build_parser()) if name == "forsaken demo")
    text = parser.format_help()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### The demo's output", 1)[1].split("\n## ", 1)[0]
    assert COLUMNS.splitlines()[3] in text  # the epilog is shown as written
    for column in ("phase", "test_acc", "asr", "mia_auc", "participants", "duration_s"):
        assert f"\n  {column}" in text and column in section, column
    for column in ("KL(R‖·) forget", "FR", "backdoor ASR", "MIA AUC", "O", "U", "R"):
        assert column in text and column in section, column
