"""`make compat`: the stack against a real OpenAI-compatible server — llama.cpp's `llama-server`, built from the
pinned llama-cpp-python sdist (compat/build_llama_server.sh), with a small instruct GGUF (compat/fetch_model.py;
`MODEL=path.gguf` uses your own).

1. **Conversations.** A four-question KB conversation through the real stack (devstack.ProcessStack:
   retrieval, tools, agent; the agent's OPENAI_BASE_URL points at the server through a recording
   pass-through), once with `MODEL_CONTEXT_PLACEMENT=system` (the KB context inside the system message, the
   layout before the prompt was reordered) and once with `auto` (the context last): llama-server's
   `timings.cache_n`/`prompt_n` of each turn's first model call say how much of the prompt its cache covered.
   Then the README's conversations with `auto`. Every reply (and every streamed delta) is checked: no tool-call
   JSON, no KB markup, no tool schema, no DEADLINE_EXCEEDED.
2. **Chat templates.** The project's real request recorded in step 1 (history, the KB context as its own
   system message, the tool definitions, a tool call and its result), sent through `OpenAIModel` with
   `MODEL_CONTEXT_PLACEMENT=auto` to one llama-server per template shipped in the sdist's `models/templates/`
   (`--chat-template-file`): accepted as sent, adapted to (what the adapter changed) or failed. By default
   (`COMPAT_TEMPLATE_MODE=render`) the server answers through its `/apply-template` endpoint — the same request
   parsing, template and tool handling as chat completions, without evaluating the prompt, which takes a minute
   per template on a shared CPU; `COMPAT_TEMPLATE_MODE=complete` generates for real.
3. **A short eval.** `support-eval evals/sample_kb.yaml --only ...` (a subset) against the same server.

Prints the template table, the cached-prefix numbers before and after, the scorecard and the wall time; writes
everything to `.cache/compat/last-run.json`. Exit status 1 when a template failed, a reply leaked internals or a
turn ended in DEADLINE_EXCEEDED. `COMPAT_TEMPLATES=glob` limits the templates, `COMPAT_SKIP=eval,templates,...`
skips steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the repository's packages
    sys.path.insert(0, str(ROOT))

from agent_service.adapters.openai_model import OpenAIModel  # noqa: E402
from agent_service.errors import ModelUnavailableError  # noqa: E402
from agent_service.model_port import ModelRequest, ModelResult  # noqa: E402
from agent_service.prompts import ContextPlacement  # noqa: E402
from devstack import SAMPLE_KB, ProcessStack, free_port, isolated_environ  # noqa: E402
from service_kit import auth  # noqa: E402
from support.v1 import agent_pb2, agent_pb2_grpc  # noqa: E402

CACHE = Path(os.environ.get("COMPAT_CACHE", ROOT / ".cache" / "compat"))
MODEL_NAME = "compat-model"
# A CPU server shared with other work: generous per-call time, one attempt, short replies.
AGENT_ENV = {
    "MODEL_TIMEOUT_SECONDS": "400",
    "MODEL_MAX_RETRIES": "0",
    "MODEL_MAX_TOKENS": "64",
    "TURN_DEADLINE_SECONDS": "900",
    "TURN_LEASE_SECONDS": "960",
    "OPENAI_TEMPERATURE": "0",
    "LOG_LEVEL": "WARNING",
}
CALL_TIMEOUT_SECONDS = 960.0
CUSTOMER = "cust-001"
# The README's "Try it with grpcurl" conversations, then a KB conversation for the prompt-cache measurement.
README_CONVERSATIONS: dict[str, list[str]] = {
    "c1": [
        "How long does express shipping take?",
        "Where is my order ORD-12345?",
        "This is ridiculous, I was promised next-day delivery!",
    ],
    "c2": ["Where is my order ORD-67890?"],
}
CACHE_CONVERSATION = [
    "How long does express shipping take?",
    "Can I return an item I already opened?",
    "Do you ship to Canada?",
    "How do I reset my password?",
]
EVAL_SUBSET = [
    "faq-express",
    "faq-refund-window",
    "faq-password",
    "offtopic-capital",
    "order-own-shipped",
    "order-other-customers",
    "esc-human-request",
    "esc-anger",
]
# What a customer must never see.
LEAKS = {
    "tool-call JSON": re.compile(r"\"(?:name|arguments|parameters)\"\s*:", re.IGNORECASE),
    "KB markup": re.compile(r"<\s*/?\s*untrusted[\s_-]*data", re.IGNORECASE),
    # The header prompts.py gives each KB chunk inside its fence: a reply holding it dumped the context.
    "KB context header": re.compile(r"(?m)^title: .*\ndocument: \S+"),
    "tool schema": re.compile(
        r"<\s*/?\s*tools\s*>|\"type\"\s*:\s*\"function\"|lookup_order_status\s*\(", re.I
    ),
}


def say(message: str) -> None:
    print(f"[compat] {message}", file=sys.stderr, flush=True)


# --- the server ---------------------------------------------------------------------------------------------


def build_server() -> Path:
    output = subprocess.run(
        ["bash", str(ROOT / "compat" / "build_llama_server.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(output.stdout.strip().splitlines()[-1])


def fetch_model() -> Path:
    output = subprocess.run(
        [sys.executable, str(ROOT / "compat" / "fetch_model.py")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(output.stdout.strip().splitlines()[-1])


def templates_dir(binary: Path) -> Path:
    version = binary.parent.name.removeprefix("bin-")
    return CACHE / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp" / "models" / "templates"


@dataclass
class LlamaServer:
    binary: Path
    model: Path
    template: Path | None = None
    log: Path | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self.port = free_port()
        command = [
            "nice", "-n", "10", str(self.binary), "-m", str(self.model), "--host", "127.0.0.1",
            "--port", str(self.port), "--jinja", "-c", "8192", "-np", "1", "-t", "2", "--alias", MODEL_NAME,
        ]  # fmt: skip
        if self.template is not None:
            command += ["--chat-template-file", str(self.template)]
        self.process = self._spawn(command)
        assert self.process is not None
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"llama-server exited with {self.process.returncode} (log: {self.log})"
                    )
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.port}/health") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.3)
        raise RuntimeError(f"llama-server did not become healthy (log: {self.log})")

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        log = subprocess.DEVNULL if self.log is None else self.log.open("ab")
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class RecordingProxy:
    """A pass-through in front of the server that keeps every chat request body (the project's real
    requests) and every response body's `timings` (llama.cpp's cache_n/prompt_n)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[dict[str, Any]] = []
        # One entry per chat request, in order: the response's llama.cpp timings ({} when it had none).
        self.timings: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        chat = request.path.endswith("/chat/completions")
        if chat:
            self.requests.append(json.loads(body))
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with self._session.request(
            request.method, self.upstream + request.path.removeprefix("/v1"), data=body, headers=headers
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            seen: list[bytes] = []
            async for block in upstream.content.iter_any():
                seen.append(block)
                await response.write(block)
            await response.write_eof()
        if chat:
            self.timings.append(_last_timings(b"".join(seen).decode("utf-8", "replace")))
        return response


def _last_timings(text: str) -> dict[str, Any]:
    """The last `timings` object in a response body (JSON or Server-Sent Events); {} when none."""
    found: dict[str, Any] = {}
    for line in text.splitlines() or [text]:
        payload = line.removeprefix("data: ").strip()
        if '"timings"' not in payload:
            continue
        with contextlib.suppress(ValueError):
            value = json.loads(payload)
            if isinstance(value, dict) and isinstance(value.get("timings"), dict):
                found = value["timings"]
    return found


class RenderShim:
    """Chat completions answered by the server's `/apply-template` (the same request parsing, chat template and
    tool handling as `/v1/chat/completions`, without the inference): a refusal comes back exactly as the
    server gives it, an accepted request as a short completion. Lets every template be checked in seconds on
    a CPU where evaluating the prompt takes a minute."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removesuffix("/v1")
        self.rendered: list[str] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.upstream}/apply-template", data=body, headers={"Content-Type": "application/json"}
            ) as upstream,
        ):
            text = await upstream.text()
            if upstream.status != 200:
                return web.Response(status=upstream.status, text=text, content_type="application/json")
        prompt = str(json.loads(text).get("prompt", ""))
        self.rendered.append(prompt)
        completion = {
            "id": "render",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL_NAME,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": len(prompt) // 4,
                "completion_tokens": 1,
                "total_tokens": len(prompt) // 4 + 1,
            },
        }
        return web.json_response(completion)


# --- 1. conversations through the real stack ----------------------------------------------------------------


@dataclass
class TurnOutcome:
    conversation: str
    message: str
    reply: str = ""
    error: str = ""
    fallback: bool = False
    tools: list[str] = field(default_factory=list)
    escalated: bool = False
    prompt_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0
    leaks: list[str] = field(default_factory=list)


def leaks_in(reply: str) -> list[str]:
    return [name for name, pattern in LEAKS.items() if pattern.search(reply)]


async def run_turn(
    stub: agent_pb2_grpc.AgentServiceStub,
    metadata: tuple[tuple[str, str], ...],
    conversation: str,
    message: str,
    stream: bool,
) -> TurnOutcome:
    outcome = TurnOutcome(conversation, message)
    started = time.monotonic()
    try:
        if stream:
            call = stub.StreamChat(
                agent_pb2.StreamChatRequest(conversation_id=conversation, message=message),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            deltas: list[str] = []
            final: Any = None
            async for event in call:
                kind = event.WhichOneof("event")
                if kind == "text_delta":
                    deltas.append(event.text_delta.text)
                elif kind == "final":
                    final = event.final
            assert final is not None
            outcome.leaks = leaks_in("".join(deltas))
            response: Any = final
        else:
            response = await stub.Chat(
                agent_pb2.ChatRequest(conversation_id=conversation, message=message),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
    except grpc.aio.AioRpcError as error:
        outcome.error = error.code().name
        outcome.seconds = time.monotonic() - started
        return outcome
    outcome.seconds = time.monotonic() - started
    outcome.reply = response.reply
    outcome.fallback = response.usage.fallback
    outcome.tools = [call.name for call in response.tool_calls]
    outcome.escalated = bool(response.escalation.ticket_id)
    outcome.prompt_tokens = response.usage.prompt_tokens
    outcome.cached_tokens = response.usage.cached_tokens
    outcome.leaks = sorted(set(outcome.leaks) | set(leaks_in(response.reply)))
    return outcome


async def conversations(
    stack: ProcessStack, placement: str, proxy_url: str, plan: Sequence[tuple[str, Sequence[str]]]
) -> list[TurnOutcome]:
    """The conversations of `plan` (name, messages) through an agent with `placement`."""
    await stack.start("agent", env={**AGENT_ENV, "OPENAI_BASE_URL": proxy_url, "OPENAI_MODEL": MODEL_NAME,
                                     "MODEL_CONTEXT_PLACEMENT": placement})  # fmt: skip
    assert stack.credentials is not None
    metadata = stack.credentials.metadata(auth.BACKEND, customer_id=CUSTOMER)
    outcomes: list[TurnOutcome] = []
    try:
        async with grpc.aio.insecure_channel(stack.addrs["agent"]) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
            for name, messages in plan:
                conversation = f"{placement}-{name}"
                for message in messages:
                    stream = conversation.endswith("-c2")  # the README streams c2
                    outcome = await run_turn(stub, metadata, conversation, message, stream)
                    say(
                        f"{placement:>6} {conversation}: {message[:40]!r} -> {outcome.error or 'ok'} "
                        f"{outcome.seconds:.1f}s tools={outcome.tools} fallback={outcome.fallback} "
                        f"cached={outcome.cached_tokens}/{outcome.prompt_tokens} reply={outcome.reply[:70]!r}"
                    )
                    outcomes.append(outcome)
    finally:
        stack.stop("agent")
    return outcomes


def cache_summary(requests: Sequence[dict[str, Any]], timings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The cache conversation's turns (the first model call of each turn: the one ending with the customer's
    message): llama-server's cache_n and prompt_n for each, and the mean share of the prompt served from the
    cache from the second turn on."""
    turns = [t for r, t in zip(requests, timings, strict=False) if r["messages"][-1].get("role") == "user"]
    per_turn = [(int(t.get("cache_n", 0)), int(t.get("prompt_n", 0))) for t in turns]
    later = [cached / (cached + fresh) for cached, fresh in per_turn[1:] if cached + fresh]
    return {
        "cache_n_prompt_n_per_turn": per_turn,
        "mean_cached_share_after_first": round(sum(later) / len(later), 3) if later else None,
    }


# --- 2. every chat template -----------------------------------------------------------------------------------


@dataclass
class TemplateOutcome:
    template: str
    outcome: str  # accepted | adapted | failed
    detail: str = ""
    seconds: float = 0.0


def replay_requests(recorded: Sequence[dict[str, Any]]) -> list[ModelRequest]:
    """From the requests the stack sent with `auto`, the last one that has everything a template must render: a
    history, the KB context as its own system message, the tool definitions, an assistant tool call and its tool
    result (else the last with history and the last with a tool result)."""

    def history(request: dict[str, Any]) -> bool:
        return any(m.get("role") == "assistant" and not m.get("tool_calls") for m in request["messages"])

    def tool_round(request: dict[str, Any]) -> bool:
        return any(m.get("role") == "tool" for m in request["messages"])

    both = [r for r in recorded if history(r) and tool_round(r)]
    groups = ([r for r in recorded if history(r)], [r for r in recorded if tool_round(r)])
    chosen = both[-1:] or [group[-1] for group in groups if group]
    return [
        ModelRequest(
            messages=tuple(request["messages"]), tools=tuple(request.get("tools") or ()), stream=False
        )
        for request in chosen
    ]


async def check_template(binary: Path, model: Path, template: Path, requests: Sequence[ModelRequest],
                         logs: Path) -> TemplateOutcome:  # fmt: skip
    started = time.monotonic()
    server = LlamaServer(binary, model, template, log=logs / f"template-{template.stem}.log")
    try:
        await server.start()
    except RuntimeError as error:
        return TemplateOutcome(template.name, "failed", f"server: {error}", time.monotonic() - started)
    render = os.environ.get("COMPAT_TEMPLATE_MODE", "render") == "render"
    shim = RenderShim(server.base_url)
    if render:
        await shim.start()
    adapter = OpenAIModel(
        MODEL_NAME,
        api_key=None,
        base_url=shim.base_url if render else server.base_url,
        temperature=0.0,
        timeout_seconds=240.0,
        max_tokens=8,
        max_retries=0,
        context_placement=ContextPlacement.AUTO,
    )
    details: list[str] = []
    failed = False
    try:
        for request in requests:
            try:
                result: ModelResult | None = None
                async for event in adapter.generate(request):
                    if isinstance(event, ModelResult):
                        result = event
                assert result is not None
            except ModelUnavailableError as error:
                failed = True
                cause = error.__cause__
                body = getattr(cause, "body", None) or str(cause)
                details.append(f"{type(cause).__name__}: {str(body)[:160]}")
    finally:
        await adapter.aclose()
        await shim.stop()
        server.stop()
    if adapter.learned_adaptations:
        details.insert(0, "adapted: " + ", ".join(sorted(adapter.learned_adaptations)))
    outcome = "failed" if failed else ("adapted" if adapter.learned_adaptations else "accepted")
    return TemplateOutcome(template.name, outcome, "; ".join(details), time.monotonic() - started)


# --- 3. the eval ------------------------------------------------------------------------------------------------


def run_eval(proxy_url: str, out: Path) -> tuple[int, str]:
    command = [str(Path(sys.executable).parent / "support-eval"), str(ROOT / "evals" / "sample_kb.yaml"),
               "--out", str(out), "--timeout", str(CALL_TIMEOUT_SECONDS)]  # fmt: skip
    for name in EVAL_SUBSET:
        command += ["--only", name]
    env = {**AGENT_ENV, "OPENAI_BASE_URL": proxy_url, "OPENAI_MODEL": MODEL_NAME}
    for key, value in env.items():
        command += ["--env", f"{key}={value}"]
    process = subprocess.run(
        command, cwd=ROOT, env=isolated_environ(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return process.returncode, process.stdout


# --- the run ----------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(server: LlamaServer) -> AsyncIterator[RecordingProxy]:
    await server.start()
    proxy = RecordingProxy(server.base_url)
    try:
        await proxy.start()
        yield proxy
    finally:
        await proxy.stop()
        server.stop()


def table(rows: Sequence[TemplateOutcome]) -> str:
    width = max([len(row.template) for row in rows] + [8])
    lines = [f"{'template':<{width}}  outcome   seconds  detail", "-" * (width + 40)]
    lines += [f"{r.template:<{width}}  {r.outcome:<8}  {r.seconds:7.1f}  {r.detail}" for r in rows]
    counts = {name: sum(r.outcome == name for r in rows) for name in ("accepted", "adapted", "failed")}
    lines.append(", ".join(f"{count} {name}" for name, count in counts.items()))
    return "\n".join(lines)


async def main_async(skip: set[str]) -> int:
    wall = time.monotonic()
    say("building llama-server (cached after the first run) ...")
    binary = await asyncio.to_thread(build_server)
    build_seconds = time.monotonic() - wall
    model = await asyncio.to_thread(fetch_model)
    say(f"server {binary}\n         model {model} ({build_seconds:.0f}s to get both)")
    workdir = Path(tempfile.mkdtemp(prefix="compat-"))
    logs = workdir / "logs"
    logs.mkdir()
    results: dict[str, Any] = {"server": str(binary), "model": str(model), "workdir": str(workdir)}
    problems: list[str] = []
    recorded: list[dict[str, Any]] = []

    def save() -> None:
        results["problems"] = problems
        results["wall_seconds"] = round(time.monotonic() - wall, 1)
        (CACHE / "last-run.json").write_text(json.dumps(results, indent=1))

    if "conversations" not in skip:
        async with serving(LlamaServer(binary, model, log=logs / "llama-server.log")) as proxy:
            async with ProcessStack(workdir / "data", environ=isolated_environ(), log_dir=logs) as stack:
                await stack.start_backends()
                await stack.ingest(SAMPLE_KB)
                runs: dict[str, list[TurnOutcome]] = {"system": [], "auto": []}
                cache: dict[str, dict[str, Any]] = {}
                # The cache conversation with the context in the system message (the layout before the
                # reorder) and with `auto`; then the README's conversations with `auto`.
                for placement in ("system", "auto"):
                    first = len(proxy.requests)
                    runs[placement] += await conversations(
                        stack, placement, proxy.base_url, [("cache", CACHE_CONVERSATION)]
                    )
                    cache[placement] = cache_summary(proxy.requests[first:], proxy.timings[first:])
                    results["cache"] = cache
                    save()
                first = len(proxy.requests)
                runs["auto"] += await conversations(
                    stack, "auto", proxy.base_url, list(README_CONVERSATIONS.items())
                )
                recorded = proxy.requests[first:]
            results["turns"] = {name: [asdict(o) for o in outcomes] for name, outcomes in runs.items()}
            for outcomes in runs.values():
                for o in outcomes:
                    if o.error:  # DEADLINE_EXCEEDED above all
                        problems.append(f"{o.conversation} {o.message[:30]!r}: {o.error}")
                    if o.leaks:
                        problems.append(f"{o.conversation} {o.message[:30]!r}: leaked {o.leaks}")
            (CACHE / "last-requests.json").write_text(json.dumps(recorded))
        save()

    if "templates" not in skip:
        if not recorded:
            saved = CACHE / "last-requests.json"
            recorded = json.loads(saved.read_text()) if saved.exists() else []
        requests = replay_requests(recorded)
        if not requests:
            problems.append("no recorded request to replay through the templates")
        pattern = os.environ.get("COMPAT_TEMPLATES", "*")
        templates = sorted(
            p for p in templates_dir(binary).glob("*.jinja") if fnmatch.fnmatch(p.name, pattern)
        )
        rows: list[TemplateOutcome] = []
        for template in templates:
            row = await check_template(binary, model, template, requests, logs)
            say(f"template {row.template}: {row.outcome} ({row.seconds:.0f}s) {row.detail[:160]}")
            rows.append(row)
            results["templates"] = [asdict(row) for row in rows]
            save()
        problems += [
            f"template {row.template} failed: {row.detail[:200]}" for row in rows if row.outcome == "failed"
        ]
        save()

    if "eval" not in skip:
        async with serving(LlamaServer(binary, model, log=logs / "llama-server-eval.log")) as proxy:
            say(f"eval: {len(EVAL_SUBSET)} conversations of evals/sample_kb.yaml ...")
            code, text = await asyncio.to_thread(run_eval, proxy.base_url, workdir / "eval.json")
        results["eval"] = {"exit": code, "scorecard": text}
        # 1: thresholds (set for the offline engine) missed, which a 0.5B model does; not a compat failure.
        if code not in (0, 1):
            problems.append(f"support-eval exited {code}")
        save()

    save()

    print()
    if "templates" in results:
        print(table([TemplateOutcome(**row) for row in results["templates"]]))
        print()
    for name, summary in results.get("cache", {}).items():
        print(f"prompt cache, MODEL_CONTEXT_PLACEMENT={name}: (cache_n, prompt_n) per turn "
              f"{summary['cache_n_prompt_n_per_turn']}, mean cached share from turn 2: "
              f"{summary['mean_cached_share_after_first']}")  # fmt: skip
    if "eval" in results:
        print()
        print(results["eval"]["scorecard"])
    print(f"\nwall time {results['wall_seconds']:.0f}s; results in {CACHE / 'last-run.json'}; logs in {logs}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("compat: " + ("FAILED" if problems else "OK"))
    if not problems and os.environ.get("COMPAT_KEEP") != "1":
        shutil.rmtree(workdir / "data", ignore_errors=True)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> None:
    skip = {part.strip() for part in os.environ.get("COMPAT_SKIP", "").split(",") if part.strip()}
    del argv
    raise SystemExit(asyncio.run(main_async(skip)))


if __name__ == "__main__":
    main()
