"""The ``acmews`` command (also ``python -m acmews``): talk to a CSE from a shell.

``acmews request URL OP TARGET``
    sends one request and prints the response: indented JSON on a terminal, one line of JSON
    when piped. Exit status 0 for a 2xxx rsc, 1 for any other rsc (or no response in time),
    2 for a usage error or a connection that could not be made or was lost.
``acmews watch URL``
    keeps a connection open (registering an AE with ``--register NAME``), subscribes to every
    ``--subscribe TARGET`` with its own originator as ``nu``, prints each request that arrives
    (notifications) as one line of JSON and answers it 2000; Ctrl-C or SIGTERM deletes what it
    created, then exits.
``acmews bench ...``
    the load generator (``python -m acmews.bench``).

:func:`main` runs one command on a reactor (the global one when None) with
:func:`twisted.internet.task.react`; :func:`run` is the same command as a coroutine, for a
reactor that already runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, TimeoutError

from acmews import __version__
from acmews.client import Client, client_credentials, connect
from acmews.codes import ResourceType
from acmews.errors import OneM2MError, RequestTimeout, TargetNotReachable
from acmews.primitive import Request, Response

__all__ = [
    "OPERATIONS",
    "UsageError",
    "build_parser",
    "format_primitive",
    "main",
    "parse_args",
    "run",
]

OPERATIONS = ("create", "retrieve", "update", "delete", "notify")

#: what ``watch`` subscribes to: update, delete, create and delete of a direct child
WATCH_EVENTS = [1, 2, 3, 4]


_NAME = re.compile(r"[A-Za-z0-9._~-]+")


class UsageError(Exception):
    """A command line that cannot be run; its message names the option and the rule."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and raises UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"URL must be ws://HOST:PORT or wss://HOST:PORT, not {value!r}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise argparse.ArgumentTypeError(f"URL has a bad port: {value!r}") from None
    return value


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value!r}")
    return number


def _resource_type(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return int(ResourceType[value.upper()])
    except KeyError:
        names = ", ".join(t.name.lower() for t in ResourceType)
        raise argparse.ArgumentTypeError(
            f"must be a number or one of {names}, not {value!r}"
        ) from None


def _name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"must be a resource name of letters, digits or -._~, not {value!r}"
        )
    return value


def _rcn(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}")
    return int(value)


def _filter(value: str) -> tuple[str, Any]:
    name, equals, text = value.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"must be NAME=VALUE, not {value!r}")
    try:
        return name, json.loads(text)
    except ValueError:
        return name, text


def load_content(value: str) -> Any:
    """``--pc``: JSON text, ``@FILE`` (a JSON file) or ``@-`` (JSON on stdin)."""
    if value.startswith("@"):
        path = value[1:]
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
        except OSError as e:
            raise UsageError(f"--pc {value}: {e.strerror}") from None
    else:
        text = value
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(f"--pc {value}: not JSON ({e})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="acmews",
        description="oneM2M over WebSocket (TS-0020) from the command line.",
    )
    parser.add_argument("--version", action="version", version=f"acmews {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cbor", action="store_true", help="speak CBOR instead of JSON")
        p.add_argument(
            "--timeout",
            type=_seconds,
            default=10.0,
            help="seconds to wait for the connection and for each response (default 10)",
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

    request = commands.add_parser(
        "request",
        help="send one request and print the response",
        description="Send one request and print the response (indented on a terminal, one "
        "line when piped). Exit status: 0 for a 2xxx rsc, 1 otherwise, 2 when the command "
        "line is wrong or the connection fails.",
    )
    request.add_argument("url", metavar="URL", type=_url, help="ws://HOST:PORT of the CSE")
    request.add_argument("op", metavar="OP", choices=OPERATIONS, help=" | ".join(OPERATIONS))
    request.add_argument("target", metavar="TARGET", help="the 'to', e.g. cse-in/lamp")
    request.add_argument(
        "--from",
        dest="originator",
        metavar="ORIGINATOR",
        help="X-M2M-Origin and 'fr' (without it, only an AE create makes sense)",
    )
    request.add_argument(
        "--ty", type=_resource_type, metavar="N", help="resource type of a create (2 or ae...)"
    )
    request.add_argument(
        "--pc",
        metavar="JSON|@FILE",
        help="the content: JSON, @FILE or @- (stdin); for create, update and notify",
    )
    request.add_argument("--rcn", type=_rcn, metavar="N", help="result content")
    request.add_argument(
        "--fc",
        type=_filter,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a filter criterion (repeatable; VALUE is JSON when it parses, else a string)",
    )
    common(request)

    watch = commands.add_parser(
        "watch",
        help="print the notifications a connection receives",
        description="Keep a connection open, print each request that arrives as one line "
        "of JSON and answer it 2000. Ctrl-C deletes what was created.",
    )
    watch.add_argument("url", metavar="URL", type=_url, help="ws://HOST:PORT of the CSE")
    who = watch.add_mutually_exclusive_group(required=True)
    who.add_argument("--from", dest="originator", metavar="ORIGINATOR", help="X-M2M-Origin")
    who.add_argument(
        "--register", type=_name, metavar="NAME", help="register an AE named NAME first"
    )
    watch.add_argument(
        "--cse",
        default="cse-in",
        metavar="NAME",
        help="the CSEBase an AE registers under (default cse-in)",
    )
    watch.add_argument(
        "--subscribe",
        action="append",
        default=[],
        metavar="TARGET",
        help="subscribe to TARGET (repeatable); notifications go to this connection",
    )
    common(watch)

    commands.add_parser("bench", help="the load generator (acmews bench --help)", add_help=False)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; UsageError (one line) when it cannot be run."""
    args = build_parser().parse_args(list(argv))
    _credentials(args)
    if args.command == "request":
        if args.op == "create" and args.ty is None:
            raise UsageError("create needs --ty (the resource type, e.g. --ty 2 or --ty ae)")
        if args.op != "create" and args.ty is not None:
            raise UsageError("--ty is for create only")
        if args.op in ("create", "update", "notify") and args.pc is None:
            raise UsageError(f"{args.op} needs --pc (JSON, @FILE or @-)")
        if args.op in ("retrieve", "delete") and args.pc is not None:
            raise UsageError("--pc is for create, update and notify")
        if args.originator is None and not (args.op == "create" and args.ty == 2):
            raise UsageError("--from ORIGINATOR is needed (only an AE create goes without)")
        args.content = None if args.pc is None else load_content(args.pc)
        fc: dict[str, Any] = {}
        for name, value in args.fc:
            if name in fc:  # a repeated criterion is a list
                fc[name] = [*fc[name], value] if isinstance(fc[name], list) else [fc[name], value]
            else:
                fc[name] = value
        args.filters = fc
    return args


def _credentials(args: argparse.Namespace) -> None:
    """``args.headers`` and ``args.tls`` from --user/ACMEWS_PASSWORD, ACMEWS_TOKEN and the
    TLS files."""
    if (args.ca_file is not None or args.client_certificate is not None) and not (
        args.url.startswith("wss://")
    ):
        raise UsageError("--ca-file and --client-certificate are for a wss:// URL")
    try:
        credentials = client_credentials(
            user=args.user,
            ca_file=args.ca_file,
            certificate=args.client_certificate,
            key=args.client_key,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    args.headers = dict(credentials.headers)
    args.tls = credentials.tls


def format_primitive(primitive: Request | Response, pretty: bool) -> str:
    """A primitive as JSON: indented when ``pretty``, else one line."""
    if pretty:
        return json.dumps(primitive.to_dict(), indent=2, ensure_ascii=False, default=str)
    return json.dumps(primitive.to_dict(), separators=(",", ":"), ensure_ascii=False, default=str)


def _problem(e: BaseException) -> str:
    if isinstance(e, OneM2MError):
        return e.reason
    return str(e) or type(e).__name__


async def _connect(
    reactor: Any, args: argparse.Namespace, originator: str | None, handler: Any = None
) -> Client:
    connecting = connect(
        args.url,
        originator=originator,
        serialization="cbor" if args.cbor else "json",
        handler=handler,
        reactor=reactor,
        headers=args.headers or None,
        tls=args.tls,
    )
    connecting.addTimeout(args.timeout, reactor)
    try:
        return await connecting
    except TimeoutError:
        raise TargetNotReachable(
            f"cannot connect to {args.url}: no answer within {args.timeout:g} seconds"
        ) from None


async def _request(reactor: Any, args: argparse.Namespace, out: TextIO) -> int:
    client = await _connect(reactor, args, args.originator)
    try:
        params: dict[str, Any] = {}
        if args.rcn is not None:
            params["rcn"] = args.rcn
        if args.filters:
            params["fc"] = args.filters
        t = args.timeout
        if args.op == "create":
            sent = client.create(args.target, args.ty, args.content, t, **params)
        elif args.op == "retrieve":
            sent = client.retrieve(args.target, t, **params)
        elif args.op == "update":
            sent = client.update(args.target, args.content, t, **params)
        elif args.op == "delete":
            sent = client.delete(args.target, t, **params)
        else:
            sent = client.notify(args.target, args.content, t, **params)
        response = await sent
    finally:
        if client.connected:
            await client.close()
    out.write(format_primitive(response, _isatty(out)) + "\n")
    out.flush()
    return 0 if 2000 <= response.rsc < 3000 else 1


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


async def _watch(
    reactor: Any,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    stop: Deferred[None] | None,
) -> int:
    def on_request(request: Request) -> Response:
        out.write(format_primitive(request, False) + "\n")
        out.flush()
        return Response(2000, request.rqi, request.rvi)

    client = await _connect(reactor, args, args.originator, on_request)
    created: list[str] = []  # deleted in reverse order on shutdown
    if args.register is not None:
        name = args.register
        r = await client.create(
            args.cse,
            ResourceType.AE,
            {"m2m:ae": {"rn": name, "api": f"N{name}", "rr": True, "srv": ["4"]}},
            args.timeout,
        )
        if not r.ok:
            err.write(f"acmews watch: registering AE {name}: {r.rsc} {r.debug or ''}\n")
            await client.close()
            return 1
        created.append(f"{args.cse}/{name}")
        err.write(f"registered AE {name} as {client.originator}\n")
    token = os.urandom(3).hex()
    for number, target in enumerate(args.subscribe, 1):
        rn = f"acmews-watch-{token}-{number}"
        r = await client.create(
            target,
            ResourceType.SUB,
            {"m2m:sub": {"rn": rn, "nu": [client.originator], "enc": {"net": WATCH_EVENTS}}},
            args.timeout,
        )
        if not r.ok:
            err.write(f"acmews watch: subscribing to {target}: {r.rsc} {r.debug or ''}\n")
            await _delete(client, created, args.timeout)
            await client.close()
            return 1
        created.append(f"{target}/{rn}")
        err.write(f"subscribed to {target} ({rn})\n")
    err.write("watching; Ctrl-C to stop\n")
    err.flush()

    finished: Deferred[int] = Deferred()
    stopping: list[bool] = []

    def on_shutdown() -> Deferred[None]:
        async def clean() -> None:
            stopping.append(True)
            try:
                if client.connected:
                    await _delete(client, created, args.timeout)
                    await client.close()
            except Exception as e:
                err.write(f"acmews watch: cleaning up: {_problem(e)}\n")
            if not finished.called:
                finished.callback(0)

        return Deferred.fromCoroutine(clean())

    if stop is None:
        reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    else:
        stop.addCallback(lambda _: on_shutdown())
    closed = client.session.when_closed()

    def lost(_: object) -> None:
        if not finished.called and not stopping:
            finished.callback(2)
            err.write(f"acmews watch: the connection to {args.url} closed\n")

    closed.addBoth(lost)
    return await finished


async def _delete(client: Client, paths: list[str], timeout: float) -> None:
    deletions = [client.delete(path, timeout) for path in reversed(paths)]
    await DeferredList(deletions, consumeErrors=True)
    paths.clear()


async def run(
    reactor: Any,
    argv: Sequence[str],
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: Deferred[None] | None = None,
) -> int:
    """Run one command (not ``bench``) on a running reactor; returns the exit status. Every
    error is one line on ``err``, never a traceback. ``watch`` cleans up and returns when
    ``stop`` fires, or at reactor shutdown when ``stop`` is None."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = parse_args(argv)
    except UsageError as e:
        err.write(f"acmews: {e}\n")
        return 2
    except SystemExit as e:  # --help, --version: argparse has printed them
        return e.code if isinstance(e.code, int) else 0
    where = f"acmews {args.command}"
    try:
        if args.command == "request":
            return await _request(reactor, args, out)
        return await _watch(reactor, args, out, err, stop)
    except RequestTimeout:
        err.write(f"{where}: no response within {args.timeout:g} seconds\n")
        return 1
    except TargetNotReachable as e:
        err.write(f"{where}: {e.reason}\n")
        return 2
    except Exception as e:  # one line, never a traceback
        err.write(f"{where}: {_problem(e)}\n")
        return 2


def main(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    """The ``acmews`` command: runs on ``reactor`` (the global one when None); returns the
    exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from acmews.bench.cli import main as bench

        return bench(argv[1:])
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    from twisted.internet import task

    async def body(r: Any) -> None:
        code = await run(r, argv)
        if code:
            raise SystemExit(code)

    try:
        task.react(lambda r: Deferred.fromCoroutine(body(r)), _reactor=reactor)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # pragma: no cover - react always exits


def console() -> NoReturn:
    """The ``acmews`` console script."""
    sys.exit(main())
