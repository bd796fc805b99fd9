"""`forsaken status`: an operator's view of a server through its Admin API."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from forsaken.common import tls, wire_forget
from forsaken.common.diagnosis import OPERATOR_FLAGS, diagnose
from forsaken.common.exitcodes import ExitCode
from forsaken.v1 import admin_pb2, admin_pb2_grpc


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", default="127.0.0.1:7070", help="server address host:port (default: %(default)s)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=20,
        help="how many recent rounds to list (0: all; default: %(default)s)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document instead of tables (always with full node ids)",
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help="full node ids (as `forsaken admin` takes them) and every column, however wide",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="RPC deadline in seconds (default: %(default)s)"
    )
    add_operator_arguments(p)


def add_operator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="operator credential folder ({cert,key,ca}.pem, made by `forsaken certs init "
        "--operator NAME`); required when the server speaks mutual TLS",
    )
    p.add_argument(
        "--tls-server-name",
        default=None,
        help="check the server certificate against this name instead of --server's host",
    )


def admin_channel(
    server: str, tls_dir: Path | None = None, server_name: str | None = None
) -> grpc.Channel:
    """A channel to the Admin API: mutual TLS with an operator credential, or plaintext."""
    if tls_dir is None:
        return grpc.insecure_channel(server)
    return tls.secure_channel(server, tls.channel_credentials(tls_dir), server_name=server_name)


def fetch_status(
    server: str,
    rounds: int = 0,
    timeout: float = 10.0,
    tls_dir: Path | None = None,
    server_name: str | None = None,
) -> dict[str, Any]:
    """Everything the Admin API reports, as plain dicts."""
    with admin_channel(server, tls_dir, server_name) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        status = stub.GetStatus(admin_pb2.StatusRequest(), timeout=timeout)
        listed = stub.ListRounds(admin_pb2.ListRoundsRequest(limit=rounds), timeout=timeout)
        clients = stub.ListClients(admin_pb2.ListClientsRequest(), timeout=timeout)
        forgets = stub.ListForgetRequests(admin_pb2.ListForgetRequestsRequest(), timeout=timeout)

    return {
        **_status_dict(status),
        "rounds": [_round_dict(r) for r in listed.rounds],
        "clients": [_fields(c) for c in clients.clients],
        "forget_requests": [wire_forget.status_from_proto(f).as_dict() for f in forgets.requests],
    }


def _fields(msg: Any) -> dict[str, Any]:
    """Plain Python values for every field, keeping ints as ints (proto JSON makes them str)."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if getattr(field, "is_repeated", False):
            value = list(value)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, float) and math.isnan(value):
            value = None
        out[field.name] = value
    return out


def _status_dict(msg: admin_pb2.ServerStatus) -> dict[str, Any]:
    out = _fields(msg)
    out["model"] = _fields(msg.model)
    return out


def _round_dict(msg: admin_pb2.RoundInfo) -> dict[str, Any]:
    out = _fields(msg)
    out["metrics"] = {m.name: m.value for m in msg.metrics}
    return out


def explain_rpc_error(
    exc: grpc.RpcError, server: str, tls_dir: Path | None, server_name: str | None
) -> tuple[str, int]:
    """What went wrong in plain words, and the exit code: a failure to connect is probed for
    its cause (wrong CA, expired or mismatched certificate, plaintext against TLS...)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        files = tls.TlsFiles.in_dir(tls_dir) if tls_dir is not None else None
        found = diagnose(server, files, server_name=server_name, flags=OPERATOR_FLAGS)
        if found is not None:
            exit_code = ExitCode.CERTIFICATE if found.certificate else ExitCode.FAILED
            return f"cannot reach {server}: {found}", exit_code
        return f"cannot reach {server}: {code.name}: {details}", ExitCode.FAILED
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{server} did not answer in time (--timeout): {details}", ExitCode.FAILED
    return f"{server} answered {code.name}: {details}", ExitCode.FAILED


def run_status(args: argparse.Namespace) -> int:
    try:
        data = fetch_status(
            args.server, args.rounds, args.timeout, args.tls_dir, args.tls_server_name
        )
    except grpc.RpcError as exc:
        message, code = explain_rpc_error(exc, args.server, args.tls_dir, args.tls_server_name)
        print(f"forsaken status: {message}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.wide:
        # Never truncate: a full node id is what `forsaken admin revoke` needs.
        render(data, Console(width=max(Console().width, 240)), wide=True)
    else:
        render(data, Console())
    return 0


SHORT_ID = 12


def _node(node_id: str, wide: bool) -> str:
    return node_id if wide or len(node_id) <= SHORT_ID else node_id[:SHORT_ID] + "…"


def _ago(unix_ms: int, now_s: float) -> str:
    if unix_ms <= 0:
        return "never"
    age = max(0.0, now_s - unix_ms / 1000)
    clock = time.strftime("%H:%M:%S", time.localtime(unix_ms / 1000))
    if age < 120:
        return f"{age:.0f}s ago ({clock})"
    if age < 7200:
        return f"{age / 60:.0f}min ago ({clock})"
    return f"{age / 3600:.1f}h ago ({clock})"


def _standing(c: dict[str, Any]) -> str:
    if c.get("revoked"):
        return "revoked"
    if c.get("quarantine"):
        return f"quarantined: {c['quarantine']}"
    return "ok"


def render(data: dict[str, Any], console: Console, wide: bool = False) -> None:
    acc = data["last_test_acc"]
    stage = f" secagg_stage={data['secagg_stage']}" if data.get("secagg_stage") else ""
    console.print(
        f"[bold]server[/bold] phase={data['phase']} round={data['current_round']} "
        f"completed={data['completed_rounds']}/{data['target_rounds'] or '∞'} "
        f"clients={data['connected_clients']} secure_aggregation={data['secure_aggregation']}"
        f"{stage} acc={'n/a' if acc is None else f'{acc:.4f}'} model={data['model_sha256'][:12]}"
    )
    if data.get("last_abort_reason"):
        console.print(f"[yellow]last abort:[/yellow] {data['last_abort_reason']}")
    rounds = Table(title="rounds")
    for col in ("round", "attempt", "status", "participants", "test_acc", "duration_s", "reason"):
        rounds.add_column(col)
    for r in data["rounds"]:
        rounds.add_row(
            str(r["round"]),
            str(r["attempt"]),
            r["status"],
            str(len(r["participants"])),
            "" if r["test_acc"] is None else f"{r['test_acc']:.4f}",
            f"{r['duration_s']:.2f}",
            r["reason"],
        )
    console.print(rounds)
    now_s = time.time()
    clients = Table(
        title="clients" if wide else "clients (node ids shortened: --wide or --json for full)",
        caption="samples: the count declared at the last poll; last_seen: the last poll or Join",
    )
    clients.add_column("node_id", no_wrap=True)
    for col in ("connected", "samples", "rounds", "first_round", "last_seen", "standing"):
        clients.add_column(col)
    clients.add_column("faults")
    if wide:
        clients.add_column("last_fault")
    for c in data["clients"]:
        row = [
            _node(c["node_id"], wide),
            str(c["connected"]),
            str(c["num_samples"]),
            str(c["rounds_contributed"]),
            str(c["first_round"]),
            _ago(int(c["last_seen_unix_ms"]), now_s),
            _standing(c),
            str(c.get("recent_faults", 0)),
        ]
        if wide:
            row.append(c.get("last_fault", ""))
        clients.add_row(*row)
    console.print(clients)
    forgets = Table(title="forget requests")
    forgets.add_column("forget_id", no_wrap=True)
    forgets.add_column("node_id", no_wrap=True)
    for col in ("method", "state", "reason"):
        forgets.add_column(col)
    for f in data["forget_requests"]:
        forgets.add_row(
            f["forget_id"], _node(f["node_id"], wide), f["method"], f["state"], f["reason"]
        )
    console.print(forgets)
