"""Session tokens: a node proves its identity once (signed Join), then presents a token."""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass

from forsaken.common.errors import NotAuthenticated


@dataclass(frozen=True, slots=True)
class Session:
    node_id: str
    token: bytes
    join_request_id: str


class SessionTable:
    """In-memory on purpose: after a restart nodes re-join, which re-verifies their keys."""

    def __init__(self) -> None:
        self._by_token: dict[bytes, Session] = {}
        self._by_node: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, node_id: str, join_request_id: str) -> Session:
        """A token for the node; the same Join request id gets the same token back."""
        with self._lock:
            current = self._by_node.get(node_id)
            if current is not None and current.join_request_id == join_request_id:
                return current
            if current is not None:
                del self._by_token[current.token]
            session = Session(node_id, secrets.token_bytes(32), join_request_id)
            self._by_token[session.token] = session
            self._by_node[node_id] = session
            return session

    def authenticate(self, token: bytes | None) -> str:
        if not token:
            raise NotAuthenticated("missing session token; call Join first")
        with self._lock:
            session = self._by_token.get(token)
        if session is None or not hmac.compare_digest(session.token, token):
            raise NotAuthenticated("unknown or expired session token; call Join again")
        return session.node_id

    def close(self, node_id: str) -> None:
        with self._lock:
            session = self._by_node.pop(node_id, None)
            if session is not None:
                self._by_token.pop(session.token, None)
