"""The exception tree of tools_service's domain code. The servicer maps each to one gRPC status.

ToolsError
├── InvalidArgumentError      bad input (names the field)           → INVALID_ARGUMENT
├── UnauthenticatedError      no x-customer-id where one is needed  → UNAUTHENTICATED
├── NotFoundError             missing, or another customer's        → NOT_FOUND
├── PermissionDeniedError     a customer calling a helpdesk action  → PERMISSION_DENIED
├── RateLimitedError          over a limit (retry_after_seconds)    → RESOURCE_EXHAUSTED
├── ConflictError             same idempotency key, other payload   → ALREADY_EXISTS
├── FailedPreconditionError   wrong ticket state for the action     → FAILED_PRECONDITION
│   └── NotAllowedError       an order rule refuses a write now      → FAILED_PRECONDITION
├── BackendTimeoutError       backend slower than the deadline      → DEADLINE_EXCEEDED
├── BackendUnavailableError   backend down or answering garbage     → UNAVAILABLE
├── WriteRefusedError         a backend definitely refused a write  (an action's NOT_EXECUTED note)
└── WriteOutcomeUnknownError  a write may or may not have happened  (an action's UNKNOWN note)
"""

from __future__ import annotations


class ToolsError(Exception):
    """Base class; `message` is safe to show to the caller and to the model."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(ToolsError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnauthenticatedError(ToolsError):
    pass


class NotFoundError(ToolsError):
    pass


class PermissionDeniedError(ToolsError):
    pass


class RateLimitedError(ToolsError):
    def __init__(self, message: str, limit: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.limit = limit
        # 0 when waiting does not help (per-conversation and identical-call limits).
        self.retry_after_seconds = retry_after_seconds


class ConflictError(ToolsError):
    pass


class FailedPreconditionError(ToolsError):
    pass


class NotAllowedError(FailedPreconditionError):
    """The order's rules refuse this write now (e.g. cancelling a shipped order); nothing changed."""


class BackendTimeoutError(ToolsError):
    pass


class BackendUnavailableError(ToolsError):
    pass


class WriteRefusedError(ToolsError):
    """The backend refused a write before acting (nothing changed); `message` says why."""


class WriteOutcomeUnknownError(ToolsError):
    """The write was sent but no answer came (timeout, dropped connection, server error): it may have happened."""
