"""One write request to a company API, sent once, and what its answer means for the action.

Shared by the order API adapter (adapters/http_orders.py) and HTTP-declared write tools (http_tool.py): a write is
never retried and carries `Idempotency-Key: <action_id>`, so a company API that keys on it never applies it twice.

| the API does | raises |
|---|---|
| 2xx | nothing: the body is returned |
| 409 / 422 (`{"error": "..."}`) | NotAllowedError with the API's message when it is plain text |
| 404 | NotFoundError |
| another 4xx, or a connection that could not be opened | WriteRefusedError (nothing changed) |
| a timeout, a connection dropped after sending, or a 5xx | WriteOutcomeUnknownError (with how to reconcile) |
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import aiohttp

from tools_service.errors import NotAllowedError, NotFoundError, WriteOutcomeUnknownError, WriteRefusedError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
# A refusal's message reaches the model only as one line of plain text.
PLAIN_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,300}")


def refusal_message(raw: bytes, system: str) -> str:
    """The API's {"error": "..."} when it is plain text a person can read, else a generic sentence."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, str) and PLAIN_TEXT.fullmatch(message):
        return message
    return f"{system} refused the change; nothing changed."


async def send_write(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    action_id: str,
    system: str,
    reconcile: str,
    not_found_message: str,
    json_body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> bytes:
    """Sends the write once; returns a 2xx answer's body, else raises per the table above. `system` names the
    API in messages ("The order system"); `reconcile` says what to check when the outcome is unknown."""
    # Without `client_timeout` the session's own timeout applies (None would switch timeouts off).
    options: dict[str, Any] = {"timeout": client_timeout} if client_timeout is not None else {}
    try:
        async with session.request(
            method,
            url,
            params=params,
            json=json_body,
            headers={**(headers or {}), "Idempotency-Key": action_id},
            allow_redirects=False,
            **options,
        ) as response:
            raw = await response.content.read(MAX_BODY_BYTES + 1)
            status = response.status
    except TimeoutError:
        raise WriteOutcomeUnknownError(f"{system} did not answer in time; {reconcile}.") from None
    except aiohttp.ClientConnectorError:
        raise WriteRefusedError(f"{system} could not be reached; nothing changed.") from None
    except aiohttp.ClientError as error:
        logger.warning("write to %s dropped: %s", system, type(error).__name__)
        raise WriteOutcomeUnknownError(f"The connection dropped during the change; {reconcile}.") from None
    if status in (409, 422):
        raise NotAllowedError(refusal_message(raw, system))
    if status == 404:
        raise NotFoundError(not_found_message)
    if status >= 500:
        logger.warning("write to %s answered HTTP %d", system, status)
        raise WriteOutcomeUnknownError(f"{system} failed while handling the change; {reconcile}.")
    if not 200 <= status < 300:
        logger.warning("write to %s answered HTTP %d", system, status)
        raise WriteRefusedError(f"{system} refused the request (HTTP {status}); nothing changed.")
    return raw
