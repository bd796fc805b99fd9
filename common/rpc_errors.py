"""One table mapping domain errors to gRPC status codes, shared by every servicer edge."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

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
    errors.ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ProtocolAborted: grpc.StatusCode.ABORTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.DuplicateRequest: grpc.StatusCode.ALREADY_EXISTS,
    errors.NotAuthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.CorruptState: grpc.StatusCode.DATA_LOSS,
}


def status_for(exc: errors.ForsakenError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = STATUS_FOR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


S = TypeVar("S")  # the servicer
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _aborted_already(context: grpc.ServicerContext) -> bool:
    """`context.abort` works by raising; its exception must pass through untouched."""
    code = getattr(context, "code", None)
    return callable(code) and code() not in (None, grpc.StatusCode.OK)


def _abort_for(exc: BaseException, name: str, context: grpc.ServicerContext) -> NoReturn:
    if isinstance(exc, errors.ForsakenError):
        code = status_for(exc)
        log.info("%s -> %s: %s", name, code.name, exc)
        context.abort(code, str(exc) or type(exc).__name__)
    if _aborted_already(context):
        raise exc
    log.exception("unexpected error in %s", name, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {name}; see server log")


def rpc_method(
    fn: Callable[[S, Req, grpc.ServicerContext], Resp],
) -> Callable[[S, Req, grpc.ServicerContext], Resp]:
    """Turn domain errors into a gRPC status with the error's message; log anything else."""

    @functools.wraps(fn)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            return fn(self, request, context)
        except Exception as exc:
            _abort_for(exc, fn.__name__, context)

    return wrapper


def stream_method(
    fn: Callable[[S, Req, grpc.ServicerContext], Iterator[Resp]],
) -> Callable[[S, Req, grpc.ServicerContext], Iterator[Resp]]:
    """Like `rpc_method`, for server-streaming methods (generators)."""

    @functools.wraps(fn)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        try:
            yield from fn(self, request, context)
        except Exception as exc:
            _abort_for(exc, fn.__name__, context)

    return wrapper


class _Undecodable:
    """Stands in for a request that is not a valid protobuf message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError and friends
            return _Undecodable(exc)

    return decode


def _reject(context: grpc.ServicerContext, bad: _Undecodable) -> None:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid message: {bad.error}")


class DecodeGuard(grpc.ServerInterceptor):
    """Answers an undecodable request with INVALID_ARGUMENT and a reason.

    gRPC's own handling of a failed deserialization is INTERNAL "Exception deserializing
    request!" with a traceback in the log; a malformed message is the caller's fault.
    """

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        decode = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None or handler.unary_stream is not None:
            unary = handler.unary_unary or handler.unary_stream
            streaming = handler.unary_stream is not None

            def guarded_unary(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    _reject(context, request)
                return unary(request, context)

            def guarded_stream(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    _reject(context, request)
                yield from unary(request, context)

            if streaming:
                return handler._replace(request_deserializer=decode, unary_stream=guarded_stream)
            return handler._replace(request_deserializer=decode, unary_unary=guarded_unary)
        inner = handler.stream_unary or handler.stream_stream

        def checked(requests: Any) -> Any:
            for request in requests:
                if isinstance(request, _Undecodable):
                    raise errors.InvalidPayload(f"stream message is not valid: {request.error}")
                yield request

        def guarded_client_stream(requests: Any, context: grpc.ServicerContext) -> Any:
            return inner(checked(requests), context)

        if handler.stream_unary is not None:
            return handler._replace(request_deserializer=decode, stream_unary=guarded_client_stream)
        return handler._replace(request_deserializer=decode, stream_stream=guarded_client_stream)
