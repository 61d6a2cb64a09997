"""`support-eval SUITE`: score the agent on a suite of labelled conversations.

Exit status: 0 every configured threshold met; 1 a threshold missed (or, with --strict, any failed
expectation); 2 the suite or the arguments are invalid; 3 the stack could not be started or reached, or the
knowledge base could not be ingested.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from service_kit import auth
from service_kit.env import ConfigError
from support_eval import driver, kb, report, scorer
from support_eval.records import ConversationRecord
from support_eval.suite import Suite, SuiteError, load_suite

if TYPE_CHECKING:
    from devstack import ProcessStack

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USAGE = 2
EXIT_STACK = 3

logger = logging.getLogger(__name__)


class EvalError(RuntimeError):
    """The run could not produce results (stack, ingestion or connection failure)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="support-eval",
        description="Replay labelled conversations through AgentService and score retrieval, tools and hand-off.",
    )
    parser.add_argument("suite", type=Path, help="suite file (YAML or JSON), e.g. evals/sample_kb.yaml")
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="a running AgentService instead of starting a private stack (its retrieval service should be "
        "dedicated to eval; see --retrieval-addr, --prune)",
    )
    parser.add_argument(
        "--retrieval-addr",
        metavar="HOST:PORT",
        help="with --target: the RetrievalService to ingest the KB into",
    )
    parser.add_argument("--no-ingest", action="store_true", help="with --target: the KB is already ingested")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="with --target: after ingesting, DELETE every document that is not in the suite's KB",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (text to stderr)"
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the JSON result to FILE")
    parser.add_argument("--baseline", type=Path, metavar="FILE", help="a JSON result to compare against")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any expectation failed")
    parser.add_argument(
        "--timeout", type=float, default=driver.CHAT_TIMEOUT_SECONDS, help="seconds per Chat call"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="conversations in flight at once (default 1)"
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="ID", help="run only this conversation"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the private stack's services (the caller's environment is passed through)",
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the private stack's data and logs folder"
    )
    return parser


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SuiteError(f"--env: expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def _say(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


async def _ingest(
    retrieval_addr: str, files: Sequence[kb.KbFile], prune: bool, auth_config: auth.AuthConfig
) -> None:
    summary = await kb.ingest(retrieval_addr, files, prune_others=prune, auth_config=auth_config)
    _say(
        f"ingested {summary.documents} documents into {retrieval_addr}: {summary.added} added, "
        f"{summary.updated} updated, {summary.unchanged} unchanged, {len(summary.rejected)} rejected"
        + (f", {summary.deleted} other documents deleted" if prune else "")
    )
    for rejected in summary.rejected:
        _say(f"  rejected {rejected}")


@contextlib.asynccontextmanager
async def private_stack(extra_env: Mapping[str, str], keep_dir: bool) -> AsyncIterator[ProcessStack]:
    """Retrieval and tools as subprocesses on free loopback ports, SERVING; the caller starts the agent once the
    KB is ingested. A fresh run folder each time: DATA_DIR (a fresh collection, conversation, order and ticket
    store) in `data/`, each service's log beside it (its tail is shown if one fails to start). The services get
    the caller's environment (OPENAI_* and the agent's model settings pass through), then `extra_env`."""
    try:  # the launcher is a developer tool of the repository checkout; service images do not carry it
        from devstack import ProcessStack, StackError
    except ImportError as error:
        raise EvalError(f"a private stack needs the repository checkout ({error}); use --target") from error

    workdir = Path(tempfile.mkdtemp(prefix="support-eval-"))
    try:
        async with ProcessStack(workdir / "data", env=extra_env, log_dir=workdir) as stack:
            if keep_dir:
                _say(f"data and service logs in {workdir}")
            await stack.start_backends()
            yield stack
    except StackError as error:
        raise EvalError(str(error)) from error
    finally:
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


async def collect(
    suite: Suite,
    args: argparse.Namespace,
    files: Sequence[kb.KbFile],
    run_id: str,
    extra_env: Mapping[str, str],
) -> tuple[list[ConversationRecord], str]:
    """Starts or targets a stack, ingests the KB, replays the suite. Returns the records and the agent address."""
    count = len(args.only) if args.only else len(suite.conversations)
    try:
        if args.target:
            # Someone else's stack: the tokens from AUTH_TOKEN / AUTH_TOKENS_<ROLE> / AUTH_CREDENTIALS_FILE.
            if not args.no_ingest:
                kb_admin = auth.AuthConfig.for_caller(auth.KB_ADMIN)
                await _ingest(args.retrieval_addr, files, args.prune, kb_admin)
            _say(f"running {count} conversations against {args.target}")
            records = await driver.run_suite(
                suite,
                args.target,
                run_id,
                args.timeout,
                args.concurrency,
                args.only,
                auth_config=auth.AuthConfig.for_caller(auth.BACKEND),
            )
            return records, args.target
        _say("starting a private stack (retrieval, tools, agent) ...")
        async with private_stack(extra_env, keep_dir=args.keep_data) as stack:
            credentials = stack.credentials
            assert credentials is not None
            await _ingest(stack.addrs["retrieval"], files, False, credentials.caller(auth.KB_ADMIN))
            await stack.start("agent")
            agent_addr = stack.addrs["agent"]
            _say(f"running {count} conversations against {agent_addr}")
            records = await driver.run_suite(
                suite,
                agent_addr,
                run_id,
                args.timeout,
                args.concurrency,
                args.only,
                auth_config=credentials.caller(auth.BACKEND),
            )
            return records, "private stack"
    except (kb.KnowledgeBaseError, ConfigError) as error:
        raise EvalError(str(error)) from error
    except (grpc.aio.AioRpcError, TimeoutError) as error:
        raise EvalError(f"cannot reach the agent: {error}") from error


def run(args: argparse.Namespace) -> int:
    if args.target and not args.no_ingest and not args.retrieval_addr:
        raise SuiteError("--target needs --retrieval-addr to ingest the KB (or --no-ingest)")
    if (args.prune or args.retrieval_addr or args.no_ingest) and not args.target:
        raise SuiteError("--retrieval-addr, --no-ingest and --prune only apply with --target")
    if args.timeout <= 0 or args.concurrency < 1:
        raise SuiteError("--timeout must be positive and --concurrency at least 1")
    extra_env = _parse_env(args.env)
    suite = load_suite(args.suite)
    unknown = sorted(set(args.only) - {conversation.id for conversation in suite.conversations})
    if unknown:
        raise SuiteError(f"--only: no conversation {unknown[0]!r} in {args.suite}")
    baseline: dict[str, Any] | None = None
    if args.baseline is not None:
        try:
            baseline = json.loads(args.baseline.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise SuiteError(f"--baseline: cannot read {args.baseline}: {error}") from error
    try:
        files = kb.read_kb(suite.kb_dir)
    except kb.KnowledgeBaseError as error:
        raise SuiteError(str(error)) from error

    run_id = driver.new_run_id()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    clock = time.monotonic()
    records, target = asyncio.run(collect(suite, args, files, run_id, extra_env))
    info = report.RunInfo(
        run_id, started_at, kb.kb_version(files), len(files), target, time.monotonic() - clock
    )

    scorecard = scorer.score(suite, records)
    configured = dict(suite.thresholds)
    if args.only:
        # A partial run cannot judge metrics its conversations do not exercise.
        skipped = sorted(name for name in configured if scorecard.metrics[name].value is None)
        for name in skipped:
            del configured[name]
        if skipped:
            _say(
                f"--only: thresholds on metrics these conversations do not exercise skipped: {', '.join(skipped)}"
            )
    thresholds = scorer.check_thresholds(scorecard, configured)
    result = report.build_result(suite, scorecard, records, thresholds, info)
    text = report.format_scorecard(suite, scorecard, records, thresholds, info)
    if baseline is not None:
        text += "\n" + report.format_baseline_diff(result, baseline)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.dumps(result) + "\n", "utf-8")
    if args.json and args.out is None:
        print(text, file=sys.stderr)
        print(report.dumps(result))
    else:
        print(text)
        if args.out is not None:
            print(f"\nresult written to {args.out}")
    if not result["passed"] or (args.strict and scorecard.failed_turns):
        return EXIT_THRESHOLD
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except SuiteError as error:
        print(f"support-eval: {error}", file=sys.stderr)
        code = EXIT_USAGE
    except EvalError as error:
        print(f"support-eval: {error}", file=sys.stderr)
        code = EXIT_STACK
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
