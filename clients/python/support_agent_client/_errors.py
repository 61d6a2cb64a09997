"""The exception tree: one class per gRPC status code a caller handles differently, all under AgentError."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field, from the server's `google.rpc.BadRequest` detail."""

    field: str
    description: str


class AgentError(Exception):
    """Base of every error the client raises for a failed RPC.

    `code` is the gRPC status code the server (or the channel) returned, `details` its message.
    `retryable` says whether the same call, with the same turn id, may succeed if tried again later.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, details: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN) -> None:
        super().__init__(details)
        self.details = details
        self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}" if self.details else self.code.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, details={self.details!r})"


class InvalidRequest(AgentError):  # noqa: N818 (names from the public API)
    """INVALID_ARGUMENT: a request field was rejected; `field_violations` names it (e.g. `conversation_id`)."""

    def __init__(
        self,
        details: str,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(details, code)
        self.field_violations = field_violations

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(violation.field for violation in self.field_violations)


class ConversationNotFound(AgentError):  # noqa: N818 (names from the public API)
    """NOT_FOUND: no such conversation."""


class PermissionDenied(AgentError):  # noqa: N818 (names from the public API)
    """PERMISSION_DENIED: the conversation belongs to another customer."""


class Unauthenticated(AgentError):  # noqa: N818 (names from the public API)
    """UNAUTHENTICATED: missing or wrong service token (`auth_token=`)."""


class ConversationBusy(AgentError):  # noqa: N818 (names from the public API)
    """ABORTED: another turn of this conversation is in flight; retry once it has finished."""

    retryable = True


class Overloaded(AgentError):  # noqa: N818 (names from the public API)
    """RESOURCE_EXHAUSTED: the agent is shedding load (or a message was too large); back off and retry."""

    retryable = True


class Unavailable(AgentError):  # noqa: N818 (names from the public API)
    """UNAVAILABLE: the agent could not be reached (after the client's one automatic retry)."""

    retryable = True


class DeadlineExceeded(AgentError):  # noqa: N818 (names from the public API)
    """DEADLINE_EXCEEDED: the call's timeout passed before the turn finished."""

    retryable = True


class ActionNotPending(AgentError):  # noqa: N818 (names from the public API)
    """FAILED_PRECONDITION: confirm_action / decline_action on an action that was already run, declined,
    replaced by a newer proposal or expired (NOT_FOUND, `ConversationNotFound`, is an action that is not in
    the customer's conversation)."""


_BY_CODE: dict[grpc.StatusCode, type[AgentError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: ConversationNotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.ABORTED: ConversationBusy,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.FAILED_PRECONDITION: ActionNotPending,
}


def _status_classes() -> tuple[Any, Any]:
    """Wire-compatible twins of google.rpc.Status and google.rpc.BadRequest in a private descriptor pool.

    The client depends only on grpcio and protobuf, so it does not import googleapis-common-protos; a private
    pool cannot clash with it when both are installed.
    """
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="support_agent_client/rpc_status.proto", package="support_agent_client.rpc", syntax="proto3"
    )
    any_value = file.message_type.add(name="AnyValue")
    any_value.field.add(name="type_url", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    any_value.field.add(name="value", number=2, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    status.field.add(
        name="details",
        number=3,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".support_agent_client.rpc.AnyValue",
    )
    violation = file.message_type.add(name="FieldViolation")
    violation.field.add(name="field", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    violation.field.add(name="description", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    bad_request = file.message_type.add(name="BadRequest")
    bad_request.field.add(
        name="field_violations",
        number=1,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".support_agent_client.rpc.FieldViolation",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("support_agent_client.rpc.Status")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("support_agent_client.rpc.BadRequest")),
    )


_Status, _BadRequest = _status_classes()


def _field_violations(trailing_metadata: Any) -> tuple[FieldViolation, ...]:
    """BadRequest field violations from the rich status in trailing metadata; () when absent or unreadable."""
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = _Status.FromString(value)
            violations: list[FieldViolation] = []
            for detail in status.details:
                if detail.type_url == _BAD_REQUEST_TYPE:
                    bad_request = _BadRequest.FromString(detail.value)
                    violations.extend(
                        FieldViolation(item.field, item.description) for item in bad_request.field_violations
                    )
            return tuple(violations)
        except Exception:  # a malformed detail must not hide the status itself
            return ()
    return ()


def from_rpc_error(error: grpc.RpcError) -> AgentError:
    """The AgentError subclass for a failed call (grpc.aio.AioRpcError or a sync grpc.Call error)."""
    code_method = getattr(error, "code", None)
    code = code_method() if callable(code_method) else grpc.StatusCode.UNKNOWN
    details_method = getattr(error, "details", None)
    details = (details_method() if callable(details_method) else None) or ""
    kind = _BY_CODE.get(code, AgentError)
    if kind is InvalidRequest:
        trailing = getattr(error, "trailing_metadata", None)
        violations = _field_violations(trailing() if callable(trailing) else None)
        return InvalidRequest(details, code, violations)
    return kind(details, code)
