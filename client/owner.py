"""The Owner API a client daemon serves to its data owner (loopback by default)."""

from __future__ import annotations

import grpc

from forsaken.client.daemon import ClientDaemon
from forsaken.client.state import LocalForget
from forsaken.common import wire_forget
from forsaken.common.errors import ForsakenError, InvalidPayload
from forsaken.common.forget_status import ForgetStatus
from forsaken.common.rpc_errors import rpc_method
from forsaken.v1 import fleet_pb2, owner_pb2, owner_pb2_grpc


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
            forget_requests=[self._forget_info(f) for f in state.forgets],
        )

    def _forget_info(self, f: LocalForget) -> fleet_pb2.ForgetRequestInfo:
        """The server's view of a request when reachable, else what this node knows."""
        return wire_forget.status_to_proto(self._forget_status(f))

    def _forget_status(self, f: LocalForget) -> ForgetStatus:
        if f.forget_id and self.daemon.conn.token is not None:
            try:
                return self.daemon.conn.forget_status(f.forget_id)
            except ForsakenError:
                pass
        return ForgetStatus(
            forget_id=f.forget_id,
            node_id=self.daemon.conn.identity.node_id,
            method=f.method,
            state=f.state,
            num_samples=len(f.sample_ids),
        )

    @rpc_method
    def Forget(
        self, request: owner_pb2.OwnerForgetRequest, context: grpc.ServicerContext
    ) -> owner_pb2.OwnerForgetReply:
        if not request.request_id:
            raise InvalidPayload("request_id is required")
        # Refused here, before anything is stored.
        method = wire_forget.optional_method_from_proto(request.forget_method)
        record = self.daemon.request_forget(request.request_id, tuple(request.sample_ids), method)
        return owner_pb2.OwnerForgetReply(
            forget_id=record.forget_id, forget_state=wire_forget.state_to_proto(record.state)
        )
