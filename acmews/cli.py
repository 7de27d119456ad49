"""The ``acmews`` command (also ``python -m acmews``): talk to a CSE from a shell.

``acmews request URL OP TARGET``
    sends one request and prints the response: indented JSON on a terminal, one line of JSON
    when piped. Exit status 0 for a 2xxx rsc, 1 for any other rsc (or no response in time),
    2 for a usage error or a connection that could not be made or was lost.
``acmews watch URL``
    keeps a connection open (registering an AE with ``--register NAME``), subscribes to every
    ``--subscribe TARGET`` with its own originator as ``nu``, prints each request that arrives
    (notifications) as one line of JSON and answers it 2000; it stops after ``--count N``
    of them (exit 0), when ``--timeout S`` passes first (exit 1), or on Ctrl-C (exit 130) or
    SIGTERM (143), deleting what it created.
``acmews shell URL``
    an interactive session on one connection (:mod:`acmews.shell`).
``acmews bench ...``
    the load generator (``python -m acmews.bench``).
``acmews completion SHELL``
    a completion script for bash, zsh or tcsh (with the ``shtab`` package).

:func:`main` runs one command on a reactor (the global one when None) with
:func:`twisted.internet.task.react`; :func:`run` is the same command as a coroutine, for a
reactor that already runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError

from acmews import __version__
from acmews.codes import ResourceType
from acmews.command import (
    DEFAULT_TIMEOUT,
    OPERATIONS,
    LineSource,
    OneLineParser,
    Stay,
    UsageError,
    _count,
    _credentials,
    _problem,
    _seconds,
    _url,
    check_request,
    connect_for,
    describe,
    format_primitive,
    isatty,
    request_arguments,
    send,
    tls_hint,
    who_and_where,
)
from acmews.errors import RequestTimeout, TargetNotReachable
from acmews.primitive import Request, Response

__all__ = [
    "OPERATIONS",
    "UsageError",
    "build_parser",
    "format_primitive",
    "main",
    "parse_args",
    "run",
    "tls_hint",
]

COMMANDS = ("request", "watch", "shell", "cluster", "bench", "completion")

#: what ``watch`` subscribes to: update, delete, create and delete of a direct child
WATCH_EVENTS = [1, 2, 3, 4]

#: seconds to wait for the connection and each response when no ``--timeout`` says
#: the EXIT STATUS section of each command's --help
EXIT_STATUS = {
    "acmews": """\
EXIT STATUS
  0    success: a 2xxx response; watch: --count notifications arrived; shell: every
       request answered 2xxx and every wait met
  1    a response that is not 2xxx, or none in time; watch: --timeout passed first
  2    a wrong command line, or a connection that could not be made or was lost
  130  interrupted by Ctrl-C (SIGINT); 143: stopped by SIGTERM (watch and shell delete
       what they created first)
""",
    "request": """\
EXIT STATUS
  0    a 2xxx response
  1    a response that is not 2xxx (named on stderr), or none within --timeout
  2    a wrong command line, or a connection that could not be made or was lost
  130  interrupted by Ctrl-C (SIGINT); 143: stopped by SIGTERM
""",
    "watch": """\
EXIT STATUS
  0    --count notifications arrived
  1    --timeout passed first
  2    a wrong command line, a set-up request refused, or the connection lost
  130  interrupted by Ctrl-C (SIGINT); 143: stopped by SIGTERM
""",
    "shell": """\
EXIT STATUS
  0    every request answered 2xxx, every wait met
  1    some request was not, a wait timed out, or a line could not be read
  2    a wrong command line, or the connection could not be made or was lost
  130  interrupted by Ctrl-C (SIGINT); 143: stopped by SIGTERM
""",
    "cluster": """\
EXIT STATUS
  0    the cluster was read (whatever it looks like)
  2    a wrong command line, or Redis could not be reached
""",
}

ENVIRONMENT = """\
ENVIRONMENT
  ACMEWS_PASSWORD  the password of --user (HTTP Basic), kept off the command line;
                   set without --user it is a usage error
  ACMEWS_TOKEN     a Bearer token, used when no --user is given
  SSL_CERT_FILE    OpenSSL's: a PEM file of the CAs that wss:// trusts instead of the
                   system's (--ca-file does it for one command)
"""

EXAMPLES = {
    "acmews": """\
EXAMPLES
  acmews request ws://127.0.0.1:8180 retrieve cse-in --from CAdmin
  acmews watch ws://127.0.0.1:8180 --register watcher --subscribe cse-in/watcher \\
      --count 1 --timeout 10
  printf 'retrieve cse-in\\n' | acmews shell ws://127.0.0.1:8180 --from CAdmin
  acmews bench ws://127.0.0.1:8180 --requests 2000
""",
    "request": """\
EXAMPLES
  acmews request ws://127.0.0.1:8180 retrieve cse-in --from CAdmin
  acmews request ws://127.0.0.1:8180 create cse-in --ty ae \\
      --pc '{"m2m:ae": {"rn": "lamp", "api": "Nlamp", "rr": true, "srv": ["4"]}}'
  acmews request ws://127.0.0.1:8180 retrieve cse-in --fc fu=1 --fc ty=2 --from CAdmin
  echo '{"m2m:cnt": {"rn": "state"}}' | acmews request ws://127.0.0.1:8180 \\
      create cse-in/lamp --ty cnt --pc @- --from CAdmin
""",
    "watch": """\
EXAMPLES
  acmews watch ws://127.0.0.1:8180 --register watcher --subscribe cse-in/watcher
  acmews watch ws://127.0.0.1:8180 --from CAdmin --subscribe cse-in/lamp/state \\
      --count 1 --timeout 10 && echo "it changed"
""",
    "cluster": """\
EXAMPLES
  acmews cluster redis://127.0.0.1:6379
  ACMEWS_REDIS_PASSWORD=... acmews cluster redis://redis.example/2 --cse-id /id-mn \\
      --originators 20
""",
    "shell": """\
EXAMPLES
  acmews shell ws://127.0.0.1:8180 --register console
  acmews shell ws://127.0.0.1:8180 --from CAdmin <<'EOF'
  create cse-in --ty cnt --pc '{"m2m:cnt": {"rn": "box"}}'
  retrieve cse-in/box
  delete cse-in/box
  EOF
""",
}


def _epilog(name: str) -> str:
    """A command's EXIT STATUS, ENVIRONMENT and EXAMPLES sections."""
    return "\n".join((EXIT_STATUS[name], ENVIRONMENT, EXAMPLES[name]))


def _command(commands: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=_epilog(name),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="acmews",
        description="oneM2M over WebSocket (TS-0020) from the command line.",
        epilog=_epilog("acmews"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"acmews {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, timeout_help: str, timeout: float | None) -> None:
        p.add_argument("--cbor", action="store_true", help="speak CBOR instead of JSON")
        p.add_argument("--timeout", type=_seconds, default=timeout, help=timeout_help)
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="show the connection and every message sent (>) and received (<) on stderr",
        )
        p.add_argument(
            "--user",
            metavar="USER",
            help="HTTP Basic user for the handshake; the password comes from the environment "
            "variable ACMEWS_PASSWORD (a Bearer token: ACMEWS_TOKEN, without --user)",
        )
        p.add_argument("--ca-file", metavar="PEM", help="for wss://: the CA to trust")
        p.add_argument(
            "--client-certificate",
            metavar="PEM",
            help="for wss://: the client certificate to show (its key in it, or --client-key)",
        )
        p.add_argument("--client-key", metavar="PEM", help="the client certificate's key")

    per_response = "seconds to wait for the connection and for each response (default 10)"
    request = _command(
        commands,
        "request",
        "send one request and print the response",
        "Send one request and print the response primitive as JSON (indented on a terminal, "
        "one line when piped); a response that is not 2xxx is also named on stderr "
        "(4004 Not Found).",
    )
    request.add_argument("url", metavar="URL", type=_url, help="ws://HOST:PORT of the CSE")
    request_arguments(request)
    request.add_argument(
        "--from",
        dest="originator",
        metavar="ORIGINATOR",
        help="X-M2M-Origin and 'fr' (without it, only an AE create makes sense)",
    )
    common(request, per_response, DEFAULT_TIMEOUT)

    watch = _command(
        commands,
        "watch",
        "print the notifications a connection receives",
        "Keep a connection open, print each request that arrives (notifications) as one "
        "line of JSON on stdout and answer it 2000. It stops after --count of them, when "
        "--timeout passes first, or on Ctrl-C, and then deletes the subscriptions and the AE "
        "it created.",
    )
    who_and_where(
        watch,
        "X-M2M-Origin",
        "register an AE named NAME first (deleted at the end)",
        required=True,
    )
    watch.add_argument(
        "--subscribe",
        action="append",
        default=[],
        metavar="TARGET",
        help="subscribe to TARGET (repeatable); notifications go to this connection",
    )
    watch.add_argument(
        "--count",
        type=_count,
        metavar="N",
        help="stop after N notifications (exit 0)",
    )
    common(
        watch,
        "stop after this many seconds of watching (exit 1) unless --count came first; the "
        "set-up's own requests wait at most as long (default: watch until stopped; set-up "
        "10 s)",
        None,
    )

    shell = _command(
        commands,
        "shell",
        "an interactive session on one connection",
        "Read requests from stdin, one a line, and send them on one connection, printing "
        "each response (its status, then the primitive) and every notification as it "
        "arrives (answered 2000). A line is OP TARGET with acmews request's options "
        "(--ty, --pc, --rcn, --fc), 'wait [N] [SECONDS]' (for N more notifications, "
        "default 1 within 10 s), 'help' or 'quit'. # starts a comment.",
    )
    who_and_where(
        shell,
        "X-M2M-Origin (without it and --register, the first request must be an AE create; "
        "the session then speaks as the AE-ID it is given)",
        "register an AE named NAME first (deleted at the end)",
        required=False,
    )
    common(shell, per_response, DEFAULT_TIMEOUT)

    cluster = _command(
        commands,
        "cluster",
        "show the nodes of a CSE served by several (twistd acmews --cluster)",
        "Read the cluster's Redis and print its nodes, which one is the leader, and how many "
        "originators each holds the live connection of (a node whose lease lapsed is shown "
        "down). The Redis password comes from the URL or, better, ACMEWS_REDIS_PASSWORD.",
    )
    cluster.add_argument(
        "redis", metavar="REDIS_URL", help="redis://HOST[:PORT][/DB], as given to --cluster"
    )
    cluster.add_argument(
        "--cse-id",
        default="/id-in",
        metavar="CSE-ID",
        help="the CSE the nodes serve (default /id-in): its keys begin with acmews:CSE-ID:",
    )
    cluster.add_argument(
        "--originators",
        type=_count,
        default=0,
        metavar="N",
        help="also list up to N originators of each node",
    )
    cluster.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for Redis (default 10)",
    )

    commands.add_parser("bench", help="the load generator (acmews bench --help)", add_help=False)
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (needs the shtab package)",
        description="Print a completion script for SHELL, e.g. "
        "'acmews completion bash > ~/.local/share/bash-completion/completions/acmews'. "
        "Needs the shtab package: pip install 'acmews[completion]'.",
    )
    completion.add_argument("shell", metavar="SHELL", choices=("bash", "zsh", "tcsh"))
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; UsageError (one line) when it cannot be run."""
    args = build_parser().parse_args(list(argv))
    if args.command in ("bench", "completion"):
        return args
    if args.command == "cluster":
        from acmews.cluster import RedisURL

        try:
            args.redis = RedisURL.parse(args.redis)
        except ValueError as e:
            raise UsageError(f"REDIS_URL: {e}") from None
        return args
    _credentials(args)
    if args.command == "request":
        check_request(args, needs_from=True)
    return args


async def _request(reactor: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    client = await connect_for(reactor, args, args.originator, err, timeout=args.timeout)
    try:
        response = await send(client, args, args.timeout)
    finally:
        if client.connected:
            await client.close()
    out.write(format_primitive(response, isatty(out)) + "\n")
    out.flush()
    if 2000 <= response.rsc < 3000:
        return 0
    err.write(f"acmews request: {describe(response)}\n")
    return 1


async def _watch(
    reactor: Any,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    stop: Deferred[None] | None,
) -> int:
    stay: Stay | None = None
    seen = [0]
    watching = [False]

    def on_request(request: Request) -> Response:
        out.write(format_primitive(request, False) + "\n")
        out.flush()
        seen[0] += 1
        if args.count is not None and seen[0] == args.count and watching[0]:
            assert stay is not None
            reactor.callLater(0, stay.end, 0)  # once this answer has gone out
        return Response(2000, request.rqi, request.rvi)

    step = args.timeout or DEFAULT_TIMEOUT
    client = await connect_for(reactor, args, args.originator, err, on_request, step)
    stay = Stay(client, args, err, "acmews watch")
    if args.register is not None and not await stay.register(args.register):
        await stay.end(2)
        return await stay.finished
    token = os.urandom(3).hex()
    for number, target in enumerate(args.subscribe, 1):
        rn = f"acmews-watch-{token}-{number}"
        r = await client.create(
            target,
            ResourceType.SUB,
            {"m2m:sub": {"rn": rn, "nu": [client.originator], "enc": {"net": WATCH_EVENTS}}},
            step,
        )
        if not r.ok:
            err.write(f"acmews watch: subscribing to {target}: {describe(r)}\n")
            await stay.end(2)
            return await stay.finished
        stay.created.append(f"{target}/{rn}")
        err.write(f"subscribed to {target} ({rn})\n")
    if args.count is not None and seen[0] >= args.count:
        await stay.end(0)  # they came during the set-up
        return await stay.finished
    watching[0] = True
    err.write("watching; Ctrl-C to stop\n")
    err.flush()
    stay.on_stop(reactor, stop)
    if args.timeout is None:
        return await stay.finished
    timer = reactor.callLater(args.timeout, _timed_out, stay, args, seen)
    try:
        return await stay.finished
    finally:
        if timer.active():
            timer.cancel()


def _timed_out(stay: Stay, args: argparse.Namespace, seen: list[int]) -> None:
    wanted = f" of {args.count}" if args.count is not None else ""
    stay.err.write(
        f"acmews watch: {seen[0]}{wanted} notifications within {args.timeout:g} seconds\n"
    )
    stay.end(1)


def usage_line() -> str:
    """What bare ``acmews`` prints: the usage and where to read more."""
    return (
        f"usage: acmews COMMAND ...  (COMMAND: {', '.join(COMMANDS)})\n"
        "       acmews --help, acmews COMMAND --help: what each does\n"
    )


async def run(
    reactor: Any,
    argv: Sequence[str],
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: Deferred[None] | None = None,
    lines: LineSource | None = None,
) -> int:
    """Run one command (not ``bench`` or ``completion``) on a running reactor; returns the
    exit status. Every error is one line on ``err``, never a traceback. ``watch`` and
    ``shell`` clean up and return when ``stop`` fires, or at reactor shutdown when ``stop`` is
    None; ``shell`` reads ``lines`` (stdin when None)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if not argv:
        err.write(usage_line())
        return 2
    try:
        args = parse_args(argv)
    except UsageError as e:
        err.write(f"acmews: {e}\n")
        return 2
    except SystemExit as e:  # --help, --version: argparse has printed them
        return e.code if isinstance(e.code, int) else 0
    where = f"acmews {args.command}"
    try:
        if args.command == "cluster":
            return await _cluster(reactor, args, out)
        if args.command == "request":
            return await _request(reactor, args, out, err)
        if args.command == "shell":
            from acmews.shell import run_shell

            return await run_shell(reactor, args, out, err, stop, lines)
        return await _watch(reactor, args, out, err, stop)
    except RequestTimeout:
        err.write(f"{where}: no response within {args.timeout or DEFAULT_TIMEOUT:g} seconds\n")
        return 1
    except TargetNotReachable as e:
        err.write(f"{where}: {e.reason}\n")
        return 2
    except Exception as e:  # one line, never a traceback
        err.write(f"{where}: {_problem(e)}\n")
        return 2


async def _cluster(reactor: Any, args: argparse.Namespace, out: TextIO) -> int:
    from acmews.cluster.status import format_status, read_status

    reading = Deferred.fromCoroutine(
        read_status(args.redis, reactor, f"acmews:{args.cse_id}:", args.originators)
    )
    reading.addTimeout(args.timeout, reactor)
    try:
        status = await reading
    except DeferTimeoutError:
        raise TargetNotReachable(
            f"no answer from {args.redis.description} within {args.timeout:g} seconds"
        ) from None
    except Exception as e:
        from acmews.cluster import RedisUnavailable

        if isinstance(e, RedisUnavailable):
            raise TargetNotReachable(str(e)) from None
        raise
    out.write(format_status(status))
    out.flush()
    return 0


def completion(shell: str, out: TextIO, err: TextIO) -> int:
    """``acmews completion SHELL``: the script shtab writes for the command line."""
    try:
        import shtab
    except ImportError:
        err.write(
            "acmews completion: needs the shtab package (pip install 'acmews[completion]')\n"
        )
        return 2
    out.write(shtab.complete(build_parser(), shell=shell))
    return 0


def _note_signals(received: list[int]) -> None:
    """Record SIGINT and SIGTERM in ``received``, then let the reactor's own handlers stop
    it as before (which runs the clean-up triggers)."""
    for number in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(number)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            received.append(signum)
            if callable(previous):
                previous(signum, frame)

        signal.signal(number, handler)


def main(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    """The ``acmews`` command: runs on ``reactor`` (the global one when None); returns the
    exit status (128 + the signal's number when SIGINT or SIGTERM stopped it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from acmews.bench.cli import main as bench

        return bench(argv[1:], prog="acmews bench")
    if argv[:1] == ["completion"]:
        try:
            args = parse_args(argv)
        except UsageError as e:
            sys.stderr.write(f"acmews: {e}\n")
            return 2
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 0
        return completion(args.shell, sys.stdout, sys.stderr)
    received: list[int] = []
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        # only the process's own reactor: a test's reactor must leave the handlers alone
        reactor.callWhenRunning(_note_signals, received)
    from twisted.internet import task

    async def body(r: Any) -> None:
        code = await run(r, argv)
        if code:
            raise SystemExit(code)

    try:
        task.react(lambda r: Deferred.fromCoroutine(body(r)), _reactor=reactor)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    else:  # pragma: no cover - react always exits
        code = 0
    if received:
        return 128 + received[0]
    return code


def console() -> NoReturn:
    """The ``acmews`` console script."""
    sys.exit(main())
