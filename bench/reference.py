"""The in-process reference: the seed article's monolith loop, for the benchmark's baselines.

One process does what the seed's `run_agent` does: retrieve from ChromaDB (PersistentClient, cosine space, the
project's offline MiniLM embedding), call the model with the tool definitions through `openai.AsyncOpenAI`,
run `lookup_order_status` against SQLite in the same process, feed the result back, call the model again and
return the reply. Nothing else: no guardrails, no persistence of the turn, no limits, no network hops besides
the model's. It talks to the same scripted model server as the stack, so the difference between the two is
the cost of the split (and of the hardening the stack adds).

    python -m bench.reference ingest --chroma-dir D --orders-db F kb/
    python -m bench.reference serve --chroma-dir D --orders-db F --base-url URL   # prints "ready", "warm"
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import chromadb
from chromadb.config import Settings
from openai import AsyncOpenAI, DefaultAioHttpClient

from retrieval_service.adapters.embedding import MiniLMEmbedding

COLLECTION = "support_docs"
MAX_CHUNK_TOKENS = 350
KB_SUFFIXES = {".md", ".markdown", ".txt", ".html", ".htm"}

SYSTEM_PROMPT = """You are a customer support agent for Example Store. Your job:
1. Answer questions using ONLY the provided knowledge base context. Do not make up policies.
2. Use the lookup_order_status tool when customers ask about their orders.
3. Use the escalate_to_human tool when:
   - The customer is angry or frustrated
   - You don't have enough context to answer confidently
   - The issue involves billing disputes, account security, or legal matters
   - The customer explicitly asks for a human
Be concise, helpful, and honest. If you're unsure, say so and escalate."""

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order_status",
            "description": "Look up the current status of a customer order by order ID",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "The order ID, e.g. ORD-12345"}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "escalate_to_human",
            "description": (
                "Transfer the conversation to a human support agent when the issue is complex, sensitive, "
                "or you are not confident in your answer"
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "reason": {"type": "string", "description": "Why the conversation needs human attention"},
                    "priority": {
                        "type": "string",
                        "enum": ["low", "medium", "high"],
                        "description": "Urgency",
                    },
                },
                "required": ["reason", "priority"],
            },
        },
    },
]

DEMO_ORDERS = (
    ("ORD-12345", "cust-001", "shipped", "1Z999AA10123456784", "UPS", "2026-02-18"),
    ("ORD-67890", "cust-001", "processing", None, None, "2026-02-20"),
)


@dataclass(frozen=True)
class TurnResult:
    reply: str
    tool_calls: int
    model_calls: int


def chunk_text(text: str, embedding: MiniLMEmbedding, max_tokens: int = MAX_CHUNK_TOKENS) -> list[str]:
    """Paragraphs packed into chunks of at most `max_tokens` word pieces (a long paragraph is its own chunk)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in (part.strip() for part in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        tokens = embedding.count_tokens(paragraph)
        if current and size + tokens > max_tokens:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += tokens
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def open_collection(chroma_dir: Path, embedding: MiniLMEmbedding) -> Any:
    client = chromadb.PersistentClient(path=str(chroma_dir), settings=Settings(anonymized_telemetry=False))
    return client.get_or_create_collection(
        name=COLLECTION,
        embedding_function=cast(Any, embedding),
        configuration={"hnsw": {"space": "cosine"}},
    )


def ingest(chroma_dir: Path, kb_dir: Path, embedding: MiniLMEmbedding | None = None) -> int:
    """Chunks every document under `kb_dir` into the reference collection; returns the chunk count."""
    embedding = embedding or MiniLMEmbedding()
    collection = open_collection(chroma_dir, embedding)
    ids: list[str] = []
    documents: list[str] = []
    metadatas: list[dict[str, str | int | float | bool | None]] = []
    for path in sorted(kb_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in KB_SUFFIXES:
            continue
        source = str(path.relative_to(kb_dir))
        for index, chunk in enumerate(chunk_text(path.read_text(errors="replace"), embedding)):
            ids.append(hashlib.sha256(f"{source}\0{index}\0{chunk}".encode()).hexdigest()[:32])
            documents.append(chunk)
            metadatas.append({"source": source})
    if documents:
        collection.upsert(ids=ids, documents=documents, metadatas=metadatas)
    return len(documents)


def create_orders_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, "
            "status TEXT NOT NULL, tracking_number TEXT, carrier TEXT, eta TEXT)"
        )
        db.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?)", DEMO_ORDERS)


class ReferenceAgent:
    """The seed's run_agent, async, with the project's embedding, ChromaDB and the scripted model server."""

    def __init__(
        self,
        chroma_dir: Path,
        orders_db: Path,
        base_url: str,
        model: str = "bench-scripted",
        http_client: str = "aiohttp",
        n_results: int = 4,
        max_tool_rounds: int = 5,
    ) -> None:
        self.embedding = MiniLMEmbedding()
        self.collection = open_collection(chroma_dir, self.embedding)
        self.db = sqlite3.connect(orders_db, check_same_thread=False)
        self.model_client = AsyncOpenAI(
            base_url=base_url,
            api_key="bench-not-a-secret",
            http_client=DefaultAioHttpClient() if http_client == "aiohttp" else None,
            max_retries=0,
            timeout=30.0,
        )
        self.model = model
        self.n_results = n_results
        self.max_tool_rounds = max_tool_rounds

    def retrieve_context(self, query: str) -> str:
        results = self.collection.query(query_texts=[query], n_results=self.n_results)
        documents = results["documents"][0] if results["documents"] else []
        return "\n---\n".join(documents)

    def lookup_order_status(self, customer_id: str, order_id: str) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT order_id, status, tracking_number, carrier, eta FROM orders WHERE order_id = ? AND customer_id = ?",
            (order_id, customer_id),
        ).fetchone()
        if row is None:
            return {"error": f"Order {order_id} not found"}
        return dict(zip(("order_id", "status", "tracking_number", "carrier", "eta"), row, strict=True))

    def _execute(self, customer_id: str, name: str, arguments: str) -> dict[str, Any]:
        try:
            args = json.loads(arguments)
        except json.JSONDecodeError:
            return {"error": "arguments are not valid JSON"}
        if name == "lookup_order_status":
            return self.lookup_order_status(customer_id, str(args.get("order_id", "")))
        if name == "escalate_to_human":
            return {"ticket_id": "TKT-9001", "status": "queued", "estimated_wait": "5 minutes"}
        return {"error": f"Unknown tool: {name}"}

    async def run_turn(self, message: str, history: list[dict[str, Any]], customer_id: str) -> TurnResult:
        context = self.retrieve_context(message)
        messages: list[Any] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "system", "content": f"Knowledge base context:\n{context}"},
            *history,
            {"role": "user", "content": message},
        ]
        tool_calls = 0
        for round_index in range(self.max_tool_rounds):
            response = await self.model_client.chat.completions.create(
                model=self.model,
                messages=messages,
                tools=cast(Any, TOOLS),
                tool_choice="auto",
                temperature=0.3,
            )
            reply = response.choices[0].message
            if not reply.tool_calls:
                text = reply.content or ""
                history.append({"role": "user", "content": message})
                history.append({"role": "assistant", "content": text})
                return TurnResult(text, tool_calls, round_index + 1)
            messages.append(reply.model_dump(exclude_none=True))
            for call in reply.tool_calls:
                function = getattr(call, "function", None)
                if function is None:
                    continue
                result = self._execute(customer_id, function.name, function.arguments)
                tool_calls += 1
                messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
        return TurnResult(
            "I'm having trouble processing your request. Let me connect you with a human agent.",
            tool_calls,
            self.max_tool_rounds,
        )

    async def first_token_ns(self, message: str) -> int | None:
        """Streams one answer (after retrieval, as a turn would); time.monotonic_ns() at the first text delta."""
        context = self.retrieve_context(message)
        messages: list[Any] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "system", "content": f"Knowledge base context:\n{context}"},
            {"role": "user", "content": message},
        ]
        stream = await self.model_client.chat.completions.create(
            model=self.model,
            messages=messages,
            tools=cast(Any, TOOLS),
            tool_choice="auto",
            temperature=0.3,
            stream=True,
        )
        first: int | None = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic_ns()
        return first

    async def close(self) -> None:
        await self.model_client.close()
        self.db.close()


async def _serve(args: argparse.Namespace) -> None:
    agent = ReferenceAgent(args.chroma_dir, args.orders_db, args.base_url, http_client=args.http_client)
    print("ready", flush=True)
    history: list[dict[str, Any]] = []
    await agent.run_turn("Where is my order ORD-12345?", history, "cust-001")
    print("warm", flush=True)
    # Idle until the benchmark closes stdin (or terminates the process).
    await asyncio.to_thread(sys.stdin.read)
    await agent.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The seed's monolith loop, for benchmark baselines.")
    commands = parser.add_subparsers(dest="command", required=True)
    ingest_parser = commands.add_parser("ingest", help="chunk and embed a knowledge base folder")
    serve_parser = commands.add_parser("serve", help="build, print 'ready', run one turn, print 'warm', idle")
    for sub in (ingest_parser, serve_parser):
        sub.add_argument("--chroma-dir", type=Path, required=True)
        sub.add_argument("--orders-db", type=Path, required=True)
    ingest_parser.add_argument("kb", type=Path)
    serve_parser.add_argument("--base-url", required=True)
    serve_parser.add_argument("--http-client", choices=("aiohttp", "httpx"), default="aiohttp")
    args = parser.parse_args(argv)
    if args.command == "ingest":
        create_orders_db(args.orders_db)
        print(ingest(args.chroma_dir, args.kb), flush=True)
    else:
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
