"""`forsaken status`: an operator's view of a server through its Admin API."""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from forsaken.v1 import admin_pb2, admin_pb2_grpc


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="127.0.0.1:7070", help="server address host:port (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=20, help="how many recent rounds to list (0: all; default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--timeout", type=float, default=10.0, help="RPC deadline in seconds (default: %(default)s)")


def fetch_status(server: str, rounds: int = 0, timeout: float = 10.0) -> dict[str, Any]:
    """Everything the Admin API reports, as plain dicts."""
    with grpc.insecure_channel(server) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        status = stub.GetStatus(admin_pb2.StatusRequest(), timeout=timeout)
        listed = stub.ListRounds(admin_pb2.ListRoundsRequest(limit=rounds), timeout=timeout)
        clients = stub.ListClients(admin_pb2.ListClientsRequest(), timeout=timeout)
        forgets = stub.ListForgetRequests(admin_pb2.ListForgetRequestsRequest(), timeout=timeout)

    def as_dict(msg: Any) -> dict[str, Any]:
        return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)

    out = as_dict(status)
    out["model_sha256"] = status.model_sha256.hex()
    out["last_test_acc"] = None if math.isnan(status.last_test_acc) else status.last_test_acc
    out["rounds"] = []
    for r in listed.rounds:
        row = as_dict(r)
        row["model_sha256"] = r.model_sha256.hex()
        row["test_acc"] = None if math.isnan(r.test_acc) else r.test_acc
        row["test_loss"] = None if math.isnan(r.test_loss) else r.test_loss
        out["rounds"].append(row)
    out["clients"] = [as_dict(c) for c in clients.clients]
    out["forget_requests"] = [as_dict(f) for f in forgets.requests]
    return out


def run_status(args: argparse.Namespace) -> int:
    try:
        data = fetch_status(args.server, args.rounds, args.timeout)
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
    console.print(
        f"[bold]server[/bold] phase={data['phase']} round={data['current_round']} "
        f"completed={data['completed_rounds']}/{data['target_rounds'] or '∞'} "
        f"clients={data['connected_clients']} secure_aggregation={data['secure_aggregation']} "
        f"acc={'n/a' if acc is None else f'{acc:.4f}'} model={data['model_sha256'][:12]}"
    )
    if data.get("last_abort_reason"):
        console.print(f"[yellow]last abort:[/yellow] {data['last_abort_reason']}")
    rounds = Table(title="rounds")
    for col in ("round", "attempt", "status", "participants", "test_acc", "duration_s", "reason"):
        rounds.add_column(col)
    for r in data["rounds"]:
        rounds.add_row(
            str(r["round"]), str(r["attempt"]), r["status"], str(len(r["participants"])),
            "" if r["test_acc"] is None else f"{r['test_acc']:.4f}", f"{r['duration_s']:.2f}",
            r["reason"],
        )
    console.print(rounds)
    clients = Table(title="clients")
    for col in ("node_id", "connected", "samples", "rounds", "first_round", "last_seen"):
        clients.add_column(col)
    for c in data["clients"]:
        seen = int(c["last_seen_unix_ms"]) / 1000
        clients.add_row(
            c["node_id"], str(c["connected"]), str(c["num_samples"]), str(c["rounds_contributed"]),
            str(c["first_round"]), time.strftime("%H:%M:%S", time.localtime(seen)),
        )
    console.print(clients)
    forgets = Table(title="forget requests")
    for col in ("forget_id", "node_id", "method", "state", "reason"):
        forgets.add_column(col)
    for f in data["forget_requests"]:
        forgets.add_row(f["forget_id"], f["node_id"], f["method"], f["state"], f["reason"])
    console.print(forgets)
