"""`python -m bench [--quick] [--only NAME ...]`: start everything on loopback, run the scenarios, print the
table, write `bench/results.json`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.report import Figure, machine_info, render_table, results_document, skipped, write_results
from bench.scenarios import SCENARIOS, BenchContext, Settings
from bench.stack import REPO_ROOT, BenchStack

logger = logging.getLogger(__name__)

DEFAULT_OUT = REPO_ROOT / "bench" / "results.json"


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer turns and a shorter capacity run (~3 min)")
    size.add_argument("--toy", action="store_true", help="toy sizes for the smoke test; numbers mean nothing")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), metavar="NAME", help="run only these")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results JSON (default bench/results.json)"
    )
    parser.add_argument("--kb", type=Path, default=REPO_ROOT / "kb", help="knowledge base folder to ingest")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the services (default INFO)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (data and service logs)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run the services under pyinstrument and write one text profile per process to DIR",
    )
    return parser.parse_args(argv)


def settings_for(args: argparse.Namespace) -> Settings:
    if args.toy:
        return Settings.toy()
    if args.quick:
        return Settings.quick()
    return Settings.full()


async def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    settings = settings_for(args)
    names = [name for name in SCENARIOS if not args.only or name in args.only]
    machine = machine_info(REPO_ROOT, argv)
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="support-bench-"))
    stack = BenchStack.in_run_dir(run_dir, log_level=args.log_level, profile_dir=args.profile)
    ctx = BenchContext(settings=settings, stack=stack, kb_dir=args.kb.resolve(), run_dir=run_dir)
    figures: list[Figure] = []
    timings: dict[str, dict[str, float]] = {}
    failed = False
    _say(f"run directory {run_dir}; scenarios: {', '.join(names)}")
    try:
        for name in names:
            _say(f"{name} ...")
            scenario_started = time.monotonic()
            load_at_start = os.getloadavg()[0]
            try:
                produced = await SCENARIOS[name](ctx)
                stack.check_alive()
            except Exception as error:  # one broken scenario must not take the others down
                failed = True
                _say(f"{name} failed: {error}")
                logger.debug("scenario %s failed", name, exc_info=True)
                traceback.print_exc(file=sys.stderr)
                produced = [skipped(name, "(scenario failed)", "", f"{type(error).__name__}: {error}"[:300])]
                # A failed scenario may leave a service in a bad state: the next one starts it afresh.
                stack.stop_services()
            figures.extend(produced)
            seconds = time.monotonic() - scenario_started
            timings[name] = {"seconds": round(seconds, 1), "load_1m_at_start": round(load_at_start, 2)}
            _say(f"{name} done in {seconds:.1f} s (1-min load average at its start {load_at_start:.2f})")
    finally:
        await stack.close()
    elapsed = time.monotonic() - started
    settings_doc = {
        **asdict(settings),
        "scenarios": names,
        "log_level": args.log_level,
        "kb": str(args.kb),
        "profile": str(args.profile) if args.profile else None,
    }
    document = results_document(figures, machine, settings_doc, elapsed)
    document["scenario_runs"] = timings
    write_results(args.out, document)
    print()
    print(render_table(figures))
    print()
    load = machine["load_average_at_start"]
    print(
        f"{machine['cpu_count']} x {machine['cpu_model']}, Python {machine['python']}, load average at start "
        f"{load[0]:.2f}; {elapsed:.0f} s; results in {args.out}"
    )
    if args.keep or failed:
        print(f"run directory kept (data and service logs): {run_dir}")
    else:
        _remove(run_dir)
    return 1 if failed else 0


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(arguments)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(run(args, arguments)))
