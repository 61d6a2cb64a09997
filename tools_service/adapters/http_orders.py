"""The company's order API over HTTP (aiohttp).

Contract expected from the API: `GET {base_url}/orders/{order_id}` →
200 `{"order_id", "customer_id", "status", "tracking_number"?, "carrier"?, "eta"?, "item_count"?, "total_cents"?,
"currency"?, "delivered_on"?, "return_id"?}` | 404 when unknown.
Reads: only connect errors (refused, reset, dropped before an answer) and 5xx are retried (`retries` times, small
exponential backoff): a GET is idempotent, but a slow API is not hammered — a per-attempt timeout is a
BackendTimeoutError at once. Any other status, or a body that is not that JSON object, is BackendUnavailableError. The
caller's overall time budget still applies on top (the order service cancels the whole call).

Writes (run only after the customer confirmed; see tools_service/actions.py): `POST {base_url}/orders/{id}/cancel`
`{"customer_id"}`, `POST .../returns` `{"customer_id", "reason"}`, `POST .../address` `{"customer_id", "address"}`,
each with `Idempotency-Key: <action_id>`. A write is NEVER retried: 2xx → done (its JSON object's known fields
reach the result); 409/422 `{"error": "..."}` → NotAllowedError with that message (the API is the source of truth);
404 → not found; a connection that could not be opened or another 4xx → WriteRefusedError (nothing changed); a
timeout, a connection dropped after sending or a 5xx → WriteOutcomeUnknownError (it may have happened).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from urllib.parse import quote

import aiohttp

from tools_service.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
)
from tools_service.http_writes import MAX_BODY_BYTES, PLAIN_TEXT, send_write
from tools_service.orders import NOT_FOUND_MESSAGE, ORDER_STATUSES, Order

logger = logging.getLogger(__name__)

BACKOFF_SECONDS = 0.05


class _RetryableError(Exception):
    pass


def parse_auth_header(value: str | None) -> dict[str, str]:
    """'Name: value' → {'Name': 'value'}; None → {}."""
    if not value:
        return {}
    name, _, header_value = value.partition(":")
    return {name.strip(): header_value.strip()}


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(key)
    return value


def _optional_int(body: dict[str, Any], key: str) -> int:
    value = body.get(key, 0)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(key)
    return value


_CURRENCY = re.compile(r"[A-Z]{3}")
_RESULT_TEXT = PLAIN_TEXT
_RETURN_ID = re.compile(r"[A-Za-z0-9-]{1,40}")
# The fields of a write's answer that may reach the model, each with its shape.
_RESULT_FIELDS = {
    "cancel": {"status": _RESULT_TEXT, "refund": _RESULT_TEXT},
    "returns": {"return_id": _RETURN_ID, "instructions": _RESULT_TEXT},
    "address": {"address": _RESULT_TEXT},
}


def parse_order(body: object, order_id: str) -> Order:
    if not isinstance(body, dict):
        raise ValueError("body")
    customer_id = body.get("customer_id")
    status = body.get("status")
    if body.get("order_id") != order_id or not isinstance(customer_id, str) or not customer_id:
        raise ValueError("order_id/customer_id")
    if not isinstance(status, str) or status.lower() not in ORDER_STATUSES:
        raise ValueError("status")
    return Order(
        order_id=order_id,
        customer_id=customer_id,
        status=status.lower(),
        tracking_number=_optional_str(body, "tracking_number"),
        carrier=_optional_str(body, "carrier"),
        eta=_optional_str(body, "eta"),
        item_count=_optional_int(body, "item_count"),
        total_cents=_optional_int(body, "total_cents"),
        currency=_currency(body),
        delivered_on=_optional_str(body, "delivered_on"),
        return_id=_optional_str(body, "return_id"),
    )


def _currency(body: dict[str, Any]) -> str:
    value = _optional_str(body, "currency") or "USD"
    if not _CURRENCY.fullmatch(value):
        raise ValueError("currency")
    return value


class HttpOrderBackend:
    def __init__(
        self,
        base_url: str,
        auth_header: str | None = None,
        timeout_seconds: float = 5.0,
        retries: int = 2,
        backoff_seconds: float = BACKOFF_SECONDS,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json", **parse_auth_header(auth_header)}
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._retries = retries
        self._backoff = backoff_seconds
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _attempt(self, url: str, order_id: str) -> Order | None:
        try:
            async with self._client().get(url, allow_redirects=False) as response:
                if response.status == 404:
                    return None
                if response.status >= 500:
                    raise _RetryableError(f"HTTP {response.status}")
                if response.status != 200:
                    logger.warning("order API answered HTTP %d", response.status)
                    raise BackendUnavailableError("The order system refused the request.")
                raw = await response.content.read(MAX_BODY_BYTES + 1)
        except TimeoutError:
            raise BackendTimeoutError("The order system did not answer in time.") from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as error:
            raise _RetryableError(type(error).__name__) from error
        except aiohttp.ClientError as error:
            logger.warning("order API call failed: %s", type(error).__name__)
            raise BackendUnavailableError("The order system is unavailable right now.") from None
        if len(raw) > MAX_BODY_BYTES:
            raise BackendUnavailableError("The order system sent an invalid answer.")
        try:
            return parse_order(json.loads(raw), order_id)
        except ValueError as error:  # json.JSONDecodeError is a ValueError too
            logger.warning("order API sent a malformed order (%s)", type(error).__name__)
            raise BackendUnavailableError("The order system sent an invalid answer.") from None

    async def get_order(self, order_id: str) -> Order | None:
        url = f"{self._base_url}/orders/{quote(order_id, safe='')}"
        for attempt in range(self._retries + 1):
            try:
                return await self._attempt(url, order_id)
            except _RetryableError as error:
                logger.warning("order API attempt %d failed: %s", attempt + 1, error)
                if attempt == self._retries:
                    break
                await asyncio.sleep(self._backoff * (2**attempt))
        raise BackendUnavailableError("The order system is unavailable right now.")

    async def _write(self, order_id: str, what: str, body: dict[str, Any], action_id: str) -> dict[str, Any]:
        raw = await send_write(
            self._client(),
            "POST",
            f"{self._base_url}/orders/{quote(order_id, safe='')}/{what}",
            action_id=action_id,
            system="The order system",
            reconcile=f"check order {order_id} in the order system before retrying",
            not_found_message=NOT_FOUND_MESSAGE,
            json_body=body,
        )
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            answer = {}
        fields = _RESULT_FIELDS[what]
        if not isinstance(answer, dict):
            return {}
        return {
            key: value
            for key, value in answer.items()
            if key in fields and isinstance(value, str) and fields[key].fullmatch(value)
        }

    async def cancel_order(self, order_id: str, customer_id: str, action_id: str) -> dict[str, Any]:
        return await self._write(order_id, "cancel", {"customer_id": customer_id}, action_id)

    async def start_return(
        self, order_id: str, customer_id: str, reason: str, action_id: str
    ) -> dict[str, Any]:
        return await self._write(
            order_id, "returns", {"customer_id": customer_id, "reason": reason}, action_id
        )

    async def change_address(
        self, order_id: str, customer_id: str, address: dict[str, str], action_id: str
    ) -> dict[str, Any]:
        body = {"customer_id": customer_id, "address": address}
        return await self._write(order_id, "address", body, action_id)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
