"""Domain errors. No transport imports here: the RPC edge maps each class to a status code."""

from __future__ import annotations


class ForsakenError(Exception):
    """Base class for every error the system raises on purpose."""


class InvalidPayload(ForsakenError):
    """A payload's shape, dtype, length, digest or values are wrong."""


class MemberFault(InvalidPayload):
    """A member sent something only a faulty or malicious node sends (for example a sample
    count that is not the one it declared); the server can name it and keep it out."""

    def __init__(self, node_id: str, reason: str) -> None:
        super().__init__(reason)
        self.node_id = node_id
        self.reason = reason


class PayloadTooLarge(ForsakenError):
    """A payload or stream is over a configured limit."""


class UnknownEntity(ForsakenError):
    """A round, task, node, model or request that the server does not know."""


class StaleRequest(ForsakenError):
    """A request for a round or task that is no longer open."""


class DuplicateRequest(ForsakenError):
    """The same idempotent request was already applied (not always an error to the caller)."""


class RateLimited(PayloadTooLarge):
    """A per-node or global limit was hit; the message says which and when to retry."""


class NotAuthenticated(ForsakenError):
    """No valid credential accompanied the request."""


class PermissionDenied(ForsakenError):
    """The caller is known but may not do this."""


class WrongStage(ForsakenError):
    """A protocol message arrived in a stage that does not accept it; state is unchanged."""


class DeadlineExceeded(ForsakenError):
    """A call or stream ran past a server-side deadline (for example it stopped sending)."""


class ProtocolAborted(ForsakenError):
    """A protocol run was aborted; the reason is in the message."""


class Unavailable(ForsakenError):
    """The service is shutting down or not ready."""


class ConfigError(ForsakenError):
    """A configuration value is missing or invalid."""


class TaskFailed(ConfigError):
    """A task's own code (its model, data, training or evaluation) raised; the message names the
    task, the step and the exception."""


class ModelMismatch(ForsakenError):
    """A node's model is not the federation's: the message names the first differing tensor."""


class CorruptState(ForsakenError):
    """Something on disk failed its integrity check."""


class CertificateError(ConfigError):
    """TLS certificates that cannot work: wrong CA, expired, for another node or name."""
