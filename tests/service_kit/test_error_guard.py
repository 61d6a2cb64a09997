"""ErrorGuard: each servicer's table of rules decides the status, message and details of what a handler
raises; anything else is INTERNAL with a message that reveals nothing."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from service_kit.error_guard import ErrorGuard, StatusRule, bad_request

logger = logging.getLogger("test.error_guard")
# Where grpc_status puts the google.rpc.Status (code, message, details) in the trailing metadata.
DETAILS_KEY = "grpc-status-details-bin"


class NotFoundError(Exception):
    pass


class InvalidError(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is wrong")
        self.field = field


class DownError(Exception):
    pass


class FakeContext:
    """Records the status a handler ends with; aborting raises like grpc.aio does."""

    def __init__(self) -> None:
        self.status: status_pb2.Status | None = None

    async def abort_with_status(self, status: Any) -> None:
        trailing = dict(status.trailing_metadata)
        self.status = status_pb2.Status.FromString(trailing[DETAILS_KEY])
        raise grpc.aio.AbortError()


def guard(on_down: list[str]) -> ErrorGuard:
    async def report() -> None:
        on_down.append("down")

    return ErrorGuard(
        [
            StatusRule(NotFoundError, grpc.StatusCode.NOT_FOUND),
            StatusRule(
                InvalidError,
                grpc.StatusCode.INVALID_ARGUMENT,
                details=lambda error: [bad_request(error.field, "must be set")],
            ),
            StatusRule(DownError, grpc.StatusCode.UNAVAILABLE, message="store unavailable", on_error=report),
        ],
        internal_message="internal error in the test service",
        logger=logger,
    )


async def run(error: BaseException | None, on_down: list[str] | None = None) -> FakeContext:
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        async with guard([] if on_down is None else on_down)(context):  # type: ignore[arg-type]
            if error is not None:
                raise error
    return context


async def test_the_first_matching_rule_decides_code_and_message() -> None:
    context = await run(NotFoundError("no ticket T-1"))
    assert context.status is not None
    assert context.status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert context.status.message == "no ticket T-1"


async def test_a_rule_adds_its_details_and_runs_its_hook() -> None:
    context = await run(InvalidError("order_id"))
    assert context.status is not None
    assert context.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    detail = error_details_pb2.BadRequest()
    assert context.status.details[0].Unpack(detail)
    assert detail.field_violations[0].field == "order_id"
    on_down: list[str] = []
    context = await run(DownError("connection refused to 10.0.0.7"), on_down)
    assert context.status is not None
    assert context.status.message == "store unavailable"
    assert on_down == ["down"]


async def test_an_unmatched_error_is_internal_and_reveals_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="test.error_guard"):
        context = await run(KeyError("secret-internal-key"))
    assert context.status is not None
    assert context.status.code == grpc.StatusCode.INTERNAL.value[0]
    assert context.status.message == "internal error in the test service"
    assert "secret-internal-key" in caplog.text  # the operator sees it in the log, the caller does not


async def test_a_clean_body_and_an_abort_already_under_way_pass_through() -> None:
    context = FakeContext()
    async with guard([])(context):  # type: ignore[arg-type]
        pass
    assert context.status is None
    with pytest.raises(grpc.aio.AbortError):
        async with guard([])(context):  # type: ignore[arg-type]
            raise grpc.aio.AbortError()
    assert context.status is None
