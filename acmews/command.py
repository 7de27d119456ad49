"""What the ``acmews`` command's subcommands share: argument parsing that fails in one line,
the request arguments, credentials, connecting with hints, printing, the long-running
``Stay``. Its own module, below :mod:`acmews.cli` and :mod:`acmews.shell`, which both use it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, Protocol, TextIO
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, DeferredList, TimeoutError

from acmews.client import Client, client_credentials, connect
from acmews.codes import ResourceType, rsc_text
from acmews.errors import OneM2MError, TargetNotReachable
from acmews.primitive import Request, Response

__all__ = [
    "DEFAULT_TIMEOUT",
    "OPERATIONS",
    "LineSource",
    "OneLineParser",
    "Stay",
    "Tracer",
    "UsageError",
    "check_request",
    "connect_for",
    "describe",
    "format_primitive",
    "isatty",
    "load_content",
    "request_arguments",
    "send",
    "tls_hint",
    "who_and_where",
]

DEFAULT_TIMEOUT = 10.0

_NAME = re.compile(r"[A-Za-z0-9._~-]+")


OPERATIONS = ("create", "retrieve", "update", "delete", "notify")


class UsageError(Exception):
    """A command line that cannot be run; its message names the option and the rule."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and raises UsageError."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class LineSource(Protocol):
    """Where ``acmews shell`` reads its lines: ``get()`` fires with the next one, None at the
    end (a ``DeferredQueue`` will do)."""

    def get(self) -> Deferred[str | None]: ...


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


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1, not {value!r}")
    return int(value)


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


def request_arguments(p: argparse.ArgumentParser) -> None:
    """OP TARGET and the request's parameters: ``acmews request``'s and a shell line's."""
    p.add_argument("op", metavar="OP", choices=OPERATIONS, help=" | ".join(OPERATIONS))
    p.add_argument("target", metavar="TARGET", help="the 'to', e.g. cse-in/lamp")
    p.add_argument(
        "--ty", type=_resource_type, metavar="N", help="resource type of a create (2 or ae...)"
    )
    p.add_argument(
        "--pc",
        metavar="JSON|@FILE",
        help="the content: JSON, @FILE or @- (stdin); for create, update and notify",
    )
    p.add_argument("--rcn", type=_rcn, metavar="N", help="result content")
    p.add_argument(
        "--fc",
        type=_filter,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a filter criterion (repeatable; VALUE is JSON when it parses, else a string)",
    )


def who_and_where(
    p: argparse.ArgumentParser, from_help: str, register_help: str, required: bool
) -> None:
    """URL, and who a long-lived command (watch, shell) speaks as: ``--from`` or
    ``--register`` (under ``--cse``)."""
    p.add_argument("url", metavar="URL", type=_url, help="ws://HOST:PORT of the CSE")
    who = p.add_mutually_exclusive_group(required=required)
    who.add_argument("--from", dest="originator", metavar="ORIGINATOR", help=from_help)
    who.add_argument("--register", type=_name, metavar="NAME", help=register_help)
    p.add_argument(
        "--cse",
        default="cse-in",
        metavar="NAME",
        help="the CSEBase an AE registers under (default cse-in)",
    )


def check_request(args: argparse.Namespace, needs_from: bool) -> None:
    """The rules argparse cannot say for OP and its parameters; sets ``args.content`` and
    ``args.filters``."""
    if args.op == "create" and args.ty is None:
        raise UsageError("create needs --ty (the resource type, e.g. --ty 2 or --ty ae)")
    if args.op != "create" and args.ty is not None:
        raise UsageError("--ty is for create only")
    if args.op in ("create", "update", "notify") and args.pc is None:
        raise UsageError(f"{args.op} needs --pc (JSON, @FILE or @-)")
    if args.op in ("retrieve", "delete") and args.pc is not None:
        raise UsageError("--pc is for create, update and notify")
    if needs_from and args.originator is None and not (args.op == "create" and args.ty == 2):
        raise UsageError("--from ORIGINATOR is needed (only an AE create goes without)")
    args.content = None if args.pc is None else load_content(args.pc)
    fc: dict[str, Any] = {}
    for name, value in args.fc:
        if name in fc:  # a repeated criterion is a list
            fc[name] = [*fc[name], value] if isinstance(fc[name], list) else [fc[name], value]
        else:
            fc[name] = value
    args.filters = fc


def _credentials(args: argparse.Namespace) -> None:
    """``args.headers`` and ``args.tls`` from --user/ACMEWS_PASSWORD, ACMEWS_TOKEN and the
    TLS files."""
    if (args.ca_file is not None or args.client_certificate is not None) and not (
        args.url.startswith("wss://")
    ):
        raise UsageError("--ca-file and --client-certificate are for a wss:// URL")
    if args.user is None and "ACMEWS_PASSWORD" in os.environ:
        # a password with no user would be dropped, and the server would answer 401
        raise UsageError(
            "ACMEWS_PASSWORD is set but --user is not: name the user with --user USER "
            "(or unset ACMEWS_PASSWORD to send ACMEWS_TOKEN, or nothing)"
        )
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


def describe(response: Response) -> str:
    """A response's status for a person: ``4004 Not Found: <its m2m:dbg>``."""
    text = rsc_text(response.rsc)
    return f"{text}: {response.debug}" if response.debug else text


def _problem(e: BaseException) -> str:
    if isinstance(e, OneM2MError):
        return e.reason
    return str(e) or type(e).__name__


def tls_hint(url: str, problem: str) -> str:
    """What to try when a connection failed the way a TLS mix-up fails (a certificate not
    trusted, wss:// to a plain port, ws:// to a TLS one); ``""`` otherwise."""
    text = problem.lower()
    if "certificate verify failed" in text:
        return (
            " (the server's certificate is not trusted: use --ca-file PEM with the CA that "
            "signed it, or with the certificate itself when it is self-signed)"
        )
    if url.startswith("wss://"):
        if "no answer within" in text or "wrong version number" in text or "ssl" in text:
            return " (is it a plain ws:// port? wss:// waits for a TLS answer)"
    elif "peer dropped the tcp connection without previous websocket closing" in text:
        # a TLS server that read a plain HTTP request: it drops it without an answer
        return " (does the server speak TLS? then use wss://)"
    return ""


def isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Tracer:
    """``-v``: the connection and every message, on ``err``: ``>`` sent, ``<`` received
    (JSON as sent; CBOR shown as JSON, with its size)."""

    def __init__(self, err: TextIO) -> None:
        self.err = err

    def note(self, text: str) -> None:
        self.err.write(f"* {text}\n")
        self.err.flush()

    def connecting(self, args: argparse.Namespace, originator: str | None) -> None:
        who = f"as {originator}" if originator else "without X-M2M-Origin"
        offer = "oneM2M.cbor" if args.cbor else "oneM2M.json"
        self.note(f"connecting to {args.url} {who}, offering {offer}")
        authorization = args.headers.get("Authorization", "")
        if authorization.startswith("Basic"):
            self.note(f"with HTTP Basic for user {args.user} (the password is not shown)")
        elif authorization:
            self.note("with a Bearer token (not shown)")

    def attach(self, client: Client) -> None:
        self.note(f"connected, subprotocol {client.subprotocol}")
        codec = client.session.codec
        binary = codec.is_binary

        def show(mark: str) -> Callable[[bytes], None]:
            def write(data: bytes) -> None:
                if binary:
                    try:
                        text = format_primitive(codec.decode(data), False)
                    except Exception:
                        text = repr(data[:300])
                    text += f" (CBOR, {len(data)} bytes)"
                else:
                    text = data.decode("utf-8", "replace")
                self.err.write(f"{mark} {text}\n")
                self.err.flush()

            return write

        client.session.trace(show(">"), show("<"))


async def connect_for(
    reactor: Any,
    args: argparse.Namespace,
    originator: str | None,
    err: TextIO,
    handler: Any = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Client:
    """The command's connection, within ``timeout``; its failures are TargetNotReachable with
    a hint where a TLS mix-up is likely."""
    tracer = Tracer(err) if args.verbose else None
    if tracer is not None:
        tracer.connecting(args, originator)
    connecting = connect(
        args.url,
        originator=originator,
        serialization="cbor" if args.cbor else "json",
        handler=handler,
        reactor=reactor,
        headers=args.headers or None,
        tls=args.tls,
    )
    connecting.addTimeout(timeout, reactor)
    try:
        client = await connecting
    except TimeoutError:
        problem = f"cannot connect to {args.url}: no answer within {timeout:g} seconds"
        raise TargetNotReachable(problem + tls_hint(args.url, problem)) from None
    except TargetNotReachable as e:
        raise TargetNotReachable(e.reason + tls_hint(args.url, e.reason)) from None
    if tracer is not None:
        tracer.attach(client)
    return client


def send(client: Client, args: argparse.Namespace, timeout: float) -> Deferred[Response]:
    """The request ``args`` describe (OP TARGET and its parameters) on ``client``."""
    params: dict[str, Any] = {}
    if args.rcn is not None:
        params["rcn"] = args.rcn
    if args.filters:
        params["fc"] = args.filters
    if args.op == "create":
        return client.create(args.target, args.ty, args.content, timeout, **params)
    if args.op == "retrieve":
        return client.retrieve(args.target, timeout, **params)
    if args.op == "update":
        return client.update(args.target, args.content, timeout, **params)
    if args.op == "delete":
        return client.delete(args.target, timeout, **params)
    return client.notify(args.target, args.content, timeout, **params)


class Stay:
    """What a long-lived command (watch, shell) created on its connection, deleted when it
    ends, and how it ends: ``finished`` fires with the exit status, once."""

    def __init__(self, client: Client, args: argparse.Namespace, err: TextIO, where: str):
        self.client = client
        self.args = args
        self.err = err
        self.where = where
        self.step_timeout = args.timeout or DEFAULT_TIMEOUT
        #: deleted in reverse order at the end
        self.created: list[str] = []
        self.finished: Deferred[int] = Deferred()
        self._ending = False

    async def register(self, name: str) -> bool:
        client = self.client
        r = await client.create(
            self.args.cse,
            ResourceType.AE,
            {"m2m:ae": {"rn": name, "api": f"N{name}", "rr": True, "srv": ["4"]}},
            self.step_timeout,
        )
        if not r.ok:
            self.err.write(f"{self.where}: registering AE {name}: {describe(r)}\n")
            return False
        self.created.append(f"{self.args.cse}/{name}")
        self.err.write(f"registered AE {name} as {client.originator}\n")
        return True

    def end(self, code: int) -> Deferred[None]:
        """Delete what was created, close, then fire ``finished`` with ``code`` (once)."""

        async def clean() -> None:
            if self._ending:
                return
            self._ending = True
            client = self.client
            try:
                if client.connected:
                    await _delete(client, self.created, self.step_timeout)
                    await client.close()
            except Exception as e:
                self.err.write(f"{self.where}: cleaning up: {_problem(e)}\n")
            if not self.finished.called:
                self.finished.callback(code)

        return Deferred.fromCoroutine(clean())

    def on_stop(self, reactor: Any, stop: Deferred[None] | None) -> None:
        """End (status 0) when ``stop`` fires, or at reactor shutdown when it is None; end
        with status 2 when the connection is lost first."""
        if stop is None:
            reactor.addSystemEventTrigger("before", "shutdown", lambda: self.end(0))
        else:
            stop.addCallback(lambda _: self.end(0))

        def lost(_: object) -> None:
            if not self.finished.called and not self._ending:
                self.err.write(f"{self.where}: the connection to {self.args.url} closed\n")
                self.finished.callback(2)

        self.client.session.when_closed().addBoth(lost)


async def _delete(client: Client, paths: list[str], timeout: float) -> None:
    deletions = [client.delete(path, timeout) for path in reversed(paths)]
    await DeferredList(deletions, consumeErrors=True)
    paths.clear()
