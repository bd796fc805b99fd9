"""`forsaken admin ...`: operator actions that change a server's state."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable

import grpc

from forsaken.cli.status import add_operator_arguments, admin_channel, explain_rpc_error
from forsaken.common import wire_forget
from forsaken.common.exitcodes import ExitCode
from forsaken.common.forget_methods import SERVER_METHODS, ForgetMethod
from forsaken.common.forget_states import ForgetState
from forsaken.common.forget_status import ForgetStatus
from forsaken.v1 import admin_pb2, admin_pb2_grpc


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", default="127.0.0.1:7070", help="server address (default: %(default)s)"
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="RPC deadline in seconds (default: %(default)s)"
    )
    add_operator_arguments(p)


def add_admin_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="admin", required=True, metavar="ACTION")
    r = sub.add_parser(
        "revoke",
        help="stop a node from joining later rounds",
        description="Revoke a node: its session ends at once, and it can never join again. "
        "Its past contributions stay in the model until you also run `forsaken admin forget`.",
    )
    r.add_argument("node_id", help="the node id to revoke (see `forsaken status`)")
    r.add_argument("--reason", default="", help="why, recorded in the server log")
    _common(r)
    r.set_defaults(action=_revoke)

    q = sub.add_parser(
        "release",
        help="lift the quarantine of a node",
        description="The server quarantines a node after repeated attributable faults (for "
        "example masked inputs whose sample count is not the one it declared): it is never "
        "sampled and every call it makes is refused. Release it once its operator has fixed "
        "it; its fault count starts again from zero.",
    )
    q.add_argument("node_id", help="the quarantined node (see `forsaken status`)")
    _common(q)
    q.set_defaults(action=_release)

    f = sub.add_parser(
        "forget",
        help="forget all data of a revoked node",
        description="A revoked node can no longer ask to be forgotten, so an operator asks "
        "for it. Only methods the server runs alone apply: retrain (exact: roll back to the "
        "checkpoint before the node's first contribution and retrain without it) or finetune "
        "(the node just stops contributing, which proves nothing by itself). The request is "
        "recorded in the ledger like any other and ends with a receipt made by the server.",
    )
    f.add_argument("node_id", help="the revoked node to forget (see `forsaken status`)")
    f.add_argument(
        "--method",
        choices=tuple(m.value for m in SERVER_METHODS),
        default=ForgetMethod.RETRAIN.value,
        help="how to forget it (default: %(default)s)",
    )
    f.add_argument("--reason", default="", help="why, recorded with the request")
    f.add_argument(
        "--request-id",
        default="",
        help="idempotency key: the same id again returns the same request (default: random)",
    )
    f.add_argument("--wait", action="store_true", help="wait for the request to end")
    f.add_argument(
        "--wait-timeout",
        type=float,
        default=1800.0,
        help="with --wait, give up after this many seconds (default: %(default)s)",
    )
    f.add_argument("--json", action="store_true", help="print the request as JSON")
    _common(f)
    f.set_defaults(action=_forget)


def run_admin(args: argparse.Namespace) -> int:
    action: Callable[[admin_pb2_grpc.AdminStub, argparse.Namespace], int] = args.action
    with admin_channel(args.server, args.tls_dir, args.tls_server_name) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            return action(stub, args)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                # The server answered: it refused or failed the request, and says why.
                print(f"forsaken admin {args.admin}: {exc.code().name}: {exc.details()}")
                return ExitCode.FAILED
            message, code = explain_rpc_error(exc, args.server, args.tls_dir, args.tls_server_name)
            print(f"forsaken admin {args.admin}: {message}", file=sys.stderr)
            return code


def _revoke(stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace) -> int:
    reply = stub.RevokeClient(
        admin_pb2.RevokeClientRequest(node_id=args.node_id, reason=args.reason),
        timeout=args.timeout,
    )
    state = "was already revoked" if reply.already_revoked else "is now revoked"
    print(f"node {args.node_id} {state}")
    return 0


def _release(stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace) -> int:
    reply = stub.ReleaseClient(
        admin_pb2.ReleaseClientRequest(node_id=args.node_id), timeout=args.timeout
    )
    state = "is released from quarantine" if reply.was_quarantined else "was not quarantined"
    print(f"node {args.node_id} {state}")
    return 0


def _forget(stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace) -> int:
    request = admin_pb2.ForgetClientRequest(
        node_id=args.node_id,
        request_id=args.request_id or uuid.uuid4().hex,
        forget_method=wire_forget.method_to_proto(ForgetMethod(args.method)),
        reason=args.reason,
    )
    info = wire_forget.status_from_proto(stub.ForgetClient(request, timeout=args.timeout))
    deadline = time.monotonic() + args.wait_timeout
    while args.wait and not info.state.terminal and time.monotonic() < deadline:
        time.sleep(1.0)
        info = _find(stub, info.forget_id, args.timeout) or info
    if args.json:
        print(json.dumps(info.as_dict(), indent=2, sort_keys=True))
    else:
        print(f"forget {info.forget_id} of node {info.node_id} ({info.method}): {info.state}")
        if info.reason:
            print(f"  reason: {info.reason}")
        if info.receipt is not None:
            print(f"  receipt: {info.receipt.reference}")
    if args.wait and not info.state.terminal:
        print(f"forsaken admin forget: still {info.state} after {args.wait_timeout:g}s")
        return 1
    return 0 if info.state is not ForgetState.FAILED else 1


def _find(stub: admin_pb2_grpc.AdminStub, forget_id: str, timeout: float) -> ForgetStatus | None:
    listed = stub.ListForgetRequests(admin_pb2.ListForgetRequestsRequest(), timeout=timeout)
    found = (f for f in listed.requests if f.forget_id == forget_id)
    return next((wire_forget.status_from_proto(f) for f in found), None)
