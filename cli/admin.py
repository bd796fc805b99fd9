"""`forsaken admin ...`: operator actions that change a server's state."""

from __future__ import annotations

import argparse

import grpc

from forsaken.status import add_operator_arguments, admin_channel
from forsaken.v1 import admin_pb2, admin_pb2_grpc


def add_admin_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="admin", required=True, metavar="ACTION")
    r = sub.add_parser(
        "revoke",
        help="stop a node from joining later rounds",
        description="Revoke a node: its session ends at once, and it can never join again. "
        "Its past contributions stay in the ledger.",
    )
    r.add_argument("node_id", help="the node id to revoke (see `forsaken status`)")
    r.add_argument("--reason", default="", help="why, recorded in the server log")
    r.add_argument(
        "--server", default="127.0.0.1:7070", help="server address (default: %(default)s)"
    )
    r.add_argument(
        "--timeout", type=float, default=10.0, help="RPC deadline (default: %(default)s)"
    )
    add_operator_arguments(r)


def run_admin(args: argparse.Namespace) -> int:
    with admin_channel(args.server, args.tls_dir, args.tls_server_name) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            reply = stub.RevokeClient(
                admin_pb2.RevokeClientRequest(node_id=args.node_id, reason=args.reason),
                timeout=args.timeout,
            )
        except grpc.RpcError as exc:
            print(f"forsaken admin revoke: {exc.code().name}: {exc.details()}")
            return 1
    state = "was already revoked" if reply.already_revoked else "is now revoked"
    print(f"node {args.node_id} {state}")
    return 0
