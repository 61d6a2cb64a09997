"""The company's order API over HTTP (aiohttp).

Contract expected from the API: `GET {base_url}/orders/{order_id}` →
200 `{"order_id", "customer_id", "status", "tracking_number"?, "carrier"?, "eta"?}` | 404 when unknown.
Only connect errors (refused, reset, dropped before an answer) and 5xx are retried (`retries` times, small
exponential backoff): a GET is idempotent, but a slow API is not hammered — a per-attempt timeout is a
BackendTimeoutError at once. Any other status, or a body that is not that JSON object, is BackendUnavailableError. The
caller's overall time budget still applies on top (the order service cancels the whole call).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from tools_service.errors import BackendTimeoutError, BackendUnavailableError
from tools_service.orders import ORDER_STATUSES, Order

logger = logging.getLogger(__name__)

BACKOFF_SECONDS = 0.05
MAX_BODY_BYTES = 64 * 1024


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
    )


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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
