"""A Redis connection that keeps itself up, on any reactor: commands, scripts, a subscriber.

Built on txredisapi's protocol (Twisted-native, like the rest of acmews), with our own
connecting and reconnecting on the injected reactor: txredisapi's connection helpers use the
global reactor and retry on their own schedule. txredisapi itself imports the reactor, so it
is imported only when a connection is made, never when this module is.

While Redis is unreachable :meth:`RedisClient.command` fails at once with
:class:`RedisUnavailable`: a caller never waits for a Redis that is down. The client tries
again every ``retry`` seconds, for ever, and tells its ``on_state`` callback of each change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from acmews.logs import Logger

__all__ = ["RedisClient", "RedisURL", "RedisUnavailable", "Script"]

DEFAULT_PORT = 6379
#: environment variables a password may come from when the URL has none (the second is
#: redis-cli's)
PASSWORD_ENV = ("ACMEWS_REDIS_PASSWORD", "REDISCLI_AUTH")


class RedisUnavailable(Exception):
    """Redis cannot be asked now (not connected, or the command failed in transit)."""


@dataclass(frozen=True, slots=True)
class RedisURL:
    """Where Redis is: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``.

    The password may instead come from ``ACMEWS_REDIS_PASSWORD`` or ``REDISCLI_AUTH``. It is
    never part of :attr:`description` (what logs and errors show) nor of ``repr``.
    """

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str, environ: Mapping[str, str] | None = None) -> RedisURL:
        """Raises ValueError (a one-line reason that never shows a password)."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ValueError("not a redis://HOST[:PORT][/DB] URL") from None
        if parts.scheme != "redis":
            raise ValueError(
                f"unsupported scheme {parts.scheme!r}: use redis://HOST[:PORT][/DB]"
                if parts.scheme
                else "not a redis://HOST[:PORT][/DB] URL"
            )
        if not parts.hostname:
            raise ValueError("no host: use redis://HOST[:PORT][/DB]")
        path = parts.path.strip("/")
        if path and not (path.isdigit() and path.isascii()):
            raise ValueError(f"the database must be a number, not {path[:40]!r}")
        if parts.query or parts.fragment:
            raise ValueError("no query or fragment: use redis://HOST[:PORT][/DB]")
        password = unquote(parts.password) if parts.password is not None else None
        if password is None:
            env = os.environ if environ is None else environ
            password = next((env[name] for name in PASSWORD_ENV if env.get(name)), None)
        username = unquote(parts.username) if parts.username else None
        return cls(parts.hostname, port or DEFAULT_PORT, int(path or 0), username, password)

    @property
    def description(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"

    def __repr__(self) -> str:
        return f"RedisURL({self.description!r})"


class Script:
    """A Lua script, sent by its SHA-1 (EVALSHA, loaded at its first use per connection)."""

    def __init__(self, source: str) -> None:
        self.source = source


class RedisClient:
    """One connection to Redis, kept up on ``reactor``.

    @param on_message: makes this a subscriber connection: it subscribes to ``channels`` on
        each (re)connection and calls ``on_message(channel, data)`` for each message.
    @param on_state: called with True once connected (again), False once the connection is
        lost or cannot be made (once per change, not per attempt).
    """

    log = Logger()

    def __init__(
        self,
        url: RedisURL,
        reactor: Any,
        *,
        name: str = "redis",
        channels: Sequence[bytes] = (),
        on_message: Callable[[bytes, bytes], None] | None = None,
        on_state: Callable[[bool, str], None] | None = None,
        retry: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.name = name
        self._reactor = reactor
        self._channels = list(channels)
        self._on_message = on_message
        self._on_state = on_state
        self.retry = retry
        #: seconds a command (and a connection attempt) may take before the connection is
        #: taken for broken and made again
        self.timeout = timeout
        self._protocol: Any = None
        self._connecting: Deferred[Any] | None = None
        self._retry_call: IDelayedCall | None = None
        self._running = False
        #: None until the first attempt ends; then whether connected
        self.up: bool | None = None
        #: connection attempts that failed so far
        self.failed_attempts = 0
        self._attempt_waiters: list[tuple[int, Deferred[None]]] = []

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Stop trying; close the connection. Fires once it is closed."""
        self._running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        if self._connecting is not None:
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        self._state(False, "stopped")
        if protocol is None or protocol.transport is None:
            return Deferred.fromCoroutine(_nothing())
        closed: Deferred[None] = protocol.whenDisconnected()
        protocol.transport.loseConnection()
        return closed.addCallback(lambda _: None)

    def _connect(self) -> None:
        from twisted.internet.endpoints import HostnameEndpoint

        factory = _factory(self)
        endpoint = HostnameEndpoint(
            self._reactor, self.url.host, self.url.port, timeout=self.timeout
        )
        self._connecting = connecting = endpoint.connect(factory)
        connecting.addTimeout(self.timeout * 2, self._reactor)

        def connected(protocol: Any) -> Deferred[Any]:
            ready: Deferred[Any] = protocol.whenConnected()
            ready.addTimeout(self.timeout, self._reactor)

            def not_ready(failure: Failure) -> Failure:
                if protocol.transport is not None:
                    protocol.transport.abortConnection()
                return failure

            return ready.addErrback(not_ready)

        connecting.addCallback(connected)
        connecting.addCallbacks(self._ready, self._failed)

    def _ready(self, protocol: Any) -> Deferred[None] | None:
        self._connecting = None
        if not self._running:
            protocol.transport.loseConnection()
            return None
        if self._channels:
            subscribing: Deferred[Any] = protocol.subscribe(self._channels)

            def subscribed(_: object) -> None:
                self._became(protocol)

            def refused(failure: Failure) -> None:
                protocol.transport.abortConnection()

            return subscribing.addCallbacks(subscribed, refused)
        self._became(protocol)
        return None

    def _became(self, protocol: Any) -> None:
        if protocol.transport is None or not protocol.connected:
            return
        self._protocol = protocol
        self._state(True, "connected")

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        timed_out = failure.check(DeferTimeoutError)
        why = "no answer in time" if timed_out else _describe(failure.value)
        self._state(False, why)
        self.failed_attempts += 1
        waiting, self._attempt_waiters = self._attempt_waiters, []
        for count, d in waiting:
            if self.failed_attempts >= count:
                d.callback(None)
            else:
                self._attempt_waiters.append((count, d))
        self._schedule()

    def after_failed_attempts(self, count: int) -> Deferred[None]:
        """Fires once ``count`` connection attempts in all have failed."""
        d: Deferred[None] = Deferred()
        if self.failed_attempts >= count:
            d.callback(None)
        else:
            self._attempt_waiters.append((count, d))
        return d

    def _lost(self, protocol: Any, why: str) -> None:
        """A connection that was made is gone."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._state(False, why)
        self._schedule()

    def _schedule(self) -> None:
        if not self._running or self._retry_call is not None:
            return

        def again() -> None:
            self._retry_call = None
            if self._running and self._protocol is None and self._connecting is None:
                self._connect()

        self._retry_call = self._reactor.callLater(self.retry, again)

    def _state(self, up: bool, why: str) -> None:
        if self.up is up:
            return
        self.up = up
        if self._on_state is not None:
            try:
                self._on_state(up, why)
            except Exception:
                self.log.failure("redis state observer failed")

    def _message(self, channel: bytes, data: bytes) -> None:
        if self._on_message is not None:
            try:
                self._on_message(channel, data)
            except Exception:
                self.log.failure("redis message handler failed")

    # -- commands --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def command(self, *args: Any) -> Deferred[Any]:
        """Run one command; fails with :class:`RedisUnavailable` when not connected, when
        the connection breaks first or when no answer comes within ``timeout`` (which also
        breaks the connection), and with txredisapi's ResponseError for Redis's own error."""
        protocol = self._protocol
        if protocol is None:
            return fail(RedisUnavailable(f"{self.url.description} is not connected"))
        try:
            d: Deferred[Any] = protocol.execute_command(*args)
        except Exception as e:  # not connected after all
            return fail(RedisUnavailable(_describe(e)))
        return self._guard(d, protocol)

    def eval(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Deferred[Any]:
        protocol = self._protocol
        if protocol is None:
            return fail(RedisUnavailable(f"{self.url.description} is not connected"))
        try:
            d: Deferred[Any] = protocol.eval(script.source, list(keys), list(args))
        except Exception as e:
            return fail(RedisUnavailable(_describe(e)))
        return self._guard(d, protocol)

    def _guard(self, d: Deferred[Any], protocol: Any) -> Deferred[Any]:
        reactor = self._reactor
        timed_out = False

        def expired() -> None:
            # Twisted runs its timers before it reads what came in meanwhile: a busy process
            # would take an answer waiting to be read for none. Read once more first.
            timer[0] = reactor.callLater(0, broken)

        def broken() -> None:
            nonlocal timed_out
            if d.called:
                return
            timed_out = True
            if protocol.transport is not None:
                protocol.transport.abortConnection()
            d.cancel()

        timer: list[IDelayedCall] = [reactor.callLater(self.timeout, expired)]

        def settled(result: Any) -> Any:
            if timer[0].active():
                timer[0].cancel()
            return result

        def failed(failure: Failure) -> Failure:
            from txredisapi import ConnectionError as RedisConnectionError

            if timed_out:
                return Failure(RedisUnavailable(f"no answer from Redis in {self.timeout:g} s"))
            if failure.check(RedisConnectionError):
                return Failure(RedisUnavailable(_describe(failure.value)))
            return failure

        return d.addBoth(settled).addErrback(failed)


async def _nothing() -> None:
    return None


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    text = str(error)
    # an error text from Redis is short, but bound what goes to the log anyway
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _factory(client: RedisClient) -> Any:
    """A client factory for one connection attempt of ``client`` (txredisapi's protocol
    wants a factory with ``stopTrying``/``connectionError``)."""
    from twisted.internet.protocol import ClientFactory
    from txredisapi import RedisProtocol, SubscriberProtocol

    url = client.url

    class Commands(RedisProtocol):  # type: ignore[misc]
        def connectionLost(self, why: Failure) -> None:
            super().connectionLost(why)
            client._lost(self, _describe(why.value))

    class Subscriber(SubscriberProtocol):  # type: ignore[misc]
        def connectionLost(self, why: Failure) -> None:
            super().connectionLost(why)
            client._lost(self, _describe(why.value))

        def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
            client._message(channel, message)

    kind = Subscriber if client._channels else Commands

    class Factory(ClientFactory):
        isLazy = False
        #: the reason a connection was refused after it was made (AUTH, SELECT)
        error: str | None = None

        def buildProtocol(self, addr: Any) -> Any:
            protocol = kind(
                charset=None,
                password=url.password,
                dbid=url.db or None,
                username=url.username,
                convertNumbers=True,
            )
            protocol.factory = self
            return protocol

        def stopTrying(self) -> None:
            pass

        def connectionError(self, message: str) -> None:
            self.error = message
            client.log.warn(
                "{name}: {url} refused us: {reason}",
                name=client.name,
                url=url.description,
                reason=message[:200],
            )

    return Factory()
