"""A streaming scripted model server that records when it sends each reply's first content token.

Method for the streaming figure: the benchmark puts a nonce (`[bench:<nonce>]`) in the customer's message. This
server answers every request with text only, streamed in small chunks with a pause between them (like a real
model producing tokens), and stores `time.monotonic_ns()` taken immediately before it writes the first
non-empty content chunk, keyed by the nonce. `GET <base>/bench/first-token/<nonce>` (base URL without `/v1`) returns it. The caller takes
`time.monotonic_ns()` when the first `text_delta` event arrives; CLOCK_MONOTONIC is one clock for all
processes of a Linux machine, so the difference is the time from the model's first token to the caller's first
text event: the agent's streaming path plus two loopback hops.

    python -m bench.stream_model --port 0 --latency 0.05      # prints its base URL first
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from testkit.scripted_openai import Reply, Request, ScriptedOpenAIServer, last_user_message

NONCE_PATTERN = re.compile(r"\[bench:([A-Za-z0-9_-]{1,64})\]")
ANSWER = (
    "Express shipping takes one to two business days, and standard shipping takes five to seven business "
    "days. Orders over fifty dollars ship free."
)
_ids = itertools.count(1)


def first_token_url(base_url: str, nonce: str) -> str:
    """Where the server behind OpenAI base URL `base_url` reports the first-token time for `nonce`."""
    return f"{base_url.removesuffix('/').removesuffix('/v1')}/bench/first-token/{nonce}"


def nonce_of(request: Request) -> str | None:
    match = NONCE_PATTERN.search(last_user_message(request))
    return match.group(1) if match else None


def answer(_: Request) -> Reply:
    return Reply(content=ANSWER, chunk_chars=6)


class TimedStreamServer(ScriptedOpenAIServer):
    """ScriptedOpenAIServer whose streamed replies are paced and timestamped at the first content token."""

    def __init__(self, latency: float = 0.0, chunk_pause: float = 0.002, port: int = 0) -> None:
        super().__init__(answer, latency=latency, port=port)
        self.chunk_pause = chunk_pause
        self.first_token_ns: dict[str, int] = {}

    async def start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/bench/first-token/{nonce}", self._first_token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        assert server is not None
        port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self.base_url = f"http://{self._host}:{port}/v1"
        return self.base_url

    async def _first_token(self, http_request: web.Request) -> web.Response:
        nonce = http_request.match_info["nonce"]
        stamp = self.first_token_ns.pop(nonce, None)
        if stamp is None:
            return web.json_response({"error": "unknown nonce"}, status=404)
        return web.json_response({"first_token_ns": stamp})

    async def _stream(
        self, http_request: web.Request, body: Request, reply: Reply, model: str
    ) -> web.StreamResponse:
        nonce = nonce_of(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(http_request)
        completion_id = f"chatcmpl-bench-{next(_ids)}"

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        text = reply.content or ""
        size = max(1, reply.chunk_chars)
        for start in range(0, len(text), size):
            if start == 0 and nonce is not None:
                self.first_token_ns[nonce] = time.monotonic_ns()
            elif self.chunk_pause:
                await asyncio.sleep(self.chunk_pause)
            await send({"content": text[start : start + size]})
        await send({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Timed streaming model server for the benchmarks.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds before the first token")
    parser.add_argument("--chunk-pause", type=float, default=0.002, help="seconds between content chunks")
    args = parser.parse_args(argv)

    async def run() -> None:
        server = TimedStreamServer(latency=args.latency, chunk_pause=args.chunk_pause, port=args.port)
        base_url = await server.start()
        print(base_url, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
