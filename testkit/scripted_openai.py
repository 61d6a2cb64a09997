"""A scripted OpenAI-compatible Chat Completions server (aiohttp), so the real `openai` client is exercised.

A responder decides each reply from the request body. Replies can be text, tool calls, HTTP errors (with the
server's message as the body), delays, hangs, malformed bodies or a stream error inside an HTTP 200 (as an
`error:` line, the way some llama.cpp builds report it, or as a `data: {"error": ...}` event). The failure modes
of real servers are responders here too: `unbounded` (generation without `max_tokens` never ends) and
`strict_template` (a chat template that refuses a second system message or roles that do not alternate);
a tool call written as plain JSON text is just a `Reply(content=...)`; `stream: true` requests get Server-Sent Events with content and tool-call deltas,
the way OpenAI streams them. Every request body is recorded in `requests`. Prompt caching is reported the way
servers do (`Reply.cached_tokens`: OpenAI's `usage.prompt_tokens_details.cached_tokens` or llama.cpp's
`timings.cache_n`), and `PromptCache` plays a llama.cpp slot: it renders each request to text and reports how
much of it repeats the previous one.

    server = ScriptedOpenAIServer([Reply(tool_calls=[ToolCallSpec("lookup_order_status", '{"order_id": "ORD-12345"}')]),
                                   Reply(content="Shipped.")])
    base_url = await server.start()      # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Request = dict[str, Any]


@dataclass(frozen=True)
class ToolCallSpec:
    name: str
    arguments: str
    id: str = ""


@dataclass(frozen=True)
class Reply:
    content: str | None = None
    tool_calls: Sequence[ToolCallSpec] = ()
    status: int = 200
    delay: float = 0.0
    hang: bool = False
    malformed: bool = False
    prompt_tokens: int = 50
    completion_tokens: int = 20
    # Characters per streamed content delta.
    chunk_chars: int = 8
    # A streamed reply that fails inside its HTTP 200: after the role chunk, an error and the end of the
    # stream (no finish reason, no [DONE]). Written as an `error:` line or, with `stream_error_as_data`, as a
    # `data: {"error": {...}}` event.
    stream_error: str = ""
    stream_error_as_data: bool = False
    # The finish reason sent (default: "tool_calls" with tool calls, else "stop").
    finish_reason: str = ""
    # Prompt tokens served from the server's cache, reported as OpenAI does ("usage":
    # usage.prompt_tokens_details.cached_tokens) or as llama.cpp does ("timings": timings.cache_n/prompt_n).
    cached_tokens: int = 0
    cached_as: str = "usage"


Responder = Callable[[Request], "Reply | Awaitable[Reply]"]

_ids = itertools.count(1)


class ScriptedOpenAIServer:
    """Serves POST /v1/chat/completions from a responder or a fixed sequence of replies."""

    def __init__(
        self,
        script: Responder | Sequence[Reply],
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if callable(script):
            self._responder: Responder = script
        else:
            replies = list(script)

            def next_reply(_: Request) -> Reply:
                if not replies:
                    return Reply(status=500, content="script exhausted")
                return replies.pop(0)

            self._responder = next_reply
        self.latency = latency
        self.requests: list[Request] = []
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        assert server is not None
        port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        self.base_url = f"http://{self._host}:{port}/v1"
        return self.base_url

    def _add_routes(self, app: web.Application) -> None:
        """Subclasses add their own routes after these."""
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._models)

    async def _before_content_chunk(self, body: Request, index: int) -> None:
        """Called before each streamed content chunk is written (a hook for pacing and timestamps)."""

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedOpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    async def _handle(self, http_request: web.Request) -> web.StreamResponse:
        body: Request = await http_request.json()
        self.requests.append(body)
        reply = self._responder(body)
        if inspect.isawaitable(reply):
            reply = await reply
        delay = self.latency + reply.delay
        if delay:
            await asyncio.sleep(delay)
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.status != 200:
            return web.json_response(
                {"error": {"message": reply.content or "scripted failure", "type": "server_error"}},
                status=reply.status,
            )
        model = str(body.get("model", "scripted"))
        if body.get("stream"):
            return await self._stream(http_request, body, reply, model)
        if reply.malformed:
            return web.Response(text='{"id": "broken", "choices": [', content_type="application/json")
        return web.json_response(_completion(reply, model))

    async def _stream(
        self, http_request: web.Request, body: Request, reply: Reply, model: str
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(http_request)
        completion_id = f"chatcmpl-{next(_ids)}"

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
        if reply.stream_error:
            error = {"code": 500, "message": reply.stream_error, "type": "server_error"}
            if reply.stream_error_as_data:
                await response.write(f"data: {json.dumps({'error': error})}\n\n".encode())
            else:
                await response.write(f"error: {json.dumps(error)}\n\n".encode())
            await response.write_eof()
            return response
        if reply.malformed:
            await response.write(b"data: {not json\n\n")
            await response.write_eof()
            return response
        text = reply.content or ""
        size = max(1, reply.chunk_chars)
        for index, start in enumerate(range(0, len(text), size)):
            await self._before_content_chunk(body, index)
            await send({"content": text[start : start + size]})
        for index, call in enumerate(reply.tool_calls):
            call_id = call.id or f"call_{next(_ids)}"
            await send(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
            half = len(call.arguments) // 2
            for piece in (call.arguments[:half], call.arguments[half:]):
                await send({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        await send({}, _finish_reason(reply))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": _usage(reply),
                **_timings(reply),
            }
            await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _finish_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _usage(reply: Reply) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }
    if reply.cached_tokens and reply.cached_as == "usage":
        usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
    return usage


def _timings(reply: Reply) -> dict[str, Any]:
    """llama.cpp's `timings` field: how much of the prompt came from the slot's cache."""
    if reply.cached_as != "timings":
        return {}
    return {
        "timings": {
            "cache_n": reply.cached_tokens,
            "prompt_n": max(0, reply.prompt_tokens - reply.cached_tokens),
            "predicted_n": reply.completion_tokens,
        }
    }


def _completion(reply: Reply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_{next(_ids)}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ]
    return {
        "id": f"chatcmpl-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish_reason(reply),
            }
        ],
        "usage": _usage(reply),
        **_timings(reply),
    }


def last_user_message(request: Request) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


def has_tool_result(request: Request) -> bool:
    """True when the conversation sent since the last user message already holds a tool result."""
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "tool":
            return True
        if message.get("role") == "user":
            return False
    return False


def tool_then_answer(request: Request) -> Reply:
    """One tool round per turn: look the order up, then answer. Used by the benchmarks."""
    if not has_tool_result(request):
        return Reply(tool_calls=[ToolCallSpec("lookup_order_status", '{"order_id": "ORD-12345"}')])
    return Reply(content="Your order ORD-12345 has shipped; tracking number 1Z999AA10123456784.")


def unbounded(request: Request) -> Reply:
    """A model that, asked without `max_tokens`, never stops generating (here: never answers); with it, writes
    `max_tokens` words and stops for length."""
    limit = request.get("max_tokens") or request.get("max_completion_tokens")
    if not isinstance(limit, int):
        return Reply(hang=True)
    return Reply(content=" ".join(["more"] * limit), completion_tokens=limit, finish_reason="length")


TEMPLATE_ERROR = "Conversation roles must alternate user/assistant/user/assistant/..."


TOOL_CALL_ID_ERROR = "Tool call IDs should be alphanumeric strings with length 9!"


def template_violation(request: Request) -> str:
    """What a strict chat template (Mistral's, Gemma's) would object to in the request; "" when nothing."""
    ids = [call.get("id") for m in request.get("messages", []) for call in m.get("tool_calls") or ()]
    ids += [m["tool_call_id"] for m in request.get("messages", []) if "tool_call_id" in m]
    if any(not (isinstance(i, str) and len(i) == 9 and i.isalnum()) for i in ids):
        return TOOL_CALL_ID_ERROR
    roles = [str(message.get("role")) for message in request.get("messages", [])]
    if roles.count("system") > 1 or "system" in roles[1:]:
        return TEMPLATE_ERROR
    turns = [role for role in roles if role in ("user", "assistant")]
    if any(a == b == "user" for a, b in itertools.pairwise(turns)):
        return TEMPLATE_ERROR
    return ""


def strict_template(script: Responder | Sequence[Reply], status: int = 400, message: str = "") -> Responder:
    """`script` behind a strict chat template: a request it objects to gets `status` with the template's
    message (400 like Mistral's server, 500 like some llama.cpp builds; `message` replaces the text, e.g.
    Gemma's "System role not supported"), before `script` sees it."""
    inner = script if callable(script) else _sequence(script)

    def respond(request: Request) -> Reply | Awaitable[Reply]:
        problem = template_violation(request)
        if problem:
            return Reply(status=status, content=message or problem)
        return inner(request)

    return respond


def render_chatml(request: Request) -> str:
    """The request as a ChatML chat template renders it (Qwen's layout: the tool definitions inside the first
    system message), the text a llama.cpp server tokenizes and caches."""
    messages = list(request.get("messages", []))
    tools = request.get("tools") or []
    parts: list[str] = []
    for index, message in enumerate(messages):
        content = str(message.get("content") or "")
        if index == 0 and message.get("role") == "system" and tools:
            content += "\n\n# Tools\n<tools>\n" + "\n".join(json.dumps(tool) for tool in tools) + "\n</tools>"
        for call in message.get("tool_calls") or ():
            content += "\n<tool_call>\n" + json.dumps(call.get("function")) + "\n</tool_call>"
        parts.append(f"<|im_start|>{message.get('role')}\n{content}<|im_end|>\n")
    return "".join(parts) + "<|im_start|>assistant\n"


class PromptCache:
    """One llama.cpp slot's prompt cache: `reply(request, Reply(...))` fills in the prompt tokens (characters/4
    of the rendered prompt) and the cached tokens (the prefix it shares with the previous prompt plus that
    reply), reported as `timings` the way llama-server does. `cached_share` keeps each request's ratio,
    `cached_tokens` its cached prefix in tokens."""

    def __init__(self) -> None:
        self._last = ""
        self.cached_share: list[float] = []
        self.cached_tokens: list[int] = []

    def reply(self, request: Request, reply: Reply) -> Reply:
        prompt = render_chatml(request)
        common = 0
        for left, right in zip(prompt, self._last, strict=False):
            if left != right:
                break
            common += 1
        self._last = prompt + (reply.content or "")
        prompt_tokens = max(1, len(prompt) // 4)
        cached = common // 4
        self.cached_share.append(cached / prompt_tokens)
        self.cached_tokens.append(cached)
        return dataclasses.replace(
            reply, prompt_tokens=prompt_tokens, cached_tokens=cached, cached_as="timings"
        )


def _sequence(script: Sequence[Reply]) -> Responder:
    replies = list(script)

    def next_reply(_: Request) -> Reply:
        return replies.pop(0) if replies else Reply(status=500, content="script exhausted")

    return next_reply


SCRIPTS: dict[str, Responder] = {"tool-then-answer": tool_then_answer}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Scripted OpenAI-compatible server for tests and benchmarks."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="tool-then-answer")
    args = parser.parse_args(argv)

    async def run() -> None:
        server = ScriptedOpenAIServer(SCRIPTS[args.script], latency=args.latency, port=args.port)
        print(await server.start(), flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
