"""The command line: ``python -m acmews.bench URL [options]`` (and ``--worker`` for the
load processes it starts).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError

from acmews.bench.connections import SUBPROTOCOLS, BenchError, Target
from acmews.bench.ledger import Result
from acmews.bench.progress import Progress
from acmews.bench.report import compare_summary, format_compare, format_report, report
from acmews.bench.scenarios import RUNNERS, BenchOptions, Run
from acmews.bench.workers import worker_main

__all__ = [
    "MODES",
    "SCENARIOS",
    "build_parser",
    "main",
    "parse_options",
    "run",
]


SCENARIOS = ("retrieve", "create-cin", "group", "fanout", "cluster", "idle")
MODES = ("sequential", "pipelined")


#: the name the command goes by in its messages (``acmews bench`` from the acmews command)
PROG = "python -m acmews.bench"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Load generator for oneM2M over WebSocket (TS-0020). Exit code 1 when "
        "any request was never answered, answered twice or answered with a foreign rqi; "
        "2 when the run could not be done.",
    )
    p.add_argument(
        "url",
        nargs="+",
        help="ws://host:port[/path] of the CSE; several: the nodes of one CSE (twistd acmews "
        "--cluster), the connections spread over them in turn (set-up and clean-up on the "
        "first); the cluster scenario needs two or more",
    )
    p.add_argument(
        "--originator",
        default="CAdmin",
        help="X-M2M-Origin and fr (CAdmin); '{k}' is replaced by the connection number - "
        "servers close an older connection of the same originator (ACME does, acmews too)",
    )
    p.add_argument("--target", default="cse-in", help="target resource (the CSEBase, cse-in)")
    p.add_argument("--scenario", choices=SCENARIOS, default="retrieve")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="sequential",
        help="sequential: one request in flight per connection; pipelined: --window",
    )
    p.add_argument("--window", type=int, default=64, help="in flight per connection (64)")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="connections in all (for fanout: AEs; for idle: idle connections)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load processes (retrieve/create-cin/idle), each with its own reactor (and its "
        "own open-file limit: idle needs one per ~19,000 connections)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="stop after this many requests (fanout: rounds) (2000)",
    )
    p.add_argument("--duration", type=float, default=5.0, help="stop after this many s (5)")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="a request unanswered after this many s counts as never answered (5)",
    )
    p.add_argument("--serialization", choices=tuple(SUBPROTOCOLS), default="json")
    p.add_argument("--json", dest="json_file", metavar="FILE", help="write the result as JSON")
    p.add_argument(
        "--server-pid",
        type=int,
        metavar="PID",
        help="local server process: report its CPU us/request (and RSS for idle)",
    )
    p.add_argument("--compare", metavar="URL2", help="alternate runs against a second server")
    p.add_argument("--compare-pid", type=int, metavar="PID2", help="server pid of URL2")
    p.add_argument(
        "--register",
        action="store_true",
        help="retrieve/create-cin: first register one AE per connection as --originator "
        "(use '{k}', e.g. Cbench{k}), delete them at the end",
    )
    p.add_argument(
        "--members",
        type=int,
        default=100,
        help="group: the containers each request is fanned out to (through the group's fopt) "
        "(100)",
    )
    p.add_argument(
        "--member-url",
        metavar="URL",
        help="group: make the members on the CSE at URL instead (one registered to the CSE "
        "under load, which reaches them over its CSE-to-CSE link), with --member-cse",
    )
    p.add_argument(
        "--member-cse",
        metavar="ID",
        help="group, with --member-url: that CSE's CSEBase as the CSE under load addresses it "
        "(e.g. /id-mn/cse-mn)",
    )
    p.add_argument(
        "--kill-pid",
        type=int,
        metavar="PID",
        help="cluster: kill this node's process (SIGKILL; not the first URL's) before round "
        "--kill-after; its AEs reconnect to the next node, and every notification must still "
        "reach every AE (at least once)",
    )
    p.add_argument(
        "--kill-after",
        type=int,
        default=1,
        metavar="N",
        help="cluster, with --kill-pid: rounds before the kill (1)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=0,
        metavar="S",
        help="idle: register S of the connections, chosen at random, as AEs subscribed to "
        "one container, and after the hold check that one contentInstance notifies each (0)",
    )
    p.add_argument(
        "--node-pids",
        type=_pids,
        default=[],
        metavar="PID,PID,...",
        help="idle: the pids of the nodes, one per URL in order: RSS growth per node",
    )
    p.add_argument("--rounds", type=int, default=3, help="A/B pairs with --compare (3)")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the latency histogram and the throughput over time (both endpoints with "
        "--compare) into FILE.png; needs matplotlib (pip install 'acmews[plot]')",
    )
    return p


def _pids(text: str) -> list[int]:
    try:
        pids = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of pids: {text!r}") from None
    if any(p < 1 for p in pids):
        raise argparse.ArgumentTypeError(f"not a list of pids: {text!r}")
    return pids


def parse_options(argv: Sequence[str], prog: str = PROG) -> BenchOptions:
    parser = build_parser(prog)
    ns = parser.parse_args(list(argv))
    urls = list(ns.url)
    ns.url = urls[0]
    opts = BenchOptions(**vars(ns), urls=urls)
    if opts.scenario == "cluster" and len(urls) < 2:
        parser.error("the cluster scenario needs the URLs of two or more nodes")
    if opts.kill_pid is not None and opts.scenario != "cluster":
        parser.error("--kill-pid is for the cluster scenario")
    if opts.scenario != "idle" and (opts.sample or opts.node_pids):
        parser.error("--sample and --node-pids are for the idle scenario")
    if opts.sample < 0:
        parser.error("--sample must be at least 0")
    if opts.node_pids and len(opts.node_pids) != len(urls):
        parser.error("--node-pids needs one pid per URL")
    if opts.kill_after < 0:
        parser.error("--kill-after must be at least 0")
    for name in ("window", "connections", "processes", "requests", "rounds", "members"):
        if getattr(opts, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if opts.duration <= 0 or opts.timeout <= 0:
        parser.error("--duration and --timeout must be positive")
    if (
        (opts.register or opts.scenario in ("retrieve", "create-cin"))
        and max(opts.connections, opts.processes) > 1
        and "{k}" not in opts.originator
    ):
        sys.stderr.write(
            f"{prog}: warning: several connections share the originator "
            f"{opts.originator}; servers close the older ones (use '{{k}}' and --register)\n"
        )
    if opts.register and opts.scenario not in ("retrieve", "create-cin"):
        parser.error("--register is for retrieve and create-cin")
    if (opts.member_url is None) != (opts.member_cse is None):
        parser.error("--member-url and --member-cse go together")
    if opts.member_url is not None and opts.scenario != "group":
        parser.error("--member-url is for the group scenario")
    try:
        for url in urls:
            Target.parse(url)
        if opts.compare:
            Target.parse(opts.compare)
        if opts.member_url:
            Target.parse(opts.member_url)
    except BenchError as e:
        parser.error(str(e))
    return opts


def describe_run(opts: BenchOptions, url: str) -> str:
    """What one run does, in a line: the scenario and its bounds."""
    if opts.scenario == "idle":
        sampled = f", {opts.sample} of them notified after" if opts.sample else ""
        return (
            f"idle: {opts.connections} connections to {url} from {opts.processes} "
            f"process(es), held {opts.duration:g} s{sampled}"
        )
    if opts.scenario == "cluster":
        return (
            f"cluster: {opts.connections} AEs spread over {url}, subscribed on the first, up "
            f"to {opts.requests} rounds within {opts.duration:g} s"
        )
    if opts.scenario == "fanout":
        return (
            f"fanout: {opts.connections} AEs subscribed at {url}, up to {opts.requests} "
            f"rounds within {opts.duration:g} s"
        )
    if opts.scenario == "group":
        url = f"{url}, each fanned out to {opts.members} members"
    return (
        f"{opts.scenario}, {opts.mode}, {opts.connections} connection(s) to {url}: up to "
        f"{opts.requests} requests within {opts.duration:g} s"
    )


async def run(
    reactor: Any, opts: BenchOptions, out: TextIO, progress: Progress | None = None
) -> int:
    """Run the whole benchmark (with --compare: A B A B ...); returns the exit code. What it
    is doing goes to ``progress`` (stderr from the command line), the report to ``out``."""
    progress = progress if progress is not None else Progress(None)
    runner = RUNNERS[opts.scenario]
    runs: list[dict[str, Any]] = []
    results: list[tuple[str, Result]] = []  # for --plot
    if opts.compare is None:
        where = " + ".join(opts.urls) if len(opts.urls) > 1 else opts.url
        progress.say(describe_run(opts, where))
        result, server = await runner(reactor, opts, Run(opts.url, opts.server_pid, out, progress))
        results.append((where, result))
        d = report(opts, where, result, server)
        runs.append(d)
        out.write(format_report(d) + "\n")
        summary: dict[str, Any] = d
    else:
        pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for i in range(opts.rounds):
            pair: list[dict[str, Any]] = []
            for url, pid in ((opts.url, opts.server_pid), (opts.compare, opts.compare_pid)):
                label = f"[round {i + 1} {'AB'[len(pair)]}]"
                progress.say(f"{label} {describe_run(opts, url)}")
                result, server = await runner(reactor, opts, Run(url, pid, out, progress))
                results.append((url, result))
                d = report(opts, url, result, server)
                runs.append(d)
                pair.append(d)
                out.write(f"[round {i + 1} {'AB'[len(pair) - 1]}] " + format_report(d) + "\n")
            pairs.append((pair[0], pair[1]))
        summary = {"runs": runs, "compare": compare_summary(pairs)}
        out.write(format_compare(summary["compare"]) + "\n")
    if opts.json_file:
        with open(opts.json_file, "w") as f:
            json.dump(summary, f, indent=2)
    if opts.plot:
        from acmews.bench.plot import plot

        plot(opts.plot, results, f"{opts.scenario} {opts.mode} {opts.serialization}")
    if all(r["correct"] for r in runs):
        return 0
    out.write(f"{progress.prog}: CORRECTNESS FAILURE (see above)\n")
    return 1


def _one_line(error: BaseException) -> str:
    """What went wrong, in one line of at most 300 characters."""
    if isinstance(error, BenchError):
        return str(error)
    text = str(error) or type(error).__name__
    if isinstance(error, TimeoutError | DeferTimeoutError):
        text = f"no answer in time ({text})"
    return text.splitlines()[0][:300]


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """The command: ``prog`` is its name in the help and in every message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1])
    opts = parse_options(argv, prog)
    from twisted.internet import reactor

    code = [2]

    async def body() -> None:
        try:
            code[0] = await run(reactor, opts, sys.stdout, Progress(sys.stderr, prog))
        except Exception as e:
            # one line, no traceback: what went wrong, not where in the bench
            sys.stderr.write(f"{prog}: {_one_line(e)}\n")
            code[0] = 2
        finally:
            if reactor.running:
                reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(body()))
    reactor.run()
    return code[0]
