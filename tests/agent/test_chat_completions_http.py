"""The model adapter's own wire (`chat_completions_http`) against real local HTTP servers: what each failure
becomes (retried or not, which error the breaker sees), streams with SSE comments and split events, usage and
cached tokens, Retry-After."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from agent_service.adapters.openai_model import OpenAIModel
from agent_service.errors import ModelRequestError, ModelUnavailableError
from agent_service.model_port import ModelRequest, ModelResult, TextChunk
from testkit.scripted_openai import Reply, ScriptedOpenAIServer, ToolCallSpec

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MESSAGES = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"})


def request(stream: bool = False) -> ModelRequest:
    return ModelRequest(messages=MESSAGES, tools=(), stream=stream, user_message="Hello", hits=())


async def run(model: OpenAIModel, stream: bool = False) -> tuple[str, ModelResult]:
    text: list[str] = []
    result: ModelResult | None = None
    async for event in model.generate(request(stream)):
        if isinstance(event, TextChunk):
            text.append(event.text)
        else:
            result = event
    assert result is not None
    return "".join(text), result


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("stream", [False, True])
async def test_text_tool_calls_usage_and_cached_tokens(stream: bool) -> None:
    reply = Reply(
        content="Hi there.",
        tool_calls=[ToolCallSpec("lookup_order_status", '{"order_id": "ORD-1"}', id="call_a")],
        cached_tokens=7,
    )
    async with ScriptedOpenAIServer([reply]) as server:
        model = OpenAIModel("m", api_key="secret", base_url=server.base_url)
        text, result = await run(model, stream)
        await model.aclose()
    assert text == "Hi there." and result.content == "Hi there."
    assert [(call.id, call.name, call.arguments) for call in result.tool_calls] == [
        ("call_a", "lookup_order_status", '{"order_id": "ORD-1"}')
    ]
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (50, 20, 7)
    assert server.requests[0]["messages"][1] == {"role": "user", "content": "Hello"}


async def test_the_api_key_is_sent_as_a_bearer_token(serve: Callable[[Handler], Awaitable[str]]) -> None:
    seen: list[str] = []

    async def handler(http_request: web.Request) -> web.StreamResponse:
        seen.append(http_request.headers.get("Authorization", ""))
        return web.json_response({"model": "m", "choices": [{"message": {"content": "ok"}}]})

    model = OpenAIModel("m", api_key="sk-test", base_url=await serve(handler))
    text, result = await run(model)
    await model.aclose()
    assert seen == ["Bearer sk-test"] and text == "ok" and result.prompt_tokens == 0


async def test_sse_comments_other_fields_and_multiline_data_are_read_as_events(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(http_request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(http_request)
        first = json.dumps({"choices": [{"delta": {"content": "Hello "}}]})
        await response.write(f": keep-alive\n\nevent: message\nid: 1\ndata: {first}\n\n".encode())
        await response.write(b'data: {"choices": [{"delta":\r\ndata: {"content": "world"}}]}\r\n\r\n')
        await response.write(
            b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
        )
        return response

    model = OpenAIModel("m", api_key=None, base_url=await serve(handler))
    text, result = await run(model, stream=True)
    await model.aclose()
    assert text == "Hello world" and result.content == "Hello world"


async def test_retry_after_is_honoured_and_the_retry_answers(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    loop = asyncio.get_running_loop()
    calls: list[float] = []

    async def handler(_: web.Request) -> web.StreamResponse:
        calls.append(loop.time())
        if len(calls) == 1:
            return web.json_response(
                {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0.3"}
            )
        return web.json_response({"choices": [{"message": {"content": "ok"}}]})

    model = OpenAIModel(
        "m", api_key=None, base_url=await serve(handler), max_retries=1, backoff_seconds=0.001
    )
    text, _ = await run(model)
    await model.aclose()
    assert text == "ok" and len(calls) == 2 and calls[1] - calls[0] >= 0.3


async def test_a_body_that_is_not_a_completion_is_retried_then_unavailable(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    bodies = [b"[1, 2]", b'{"choices": []}', b"<html>bad gateway</html>"]

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=bodies.pop(0), content_type="application/json")

    model = OpenAIModel(
        "m", api_key=None, base_url=await serve(handler), max_retries=2, backoff_seconds=0.001
    )
    with pytest.raises(ModelUnavailableError):
        await run(model)
    await model.aclose()
    assert bodies == []  # three attempts, each a different malformed body


async def test_a_400_is_a_request_error_with_the_servers_text_body(
    serve: Callable[[Handler], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(status=400, text="plain text: messages malformed")

    model = OpenAIModel(
        "m", api_key=None, base_url=await serve(handler), max_retries=2, backoff_seconds=0.001
    )
    with pytest.raises(ModelRequestError):
        await run(model)
    await model.aclose()
    logged = [getattr(record, "server_message", "") for record in caplog.records]
    assert "plain text: messages malformed" in logged


async def test_a_refused_connection_is_retried_then_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = OpenAIModel("m", api_key=None, base_url=f"http://127.0.0.1:{port}/v1", backoff_seconds=0.001)
    with pytest.raises(ModelUnavailableError) as raised:
        await run(model, stream=True)
    await model.aclose()
    assert "ChatConnectionError" in str(raised.value)


async def test_an_error_event_inside_a_200_stream_is_not_an_answer_and_not_retried() -> None:
    script = [Reply(stream_error="model crashed", stream_error_as_data=True), Reply(content="never sent")]
    async with ScriptedOpenAIServer(script) as server:
        model = OpenAIModel("m", api_key=None, base_url=server.base_url, max_retries=2, backoff_seconds=0.001)
        with pytest.raises(ModelUnavailableError) as raised:
            await run(model, stream=True)
        await model.aclose()
    assert "StreamReportedError" in str(raised.value) and len(server.requests) == 1
