"""Tools whose backend is an HTTP endpoint of the company's own API (declared in the tools file, no code).

The URL template's {placeholders} are filled from the arguments and the bound parameters, each URL-quoted; the
other arguments go in the query string (GET, DELETE) or as a JSON body (POST, PUT, PATCH). Headers come from the
tools file (their ${ENV} references resolved at start-up).

Reads: connect errors and 5xx are retried `retries` times (small exponential backoff); a timeout is a timeout at
once. 404 → not found. Writes (run once the customer confirmed): sent once with `Idempotency-Key: <action_id>`;
409/422 `{"error"}` → NotAllowedError, another 4xx or a connection that could not be opened → WriteRefusedError,
a timeout, a dropped connection or a 5xx → WriteOutcomeUnknownError.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from tools_service.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    NotFoundError,
)
from tools_service.http_writes import MAX_BODY_BYTES, send_write
from tools_service.tool_catalog import HttpEndpoint, ToolSpec

logger = logging.getLogger(__name__)

BACKOFF_SECONDS = 0.05
NOT_FOUND_MESSAGE = (
    "Nothing was found for that request: what the customer gave does not match anything of theirs."
)
_BODY_METHODS = ("POST", "PUT", "PATCH")


class _RetryableError(Exception):
    pass


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def build_request(
    endpoint: HttpEndpoint, arguments: dict[str, Any], bound: dict[str, str]
) -> tuple[str, dict[str, str], dict[str, Any] | None]:
    """(url, query, json body) for one call; placeholders are URL-quoted (a `/` or `?` stays inside its part)."""
    values = {**arguments, **bound}
    placeholders = set(endpoint.placeholders)
    url = endpoint.url.format_map({name: quote(_text(values[name]), safe="") for name in placeholders})
    rest = {name: value for name, value in values.items() if name not in placeholders}
    if endpoint.method in _BODY_METHODS:
        return url, {}, rest
    return url, {name: _text(value) for name, value in rest.items()}, None


def _content(raw: bytes) -> dict[str, Any]:
    """The answer as the model's tool content: a JSON object as is, anything else under "result"."""
    if len(raw) > MAX_BODY_BYTES:
        raise BackendUnavailableError("The company system sent an answer that is too large.")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BackendUnavailableError("The company system sent an invalid answer.") from None
    return body if isinstance(body, dict) else {"result": body}


class HttpTools:
    """Runs HTTP-backed tools; one aiohttp session for all of them."""

    def __init__(self, backoff_seconds: float = BACKOFF_SECONDS) -> None:
        self._backoff = backoff_seconds
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"Accept": "application/json"})
        return self._session

    async def read(self, spec: ToolSpec, arguments: dict[str, Any], bound: dict[str, str]) -> dict[str, Any]:
        assert spec.http is not None
        endpoint = spec.http
        url, query, body = build_request(endpoint, arguments, bound)
        for attempt in range(endpoint.retries + 1):
            try:
                return await self._read_once(endpoint, url, query, body)
            except _RetryableError as error:
                logger.warning("tool %s attempt %d failed: %s", spec.name, attempt + 1, error)
                if attempt == endpoint.retries:
                    break
                await asyncio.sleep(self._backoff * (2**attempt))
        raise BackendUnavailableError("The company system is unavailable right now.")

    async def _read_once(
        self, endpoint: HttpEndpoint, url: str, query: dict[str, str], body: dict[str, Any] | None
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout_seconds)
        try:
            async with self._client().request(
                endpoint.method,
                url,
                params=query,
                json=body,
                headers=dict(endpoint.headers),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                if response.status >= 500:
                    raise _RetryableError(f"HTTP {response.status}")
                raw = await response.content.read(MAX_BODY_BYTES + 1)
                status = response.status
        except TimeoutError:
            raise BackendTimeoutError("The company system did not answer in time.") from None
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as error:
            raise _RetryableError(type(error).__name__) from error
        except aiohttp.ClientError as error:
            logger.warning("HTTP tool call failed: %s", type(error).__name__)
            raise BackendUnavailableError("The company system is unavailable right now.") from None
        if status == 404:
            raise NotFoundError(NOT_FOUND_MESSAGE)
        if not 200 <= status < 300:
            logger.warning("HTTP tool answered HTTP %d", status)
            raise BackendUnavailableError("The company system refused the request.")
        return _content(raw)

    async def write(
        self, spec: ToolSpec, arguments: dict[str, Any], bound: dict[str, str], action_id: str
    ) -> dict[str, Any]:
        """Sends the write once; see the module docstring for how each answer maps."""
        assert spec.http is not None
        endpoint = spec.http
        url, query, body = build_request(endpoint, arguments, bound)
        raw = await send_write(
            self._client(),
            endpoint.method,
            url,
            action_id=action_id,
            system="The company system",
            reconcile="check in the company system whether it happened before trying again",
            not_found_message=NOT_FOUND_MESSAGE,
            json_body=body,
            params=query,
            headers=dict(endpoint.headers),
            client_timeout=aiohttp.ClientTimeout(total=endpoint.timeout_seconds),
        )
        try:
            return _content(raw)
        except BackendUnavailableError:
            return {"status": "done"}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
