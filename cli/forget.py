"""`forsaken forget`: a data owner asks its client daemon to take its data back."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from rich.console import Console
from rich.table import Table

from forsaken.common import wire_forget
from forsaken.common.diagnosis import Flags, Problem, diagnose
from forsaken.common.errors import InvalidPayload
from forsaken.common.exitcodes import ExitCode
from forsaken.common.forget_methods import METHOD_NAMES, ForgetMethod
from forsaken.common.forget_states import REQUEST_STATES, ForgetState
from forsaken.common.forget_status import ForgetStatus
from forsaken.v1 import owner_pb2, owner_pb2_grpc

# The Owner API is plaintext on loopback; the advice names --client, not TLS flags.
_OWNER_FLAGS = Flags(target="--client")
T = TypeVar("T")


def add_forget_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--client",
        required=True,
        help="the client daemon's Owner API address (host:port), or its --state-dir (the "
        "address is read from STATE_DIR/owner_address)",
    )
    p.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="file of sample ids to forget: a JSON list or one id per line (default: all of "
        "this node's data)",
    )
    p.add_argument(
        "--method",
        default=None,
        choices=METHOD_NAMES,
        help="unlearning method (default: the server's --forget-method, forsaken unless its "
        "operator chose another); see docs/unlearning.md",
    )
    p.add_argument("--request-id", default="", help="idempotency key (default: a fresh one)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="show progress until the request completes or fails, then the receipt",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="with --wait, give up after this many seconds (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the final request as JSON")


def owner_address(client: str) -> str:
    path = Path(client)
    if path.is_dir():
        file = path / "owner_address"
        if not file.exists():
            raise SystemExit(f"forsaken forget: {file} does not exist; is the client running?")
        return file.read_text().strip()
    return client


def explain_unreachable(exc: grpc.RpcError, address: str) -> str:
    """Why the client daemon's Owner API at `address` cannot be reached, in plain words."""
    found = diagnose(address, None, flags=_OWNER_FLAGS)
    if found is None:
        return f"cannot reach the client daemon at {address}: {exc.details()}"
    if found.problem == Problem.PLAINTEXT_TO_TLS:
        return (
            f"{address} speaks TLS, so it is not a client daemon's Owner API (plaintext, on "
            "loopback) but probably the server: give --client the client's --owner-listen "
            "address or its --state-dir"
        )
    if found.problem == Problem.REFUSED:
        return (
            f"no client daemon listens on {address} (connection refused): is it running? "
            "--client can also be its --state-dir, which holds the address it listens on"
        )
    return f"cannot reach the client daemon at {address}: {found}"


def read_sample_ids(path: Path) -> tuple[int, ...]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"forsaken forget: cannot read {path}: {exc}") from None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.split()
        ids = tuple(int(v) for v in values)
    except (ValueError, TypeError):
        raise SystemExit(f"forsaken forget: {path} must hold integer sample ids") from None
    if not ids or any(i < 0 for i in ids):
        raise SystemExit(f"forsaken forget: {path} holds no ids, or a negative one")
    return ids


def run_forget(args: argparse.Namespace) -> int:
    console = Console()
    ids = read_sample_ids(args.samples) if args.samples else ()
    method = ForgetMethod(args.method) if args.method else None
    request_id = args.request_id or uuid.uuid4().hex
    address = owner_address(args.client)
    with grpc.insecure_channel(address) as channel:
        stub = owner_pb2_grpc.OwnerStub(channel)
        try:
            reply = stub.Forget(
                owner_pb2.OwnerForgetRequest(
                    request_id=request_id,
                    sample_ids=list(ids),
                    forget_method=wire_forget.method_to_proto(method),
                ),
                timeout=60,
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                console.print(f"[red]forget refused: {exc.code().name}: {exc.details()}[/red]")
                return ExitCode.FAILED
            console.print(f"[red]forsaken forget: {explain_unreachable(exc, address)}[/red]")
            return ExitCode.FAILED
        console.print(
            f"request {request_id}: {len(ids) or 'all'} samples excluded from training now; "
            f"server id {reply.forget_id or '(pending)'}, "
            f"state {_decoded(lambda: wire_forget.state_from_proto(reply.forget_state))}"
        )
        if not args.wait:
            return 0
        try:
            info = _wait(stub, request_id, reply.forget_id, args.timeout, console)
        except grpc.RpcError as exc:
            # The daemon went away while we waited (it stopped, or the federation finished);
            # the request itself is on record and goes on without this command.
            console.print(
                f"[red]forsaken forget: lost the client daemon at {address} while waiting "
                f"({exc.code().name}): {explain_unreachable(exc, address)}[/red]"
            )
            console.print(
                f"request {request_id} is on record: once the daemon runs again, the same "
                f"command with --request-id {request_id} --wait picks it up"
            )
            return ExitCode.FAILED
    if info is None:
        console.print("[red]timed out waiting for the request[/red]")
        return 1
    _show(info, console, args.json)
    return 0 if info.state is ForgetState.COMPLETED else 1


def _decoded(fn: Callable[[], T]) -> T:
    """What the daemon answered, or a clear exit when it sent what this version cannot read."""
    try:
        return fn()
    except InvalidPayload as exc:
        problem = f"the client daemon's answer is unreadable: {exc}"
        raise SystemExit(f"forsaken forget: {problem}") from None


def _requests(stub: owner_pb2_grpc.OwnerStub) -> list[ForgetStatus]:
    status = stub.Status(owner_pb2.OwnerStatusRequest(), timeout=30)
    return _decoded(lambda: [wire_forget.status_from_proto(f) for f in status.forget_requests])


def _find(stub: owner_pb2_grpc.OwnerStub, forget_id: str) -> ForgetStatus | None:
    return next((f for f in _requests(stub) if forget_id and f.forget_id == forget_id), None)


def _wait(
    stub: owner_pb2_grpc.OwnerStub,
    request_id: str,
    forget_id: str,
    timeout: float,
    console: Console,
) -> ForgetStatus | None:
    deadline = time.monotonic() + timeout
    shown = ""
    with console.status("waiting for the federation to forget") as spinner:
        while time.monotonic() < deadline:
            if not forget_id:
                forget_id = next((f.forget_id for f in _requests(stub) if f.forget_id), "")
            info = _find(stub, forget_id) if forget_id else None
            if info is not None:
                state = info.state
                if state != shown:
                    step = REQUEST_STATES.index(state) + 1 if state in REQUEST_STATES else 0
                    console.print(
                        f"  [{step}/{len(REQUEST_STATES)}] {state}"
                        + (f": {info.reason}" if info.reason else "")
                    )
                    shown = state
                    spinner.update(f"{state}…")
                if state.terminal:
                    return info
            time.sleep(1.0)
    return None


def _show(info: ForgetStatus, console: Console, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info.as_dict(), indent=2))
        return
    if info.state is not ForgetState.COMPLETED or info.receipt is None:
        console.print(f"[red]request {info.forget_id} failed: {info.reason}[/red]")
        return
    receipt = info.receipt.as_dict()
    table = Table(title=f"receipt {info.forget_id}")
    table.add_column("field")
    table.add_column("value")
    for key in (
        "method",
        "samples",
        "unlearning_rounds",
        "recovery_rounds",
        "stopped_by",
        "model_sha256_before",
        "model_sha256_after",
    ):
        table.add_row(key, str(receipt.get(key)))
    for key, value in sorted(info.receipt.evidence.as_dict().items()):
        table.add_row(f"evidence.{key}", f"{value:.4f}")
    console.print(table)
    console.print(f"[bold]verdict[/bold]: {info.receipt.verdict}")
