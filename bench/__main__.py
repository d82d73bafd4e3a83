"""Run the benchmarks: ``python -m bench run --quick`` or ``python -m bench run --full``.

A complete run writes its results to ``docs/benchmarks.md`` (the section
between the result markers) and to ``bench/results/<mode>.json``. A run
limited with ``--only`` prints its section instead of writing the page,
unless ``--merge`` puts its sections into the last run of the same mode.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import secrets
import shlex
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from bench import backplane, chatpath, churn, connections, fanout
from bench.measure import PROJECT_DIR, machine_description, wait_for_quiet
from bench.report import render, write_section

logger = logging.getLogger("bench")

SECTIONS = ("fanout", "connections", "churn", "chat", "profile", "backplane")
RESULT_KEYS = {"profile": "profiles"}
"""Key of a section in the results where it differs from the section's name."""
DOCS_PAGE = PROJECT_DIR / "docs" / "benchmarks.md"
RESULTS_DIR = PROJECT_DIR / "bench" / "results"


@dataclasses.dataclass
class Plans:
    """Every plan of one mode."""

    fanout: list[fanout.FanoutPlan]
    connections: connections.ConnectionsPlan
    churn: churn.ChurnPlan
    chat: chatpath.ChatPlan
    backplane: backplane.BackplanePlan
    profile_seconds: float
    profile_servers: tuple[str, ...]


def plans_for(mode: str) -> Plans:
    """Return the plans of ``quick`` (about 3 minutes) or ``full`` (about 20) mode."""
    if mode == "quick":
        return Plans(
            fanout=[fanout.FanoutPlan(deliveries_per_burst=150_000, latency_seconds=3.0)],
            connections=connections.ConnectionsPlan(
                levels=(1000,), variants=(("kilo", True), ("kilo", False), ("ws", False)),
            ),
            churn=churn.ChurnPlan(seconds=1.5),
            chat=chatpath.ChatPlan(messages=100),
            backplane=backplane.BackplanePlan(subscriber_counts=(1000,),
                                              deliveries_per_burst=150_000, latency_seconds=3.0),
            profile_seconds=5.0,
            profile_servers=("kilo",),
        )
    return Plans(
        fanout=[
            fanout.FanoutPlan(deliveries_per_burst=300_000, latency_seconds=10.0, repeats=3),
            # Browsers and the SDK offer permessage-deflate, and both servers accept it.
            fanout.FanoutPlan(servers=("kilo", "ws"), sizes=(256,), offer_deflate=True,
                              deliveries_per_burst=100_000, latency_seconds=10.0, repeats=2),
        ],
        connections=connections.ConnectionsPlan(),
        churn=churn.ChurnPlan(seconds=5.0, profile_seconds=5.0),
        chat=chatpath.ChatPlan(messages=1000, push_off_databases=("sqlite",),
                               profile_seconds=10.0),
        backplane=backplane.BackplanePlan(deliveries_per_burst=300_000, latency_seconds=10.0,
                                          repeats=3),
        profile_seconds=10.0,
        profile_servers=("kilo", "ws"),
    )


def run(mode: str, sections: tuple[str, ...], quiet_wait: float) -> dict[str, Any]:
    """Run the chosen sections of one mode and return every result.

    Before each section the driver waits up to ``quiet_wait`` seconds for
    processes outside the benchmark to go quiet (see ``wait_for_quiet``).
    """
    plans = plans_for(mode)
    # One secret per run; every token of the run is signed with it.
    secret = secrets.token_urlsafe(48)
    results: dict[str, Any] = {"mode": mode, "machine": machine_description()}

    def profile_fanout() -> list[dict[str, Any]]:
        plan = fanout.FanoutPlan()
        return [
            fanout.profile_server(plan, name, secret, subscribers=1000, size=256,
                                  seconds=plans.profile_seconds)
            for name in plans.profile_servers
        ]

    steps: list[tuple[str, str, Callable[[], Any]]] = [
        ("fanout", "fanout",
         lambda: [row for plan in plans.fanout for row in fanout.run(plan, secret)]),
        ("connections", "connections", lambda: connections.run(plans.connections, secret)),
        ("churn", "churn", lambda: churn.run(plans.churn, secret)),
        ("chat", "chat", lambda: chatpath.run(plans.chat)),
        ("profile", RESULT_KEYS["profile"], profile_fanout),
        ("backplane", "backplane", lambda: backplane.run(plans.backplane, secret)),
    ]
    for section, key, measure in steps:
        if section not in sections:
            continue
        share = wait_for_quiet(quiet_wait, logger=logger)
        results.setdefault("others_before", {})[section] = share
        try:
            results[key] = measure()
        except Exception as exc:
            # One failed section must not discard the others' figures.
            logger.exception("section %s failed", section)
            results.setdefault("errors", {})[section] = f"{type(exc).__name__}: {exc}"
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark kilo_web's realtime path against bare websockets and "
                    "python-socketio, on loopback.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the benchmarks")

    mode = run_parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="short run, about 3 minutes on a quiet machine (the default)")
    mode.add_argument("--full", action="store_const", dest="mode", const="full",
                      help="every level and variant, about 20 minutes on a quiet machine")
    run_parser.set_defaults(mode="quick")

    run_parser.add_argument(
        "--only", default="",
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)}; "
             "the results are printed, not written to docs/benchmarks.md, unless --merge",
    )
    run_parser.add_argument(
        "--merge", action="store_true",
        help="with --only: replace those sections in the last run of the same mode "
             "(bench/results/<mode>.json) and write docs/benchmarks.md again",
    )
    run_parser.add_argument(
        "--quiet-wait", type=float, default=120.0,
        help="seconds to wait before each section for other processes to go quiet "
             "(default 120); 0 measures at once",
    )
    run_parser.add_argument("--log-level", default="INFO",
                            help="logging level of the driver and workers (default INFO)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kilo_web").setLevel(logging.WARNING)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = [name for name in only if name not in SECTIONS]
    if unknown:
        print(f"error: unknown section {', '.join(unknown)}; use {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    results_file = RESULTS_DIR / f"{args.mode}.json"
    if args.merge and not only:
        print("error: --merge needs --only with the sections to run again", file=sys.stderr)
        return 2
    if args.merge and not results_file.exists():
        print(f"error: {results_file} not found; run the whole {args.mode} mode first",
              file=sys.stderr)
        return 2

    started = time.monotonic()
    results = run(args.mode, only or SECTIONS, args.quiet_wait)
    results["seconds"] = time.monotonic() - started
    argv_text = " ".join(shlex.quote(part) for part in (argv if argv is not None else sys.argv[1:]))
    results["command"] = f".venv/bin/python -m bench {argv_text}"
    if args.merge:
        results = merge(json.loads(results_file.read_text()), results, only)
    elif only:
        print(render(results))
        return 0

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    write_section(DOCS_PAGE, render(results))
    logger.info("wrote %s and %s in %.0f s", DOCS_PAGE.relative_to(PROJECT_DIR),
                results_file.relative_to(PROJECT_DIR), time.monotonic() - started)
    return 0


def merge(previous: dict[str, Any], rerun: dict[str, Any],
          sections: tuple[str, ...]) -> dict[str, Any]:
    """Put the re-run ``sections`` into ``previous`` and note the re-run there."""
    merged = dict(previous)
    for section in sections:
        key = RESULT_KEYS.get(section, section)
        merged.pop(key, None)
        if key in rerun:
            merged[key] = rerun[key]
        for field in ("others_before", "errors"):
            values = dict(merged.get(field, {}))
            values.pop(section, None)
            if section in rerun.get(field, {}):
                values[section] = rerun[field][section]
            merged[field] = values
    merged["reruns"] = [*previous.get("reruns", []), {
        "command": rerun["command"],
        "date": rerun["machine"]["date"],
        "commit": rerun["machine"]["commit"],
        "sections": list(sections),
    }]
    return merged


if __name__ == "__main__":
    sys.exit(main())
