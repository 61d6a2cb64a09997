"""Domain exceptions → gRPC status, configured per servicer with its own table of rules.

    GUARD = ErrorGuard(
        [StatusRule(NotFoundError, grpc.StatusCode.NOT_FOUND), ...],
        internal_message="internal error",
        logger=logger,
    )

    async def GetThing(self, request, context):
        async with GUARD(context):
            ...

The first rule whose exception type matches decides the code, the message the caller sees (the exception's
text unless the rule says otherwise) and any google.rpc error details (`bad_request(...)`); anything no rule
matches is logged with its traceback and answered INTERNAL with a message that reveals nothing. An abort the
handler raised itself passes through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


def bad_request(field: str, description: str) -> error_details_pb2.BadRequest:
    """The INVALID_ARGUMENT detail naming the offending request field."""
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]
    )


def _no_details(_error: Any) -> Sequence[Message]:
    return ()


@dataclass(frozen=True)
class StatusRule:
    """How exceptions of `error` reach the caller."""

    error: type[Exception] | tuple[type[Exception], ...]
    code: grpc.StatusCode
    # The caller-visible message: fixed text, or computed from the exception (default: its text).
    message: str | Callable[[Any], str] = str
    details: Callable[[Any], Sequence[Message]] = _no_details
    # Logged at ERROR with the exception's text, for failures an operator should see (not caller mistakes).
    log: str = ""
    # Awaited before answering (e.g. report NOT_SERVING while a backing store is down).
    on_error: Callable[[], Awaitable[None]] | None = None


class ErrorGuard:
    """Maps what a handler body raises to a gRPC status by a table of `StatusRule`s."""

    def __init__(self, rules: Sequence[StatusRule], *, internal_message: str, logger: logging.Logger) -> None:
        self._rules = tuple(rules)
        self._internal_message = internal_message
        self._logger = logger

    def __call__(self, context: grpc.aio.ServicerContext) -> _Guarded:
        return _Guarded(self, context)

    async def abort(self, context: grpc.aio.ServicerContext, error: Exception) -> None:
        """Ends the call with the status `error` maps to (raises grpc's abort exception)."""
        rule = next((rule for rule in self._rules if isinstance(error, rule.error)), None)
        if rule is None:
            self._logger.error("unhandled error; answering INTERNAL", exc_info=error)
            await _abort(context, grpc.StatusCode.INTERNAL, self._internal_message, ())
            return
        if rule.log:
            self._logger.error("%s: %s", rule.log, error)
        if rule.on_error is not None:
            await rule.on_error()
        message = rule.message if isinstance(rule.message, str) else rule.message(error)
        await _abort(context, rule.code, message, rule.details(error))


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, details: Sequence[Message]
) -> None:
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    await context.abort_with_status(rpc_status.to_status(status))


class _Guarded:
    """`async with guard(context):` around a handler body (or the loop of a streaming handler)."""

    def __init__(self, guard: ErrorGuard, context: grpc.aio.ServicerContext) -> None:
        self._guard = guard
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Cancellation and generator exits are BaseExceptions and pass; so does an abort already under way.
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            await self._guard.abort(self._context, error)
