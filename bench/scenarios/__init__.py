"""The benchmark scenarios, one module each. Each takes the run's context and returns its figures.

| scenario  | what it measures                                                                      |
|-----------|---------------------------------------------------------------------------------------|
| startup   | launch of all three services -> all SERVING (existing KB); idle RSS of the three       |
| overhead  | sequential Chat turns on a zero-latency model vs the in-process seed loop (interleaved) |
| streaming | model's first content token -> caller's first StreamChat text_delta                     |
| capacity  | N conversations, model latency L per call, 2 calls per turn; stack vs the seed loop     |
| shedding  | MAX_CONCURRENT_TURNS small, a burst above it: RESOURCE_EXHAUSTED and how fast           |
| floors    | one gRPC round trip, one openai client call vs a raw POST, one embedding, one Chroma query |
| retrieval | `python -m bench.retrieval` (ingest, Search at 100k chunks vs its in-process floor)     |
| watch     | human reply -> customer's WatchConversation event (p95); memory of idle watch streams   |
"""

from __future__ import annotations

from bench.scenarios.capacity import run_capacity
from bench.scenarios.context import BenchContext, Scenario, Settings
from bench.scenarios.floors import run_floors
from bench.scenarios.overhead import run_overhead
from bench.scenarios.retrieval import run_retrieval
from bench.scenarios.shedding import run_shedding
from bench.scenarios.startup import run_startup
from bench.scenarios.streaming import run_streaming
from bench.scenarios.watch import run_watch

__all__ = ["SCENARIOS", "BenchContext", "Scenario", "Settings"]

SCENARIOS: dict[str, Scenario] = {
    "startup": run_startup,
    "overhead": run_overhead,
    "streaming": run_streaming,
    "capacity": run_capacity,
    "shedding": run_shedding,
    "floors": run_floors,
    "retrieval": run_retrieval,
    "watch": run_watch,
}
