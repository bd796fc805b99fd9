"""`forsaken status`: an operator's view of a server through its Admin API."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

from forsaken.common import tls
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
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
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
        "forget_requests": [_fields(f) for f in forgets.requests],
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


def run_status(args: argparse.Namespace) -> int:
    try:
        data = fetch_status(
            args.server, args.rounds, args.timeout, args.tls_dir, args.tls_server_name
        )
    except grpc.RpcError as exc:
        print(f"forsaken status: cannot reach {args.server}: {exc.code().name}: {exc.details()}")
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    render(data, Console())
    return 0


def render(data: dict[str, Any], console: Console) -> None:
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
    clients = Table(title="clients")
    for col in ("node_id", "connected", "samples", "rounds", "first_round", "last_seen"):
        clients.add_column(col)
    for c in data["clients"]:
        seen = int(c["last_seen_unix_ms"]) / 1000
        clients.add_row(
            c["node_id"],
            str(c["connected"]),
            str(c["num_samples"]),
            str(c["rounds_contributed"]),
            str(c["first_round"]),
            time.strftime("%H:%M:%S", time.localtime(seen)),
        )
    console.print(clients)
    forgets = Table(title="forget requests")
    for col in ("forget_id", "node_id", "method", "state", "reason"):
        forgets.add_column(col)
    for f in data["forget_requests"]:
        forgets.add_row(f["forget_id"], f["node_id"], f["method"], f["state"], f["reason"])
    console.print(forgets)
