"""POST /chat/completions over aiohttp: the wire of an OpenAI-compatible server, as plain JSON.

The model adapter (`openai_model.OpenAIModel`) needs four things from the wire: send a JSON body, get a JSON
reply or a stream of JSON events, and know why a call failed (the HTTP status with the server's body and its
Retry-After, a timeout, a dropped connection, a body that is not JSON, an error reported inside a 200 stream).
The `openai` package does this and much more, at 3-4 ms of CPU per call on this project's benchmark machine
(request options, header building, response models in pydantic; BENCHMARKS.md); this module does only the four
things, with the same semantics, in a fraction of that. Streams are Server-Sent Events: `data:` lines, one JSON
object per event, `data: [DONE]` at the end; an event whose object has an `error` member is a failure
(`StreamReportedError`), and any other SSE field (`event:`, `id:`, a bare `error:` line) carries no data.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_DONE = b"[DONE]"


class ChatHTTPError(Exception):
    """The server answered with a status other than 200. `body` is its JSON (or `{"error": {"message":
    <text>}}` when it sent none), `retry_after` its Retry-After header, if any."""

    def __init__(self, status_code: int, body: Mapping[str, Any], retry_after: str | None) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after


class ChatConnectionError(Exception):
    """The connection could not be made or broke before the reply was read."""


class StreamReportedError(Exception):
    """A 200 stream carried an error event; `body` is the event's `error` member."""

    def __init__(self, body: Any) -> None:
        super().__init__("the stream reported an error")
        self.body = {"error": body}


def _error_body(raw: bytes) -> Mapping[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping):
        return parsed
    return {"error": {"message": raw.decode("utf-8", "replace")}}


class ChatCompletionsClient:
    """One connection pool to one server. Create it anywhere; the session opens on the first call, inside the
    running loop."""

    def __init__(self, base_url: str | None, api_key: str | None) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {api_key or 'unused'}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _send(self, body: Mapping[str, Any], seconds: float) -> aiohttp.ClientResponse:
        try:
            response = await self._open().post(
                self._url, data=json.dumps(body), timeout=aiohttp.ClientTimeout(total=seconds)
            )
        except aiohttp.ServerTimeoutError as error:
            raise TimeoutError(str(error)) from error
        except aiohttp.ClientError as error:
            raise ChatConnectionError(f"{type(error).__name__}: {error}") from error
        if response.status != 200:
            try:
                raw = await response.read()
            except aiohttp.ClientError:
                raw = b""
            finally:
                response.release()
            raise ChatHTTPError(response.status, _error_body(raw), response.headers.get("Retry-After"))
        return response

    async def complete(self, body: Mapping[str, Any], seconds: float) -> dict[str, Any]:
        """The reply of a non-streamed call, as its JSON object. A body that is not a JSON object raises
        ValueError."""
        response = await self._send(body, seconds)
        try:
            raw = await response.read()
        except aiohttp.ServerTimeoutError as error:
            raise TimeoutError(str(error)) from error
        except aiohttp.ClientError as error:
            raise ChatConnectionError(f"{type(error).__name__}: {error}") from error
        finally:
            response.release()
        parsed = json.loads(raw)
        if not isinstance(parsed, dict):
            raise ValueError("the completion is not a JSON object")
        return parsed

    async def stream(self, body: Mapping[str, Any], seconds: float) -> AsyncGenerator[dict[str, Any], None]:
        """The events of a streamed call, each as its JSON object, until `[DONE]` or the end of the body."""
        response = await self._send(body, seconds)
        try:
            data: list[bytes] = []
            while True:
                try:
                    raw_line = await response.content.readline()
                except aiohttp.ServerTimeoutError as error:
                    raise TimeoutError(str(error)) from error
                except aiohttp.ClientError as error:
                    raise ChatConnectionError(f"{type(error).__name__}: {error}") from error
                at_end = raw_line == b""
                line = raw_line.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                    continue
                if line and not at_end:
                    continue  # a comment or another field of the event (event:, id:, a bare error:): no data
                if data:  # a blank line (or the end of the body) ends the event
                    payload = b"\n".join(data)
                    data = []
                    if payload == _DONE:
                        return
                    event = json.loads(payload)
                    if not isinstance(event, dict):
                        raise ValueError("a stream event is not a JSON object")
                    if event.get("error"):
                        raise StreamReportedError(event["error"])
                    yield event
                if at_end:
                    return
        finally:
            response.release()
