"""One table mapping domain errors to gRPC status codes, shared by every servicer edge."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from forsaken.common import errors

log = logging.getLogger(__name__)

STATUS_FOR: dict[type[errors.ForsakenError], grpc.StatusCode] = {
    errors.InvalidPayload: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UnknownEntity: grpc.StatusCode.NOT_FOUND,
    errors.StaleRequest: grpc.StatusCode.FAILED_PRECONDITION,
    errors.WrongStage: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ProtocolAborted: grpc.StatusCode.ABORTED,
    errors.DuplicateRequest: grpc.StatusCode.ALREADY_EXISTS,
    errors.NotAuthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.CorruptState: grpc.StatusCode.DATA_LOSS,
}


def status_for(exc: errors.ForsakenError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_FOR.get(cls)  # type: ignore[arg-type]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Any])


def rpc_method(fn: F) -> F:
    """Turn domain errors into a gRPC status with the error's message; log anything else."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except errors.ForsakenError as exc:
            code = status_for(exc)
            log.info("%s -> %s: %s", fn.__name__, code.name, exc)
            context.abort(code, str(exc) or type(exc).__name__)
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}; see server log"
            )

    return wrapper  # type: ignore[return-value]


def stream_method(fn: F) -> F:
    """Like `rpc_method`, for server-streaming methods (generators)."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from fn(self, request, context)
        except errors.ForsakenError as exc:
            context.abort(status_for(exc), str(exc) or type(exc).__name__)
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}; see server log"
            )

    return wrapper  # type: ignore[return-value]
