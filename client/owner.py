"""The Owner API a client daemon serves to its data owner (loopback by default)."""

from __future__ import annotations

import grpc

from forsaken.client.daemon import ClientDaemon
from forsaken.common.rpc_errors import rpc_method
from forsaken.v1 import owner_pb2, owner_pb2_grpc


class OwnerServicer(owner_pb2_grpc.OwnerServicer):
    def __init__(self, daemon: ClientDaemon, server_address: str) -> None:
        self.daemon = daemon
        self.server_address = server_address

    @rpc_method
    def Status(
        self, request: owner_pb2.OwnerStatusRequest, context: grpc.ServicerContext
    ) -> owner_pb2.OwnerStatus:
        d = self.daemon
        state = d.state
        return owner_pb2.OwnerStatus(
            node_id=d.conn.identity.node_id,
            server=self.server_address,
            connected=d.connected,
            num_samples=d.num_samples(),
            held_out_samples=len(d.data.y_held_out),
            excluded_samples=len(state.excluded_ids),
            rounds_participated=state.rounds_participated,
            last_round=state.last_round,
        )

    @rpc_method
    def Forget(
        self, request: owner_pb2.OwnerForgetRequest, context: grpc.ServicerContext
    ) -> owner_pb2.OwnerForgetReply:
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "forgetting is not available in this release yet"
        )
