"""`forsaken forget --wait` when the client daemon goes away while it waits: a clear message
and exit status 1, not a traceback (seen in the compose cluster when the federation finished
right after the request)."""

from __future__ import annotations

import argparse
import threading
from concurrent import futures

import grpc
import pytest

from forsaken.cli.forget import run_forget
from forsaken.v1 import fleet_pb2, owner_pb2, owner_pb2_grpc


class VanishingOwner(owner_pb2_grpc.OwnerServicer):
    """Accepts the request, then stops its server at the first status poll, as a daemon
    that exits does."""

    def __init__(self) -> None:
        self.server: grpc.Server | None = None

    def Forget(self, request, context):  # type: ignore[no-untyped-def]
        state = fleet_pb2.FORGET_STATE_REQUESTED
        return owner_pb2.OwnerForgetReply(forget_id="f" * 32, forget_state=state)

    def Status(self, request, context):  # type: ignore[no-untyped-def]
        assert self.server is not None
        threading.Thread(target=lambda: self.server.stop(0)).start()  # type: ignore[union-attr]
        context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")


def test_wait_reports_a_lost_daemon_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    owner = VanishingOwner()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    owner_pb2_grpc.add_OwnerServicer_to_server(owner, server)
    port = server.add_insecure_port("127.0.0.1:0")
    owner.server = server
    server.start()
    try:
        args = argparse.Namespace(
            client=f"127.0.0.1:{port}",
            samples=None,
            method="",
            request_id="req-1",
            wait=True,
            timeout=30.0,
            json=False,
        )
        assert run_forget(args) == 1
    finally:
        server.stop(0)
    out = capsys.readouterr().out
    assert "lost the client daemon" in out and "UNAVAILABLE" in out
    assert "--request-id req-1 --wait" in out
