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
import re
import time
from collections.abc import Sequence

from aiohttp import web

from testkit.scripted_openai import Reply, Request, ScriptedOpenAIServer, last_user_message

NONCE_PATTERN = re.compile(r"\[bench:([A-Za-z0-9_-]{1,64})\]")
ANSWER = (
    "Express shipping takes one to two business days, and standard shipping takes five to seven business "
    "days. Orders over fifty dollars ship free."
)


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

    def _add_routes(self, app: web.Application) -> None:
        super()._add_routes(app)
        app.router.add_get("/bench/first-token/{nonce}", self._first_token)

    async def _first_token(self, http_request: web.Request) -> web.Response:
        nonce = http_request.match_info["nonce"]
        stamp = self.first_token_ns.pop(nonce, None)
        if stamp is None:
            return web.json_response({"error": "unknown nonce"}, status=404)
        return web.json_response({"first_token_ns": stamp})

    async def _before_content_chunk(self, body: Request, index: int) -> None:
        # Stamp right before the first content token goes out; pause between later ones like a real model.
        nonce = nonce_of(body)
        if index == 0 and nonce is not None:
            self.first_token_ns[nonce] = time.monotonic_ns()
        elif index > 0 and self.chunk_pause:
            await asyncio.sleep(self.chunk_pause)


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
