"""`forsaken status`: an operator's view of a server through its Admin API."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import grpc

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
