"""This node's part of a cluster of acmews nodes that serve one CSE, through Redis.

:class:`ClusterNode` keeps four things in Redis (every key under one ``prefix``):

``node:NAME`` (a string, with a lease)
    This node's incarnation (a random token made at start), written with a lease of
    ``lease`` seconds and renewed every ``renew`` seconds. A node that dies stops renewing
    it: it lapses within ``lease`` seconds, and with it every binding of that node.
``o:ORIGINATOR`` (a string)
    The binding: ``NAME INCARNATION SEQ``, the node holding the originator's live
    connection and a token for that connection. A binding counts only while its node's
    ``node:`` key holds the same incarnation (:data:`LOOKUP` checks it), so a binding
    lapses with its node's lease, whatever its own key says.
``held:NAME`` (a set)
    The originators a node holds (for the ``acmews cluster`` listing and for tidying).
``leader`` (a string, with a lease)
    The node that runs the singletons (the registrar link, the sweeps):
    ``NAME INCARNATION``, taken with ``SET NX PX`` and renewed by its holder.

and one channel per node, ``ch:NAME``, on which other nodes send it:

- ``Q`` a request to relay to one of its connections; it answers with ``R`` on the sender's
  channel;
- ``T`` a takeover: a newer connection for one of its originators bound on another node (the
  :data:`BIND` script publishes it atomically with the new binding);
- ``F`` a flush: notifications were queued (in the shared queue) for an originator it holds.

Newest connection wins cluster-wide: :data:`BIND` replaces whatever binding there was and
tells the node that held it; that node closes its connection (1000 and a reason). Removal is
identity-checked (:data:`UNBIND` deletes the binding only if it still has the connection's
token): a late close on the old node never removes the new node's route.

A relayed request is sent unchanged (its rqi is the originator's) on the holding node's
connection with the sender's timeout; when the holding node does not answer within that
timeout (dead, partitioned, Redis down) the relay fails and the poa chain goes on (a NOTIFY
with ``store`` goes to the queue). Delivery is therefore at least once: a request whose
answer was lost on the way back is queued and delivered again.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from zope.interface import implementer

from acmews.codec import CBOR
from acmews.errors import NoClusterRoute, OneM2MError, RequestTimeout, TargetNotReachable
from acmews.interfaces import IClusterRelay, IConnection, IOriginatorMap, IOriginatorObserver
from acmews.logs import Logger
from acmews.poa.queue import decode_request, encode_request
from acmews.poa.steps import reason
from acmews.primitive import Request, Response

from .redis import RedisClient, RedisUnavailable, RedisURL, Script

__all__ = ["DEFAULT_PREFIX", "ClusterNode", "Singletons", "valid_node_name"]

DEFAULT_PREFIX = "acmews:"
UNREACHABLE = "the cluster directory is unreachable"
MALFORMED = "a malformed answer from the holding node"
#: a node name: what keys and channels are made of (no spaces: a binding is space-separated)
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")

#: KEYS: o:X, held:ME. ARGV: binding, ME, X, channel prefix, node prefix.
#: Replaces the binding; tells the node whose live binding it replaced (T message).
BIND = Script(
    """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
if old and old ~= ARGV[1] then
  local node, inc = string.match(old, '^(%S+) (%S+)')
  if node and node ~= ARGV[2] and redis.call('GET', ARGV[5] .. node) == inc then
    redis.call('PUBLISH', ARGV[4] .. node, 'T\\0' .. ARGV[3] .. '\\0' .. old)
  end
end
return old
"""
)

#: KEYS: o:X, held:ME. ARGV: binding, X, ME. Deletes the binding only if it is still this
#: one; forgets X in held:ME unless ME holds it again (a newer local connection).
UNBIND = Script(
    """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
if not cur or string.match(cur, '^(%S+)') ~= ARGV[3] then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return 0
"""
)

#: KEYS: o:X, held:ME. ARGV: binding, X, node prefix. After Redis was unreachable: the
#: binding is put back unless another live node bound X meanwhile (newer: it wins); returns
#: the binding that holds then.
REBIND = Script(
    """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  local node, inc = string.match(cur, '^(%S+) (%S+)')
  if node and redis.call('GET', ARGV[3] .. node) == inc then
    return cur
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return ARGV[1]
"""
)

#: KEYS: o:X. ARGV: node prefix. The binding, if its node's lease holds its incarnation.
LOOKUP = Script(
    """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local node, inc = string.match(v, '^(%S+) (%S+)')
if not node or redis.call('GET', ARGV[1] .. node) ~= inc then return false end
return v
"""
)

#: KEYS: o:X1 .. o:Xn. ARGV: node prefix, channel prefix, ME, then one relayed request a key
#: (``rid NUL X NUL timeout-ms NUL request``). A round's relays in one round trip: each
#: binding looked up (valid while its node's lease holds it), and one B message a holding
#: node with its requests in order (``B NUL ME NUL`` then per request ``binding NUL length NUL
#: request``). Returns one string (one reply for the client to read, not two items a key):
#: ``R`` then per key, NUL-separated, ``+NODE`` (published to NODE), ``0NODE`` (NODE's channel
#: has no listener), ``-`` (no live binding) or ``=`` (the binding is ME's own: nothing
#: published).
RELAY = Script(
    """
local me = ARGV[3]
local out = {}
local live = {}
local messages = {}
local order = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  local node, inc
  if v then node, inc = string.match(v, '^(%S+) (%S+)') end
  if node and live[node] == nil then
    live[node] = redis.call('GET', ARGV[1] .. node) or false
  end
  if not node or live[node] ~= inc then
    out[i] = '-'
  elseif node == me then
    out[i] = '='
  else
    local parts = messages[node]
    if not parts then
      parts = {'B\\0' .. me .. '\\0'}
      messages[node] = parts
      order[#order + 1] = node
    end
    local request = ARGV[3 + i]
    parts[#parts + 1] = v .. '\\0' .. #request .. '\\0' .. request
    out[i] = node
  end
end
local receivers = {}
for _, node in ipairs(order) do
  receivers[node] = redis.call('PUBLISH', ARGV[2] .. node, table.concat(messages[node]))
end
for i = 1, #KEYS do
  local r = out[i]
  if r ~= '-' and r ~= '=' then
    if receivers[r] > 0 then out[i] = '+' .. r else out[i] = '0' .. r end
  end
end
return 'R' .. table.concat(out, '\\0')
"""
)

#: KEYS: leader. ARGV: ME-binding, lease ms. Renews the leader lease if it is still ours.
RENEW_LEADER = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
)

#: KEYS: leader. ARGV: ME-binding. Gives the lease up if it is ours.
RESIGN = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
)


#: KEYS: nodes. ARGV: prefix, batch. The leader's sweep: a node whose lease is gone loses
#: its bindings that still name it (at most ``batch`` a run), then its held set and its place
#: in nodes. Returns how many bindings it removed.
SWEEP = Script(
    """
local removed = 0
local budget = tonumber(ARGV[2])
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if budget <= 0 then break end
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
    local held = ARGV[1] .. 'held:' .. node
    local batch = redis.call('SPOP', held, budget)
    for _, o in ipairs(batch) do
      local key = ARGV[1] .. 'o:' .. o
      local v = redis.call('GET', key)
      if v and string.match(v, '^(%S+)') == node then
        redis.call('DEL', key)
        removed = removed + 1
      end
    end
    budget = budget - #batch
    if redis.call('SCARD', held) == 0 then
      redis.call('SREM', KEYS[1], node)
    end
  end
end
return removed
"""
)


def valid_node_name(name: str) -> bool:
    return NODE_NAME.fullmatch(name) is not None


class Singletons(Service):
    """Services that run on one node of the cluster at a time: started when this node
    becomes the leader, stopped when it stops being it (or stops)."""

    log = Logger()
    name = "singletons"

    def __init__(self, services: Sequence[IService] = ()) -> None:
        self.services: list[IService] = list(services)
        self.leading = False

    def add(self, service: IService | None) -> None:
        if service is not None:
            self.services.append(service)
            if self.leading:
                service.startService()

    def lead(self) -> None:
        if self.leading:
            return
        self.leading = True
        for service in self.services:
            try:
                service.startService()
            except Exception:
                self.log.failure("singleton {name} failed to start", name=service.name)

    def follow(self) -> Deferred[object]:
        if not self.leading:
            return Deferred.fromCoroutine(_nothing())
        self.leading = False
        stops = [maybeDeferred(service.stopService) for service in reversed(self.services)]
        from twisted.internet.defer import DeferredList

        return DeferredList(stops, consumeErrors=True)  # type: ignore[return-value]

    def stopService(self) -> Deferred[object]:
        super().stopService()
        return self.follow()


@implementer(IClusterRelay, IOriginatorObserver)
class ClusterNode(Service):
    """This node in the cluster: publishes its originators, relays requests to and from the
    other nodes, and takes the leader's lease when it is free. A Twisted service.

    @param singletons: started on the leader only.
    @param clock: the leases' and the relays' timers (default: ``reactor``, which also makes
        the connections to Redis).
    @param flush: called with an originator this node holds when another node queued
        notifications for it (the poa chain's ``flush``).
    @param busy: whether an originator's queue is being delivered here (the poa chain's
        ``flushing``): a stored notification relayed for it meanwhile is refused, and so
        queued behind by its sender.
    """

    log = Logger()
    name = "cluster"

    def __init__(
        self,
        url: RedisURL,
        node_name: str,
        originators: IOriginatorMap,
        reactor: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease: float = 10.0,
        renew: float = 3.0,
        leader_lease: float = 12.0,
        max_relayed: int = 10_000,
        relay_batch: int = 1000,
        catch_up: float = 1.0,
        singletons: Singletons | None = None,
        flush: Callable[[str], None] | None = None,
        busy: Callable[[str], bool] | None = None,
        retry: float = 1.0,
        clock: Any = None,
    ) -> None:
        if not valid_node_name(node_name):
            raise ValueError(f"not a valid node name: {node_name[:100]!r}")
        self.url = url
        self.node_name = node_name
        self.originators = originators
        #: the leases' and the relays' timers (``reactor`` unless told)
        self._clock = clock if clock is not None else reactor
        self.prefix = prefix
        self.lease = lease
        self.renew = renew
        self.leader_lease = leader_lease
        self.max_relayed = max_relayed
        #: relays (and answers) in one Redis command at most
        self.relay_batch = relay_batch
        #: seconds a relay that timed out may wait for Redis to hand over what it already
        #: has for this node (see ``_catch_up``)
        self.catch_up = catch_up
        #: bindings of dead nodes the leader removes per renewal at most
        self.sweep_batch = 1000
        self.singletons = singletons if singletons is not None else Singletons()
        self.flush = flush
        self.busy = busy
        self.incarnation = os.urandom(8).hex()
        self._me = node_name.encode()
        self._node_prefix = (prefix + "node:").encode()
        self._channel_prefix = (prefix + "ch:").encode()
        self._leader_key = (prefix + "leader").encode()
        self._leader_value = f"{node_name} {self.incarnation}".encode()
        self._seq = itertools.count(1)
        self._relay_ids = itertools.count(1)
        #: originator -> (its connection here, its binding)
        self._bound: dict[str, tuple[IConnection, bytes]] = {}
        self._reactor = reactor
        #: relays this node waits for, by id
        self._pending: dict[bytes, _Relay] = {}
        #: relays asked for in this turn of the reactor, sent by ``_send_outbox``
        self._outbox: list[_Relay] = []
        self._outbox_call: IDelayedCall | None = None
        #: (deadline, relay id) of the relays sent, earliest first; one timer for them all
        self._deadlines: deque[tuple[float, bytes]] = deque()
        self._expiry_call: IDelayedCall | None = None
        self._marker_ids = itertools.count(1)
        self._markers: dict[bytes, _CatchUp] = {}
        #: answers to other nodes' relays made in this turn, by the channel they go to
        self._replies: dict[bytes, list[bytes]] = {}
        self._replies_call: IDelayedCall | None = None
        #: requests other nodes asked this node to send, in flight
        self._serving: set[Deferred[Response]] = set()
        self._tick_call: IDelayedCall | None = None
        self._last_renewed: float | None = None
        self._leader_renewed: float | None = None
        #: whether Redis can be used (both connections up), as last logged
        self.available = False
        self.leader = False
        self._available_waiters: list[Deferred[None]] = []
        self._unavailable_waiters: list[Deferred[None]] = []
        #: Redis reachable and this node's lease and bindings put (back) there
        self._published = False
        self.commands = RedisClient(
            url, reactor, name=f"cluster node {node_name}", on_state=self._state, retry=retry
        )
        self.subscriber = RedisClient(
            url,
            reactor,
            name=f"cluster node {node_name} (channel)",
            channels=[self._channel_prefix + self._me],
            on_message=self._message,
            on_state=self._state,
            retry=retry,
        )
        #: relays by outcome (read by tests and the metrics)
        self.counts = {"relayed": 0, "served": 0, "fell_through": 0, "taken_over": 0}

    # -- keys -------------------------------------------------------------------------------

    def _okey(self, originator: str) -> bytes:
        return (self.prefix + "o:").encode() + originator.encode("utf-8", "surrogatepass")

    def _held_key(self, node: bytes) -> bytes:
        return (self.prefix + "held:").encode() + node

    # -- service ----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.originators.add_observer(self)
        for originator in _bound_originators(self.originators):
            connection = self.originators.lookup(originator)
            if connection is not None:
                self.originator_connected(originator, connection)
        self.commands.start()
        self.subscriber.start()
        self._tick_call = self._clock.callLater(self.renew, self._tick)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.originators.remove_observer(self)
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        # a relay in flight fails as one to a node that is gone: its sender's chain goes on
        # (a NOTIFY to the queue), which a cancellation would have ended
        for call in (self._outbox_call, self._expiry_call, self._replies_call):
            if call is not None and call.active():
                call.cancel()
        self._outbox_call = self._expiry_call = self._replies_call = None
        for marker in self._markers.values():
            if marker.grace is not None and marker.grace.active():
                marker.grace.cancel()
        self._markers.clear()
        self._outbox.clear()
        self._deadlines.clear()
        self._replies.clear()
        for relayed in list(self._pending.values()):
            self._settle(relayed, Failure(NoClusterRoute("this node is stopping")))
        for serving in list(self._serving):
            serving.cancel()
        await self.singletons.follow()
        if self.commands.connected:
            try:
                if self.leader:
                    await self.commands.eval(RESIGN, [self._leader_key], [self._leader_value])
                # this node's bindings go now rather than when its lease lapses
                for originator, (_, binding) in list(self._bound.items()):
                    await self._unbind(originator, binding)
                await self.commands.command("DEL", self._node_prefix + self._me)
                await self.commands.command("SREM", (self.prefix + "nodes").encode(), self._me)
            except Exception as e:
                self.log.info("cluster: could not tidy up in Redis: {error}", error=str(e))
        self.leader = False
        self._bound.clear()
        await self.commands.stop()
        await self.subscriber.stop()

    # -- Redis up and down ------------------------------------------------------------------

    def _state(self, up: bool, why: str) -> None:
        available = bool(self.commands.connected and self.subscriber.connected)
        if available == self.available:
            return
        self.available = available
        if not self.running:
            self._published = False
            return  # stopping: nothing to say
        if available:
            self.log.info(
                "cluster: node {node} reaches Redis at {url}; publishing {count} originators",
                node=self.node_name,
                url=self.url.description,
                count=len(self._bound),
            )
            Deferred.fromCoroutine(self._refresh(rebind=True)).addErrback(self._refresh_failed)
        else:
            self._published = False
            waiters, self._unavailable_waiters = self._unavailable_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            self.log.warn(
                "cluster: Redis at {url} is unreachable ({reason}); node {node} serves its own "
                "connections only, requests for other nodes' originators go on down the poa "
                "chain (notifications to the queue) until it is back",
                url=self.url.description,
                reason=why,
                node=self.node_name,
            )

    def _tick(self) -> None:
        self._tick_call = self._clock.callLater(self.renew, self._tick)
        self.refresh()

    def refresh(self) -> Deferred[None]:
        """What every ``renew`` seconds does: renew this node's lease, take or renew the
        leader's; a leader that could not renew for too long steps down. Fires when done."""
        self._check_leader_lease()
        if not self.available:
            return Deferred.fromCoroutine(_nothing())
        refreshing = Deferred.fromCoroutine(self._refresh(rebind=False))
        return refreshing.addErrback(self._refresh_failed)

    def _refresh_failed(self, failure: Failure) -> None:
        if failure.check(RedisUnavailable, CancelledError):
            return  # said once by _state
        self.log.failure("cluster: renewing the leases failed", failure)

    async def _refresh(self, rebind: bool) -> None:
        """Renew this node's lease (and after Redis was unreachable, put its bindings back);
        take or renew the leader's lease."""
        lease_ms = int(self.lease * 1000)
        now = self._clock.seconds()
        await self.commands.command(
            "SET", self._node_prefix + self._me, self.incarnation, "PX", lease_ms
        )
        self._last_renewed = now
        if rebind:
            await self.commands.command("SADD", (self.prefix + "nodes").encode(), self._me)
            for originator, (_, binding) in list(self._bound.items()):
                current = await self.commands.eval(
                    REBIND,
                    [self._okey(originator), self._held_key(self._me)],
                    [binding, originator, self._node_prefix],
                )
                if current != binding:
                    self._taken_over(originator, binding)
        await self._lead(now)
        if rebind and self.available:
            self._published = True
            waiters, self._available_waiters = self._available_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    async def _lead(self, now: float) -> None:
        lease_ms = int(self.leader_lease * 1000)
        if self.leader:
            renewed = await self.commands.eval(
                RENEW_LEADER, [self._leader_key], [self._leader_value, lease_ms]
            )
            if renewed:
                self._leader_renewed = now
                await self._sweep()
                return
            self._step_down("another node holds the leader's lease")
            return
        taken = await self.commands.command(
            "SET", self._leader_key, self._leader_value, "NX", "PX", lease_ms
        )
        if taken in (b"OK", "OK") and not self.running:
            # stopped while it asked: hand the lease straight back, start nothing
            await self.commands.eval(RESIGN, [self._leader_key], [self._leader_value])
            return
        if taken in (b"OK", "OK"):
            self.leader = True
            self._leader_renewed = now
            self.log.info("cluster: node {node} is the leader", node=self.node_name)
            self.singletons.lead()

    async def _sweep(self) -> None:
        """The leader forgets the nodes that died (their leases lapsed) and their bindings,
        a batch at a time, so that Redis does not keep them for ever."""
        removed = await self.commands.eval(
            SWEEP, [(self.prefix + "nodes").encode()], [self.prefix.encode(), self.sweep_batch]
        )
        if removed:
            self.log.info(
                "cluster: forgot {count} bindings of nodes whose lease lapsed", count=removed
            )

    def _check_leader_lease(self) -> None:
        """A leader that could not renew its lease steps down before it lapses, so that two
        nodes never run the singletons at once."""
        if not self.leader or self._leader_renewed is None:
            return
        if self._clock.seconds() - self._leader_renewed >= self.leader_lease - self.renew:
            self._step_down("its lease could not be renewed")

    def _step_down(self, why: str) -> None:
        if not self.leader:
            return
        self.leader = False
        self.log.warn(
            "cluster: node {node} is no longer the leader: {why}", node=self.node_name, why=why
        )
        self.singletons.follow()

    # -- the directory: IOriginatorObserver -------------------------------------------------

    def originator_connected(self, originator: str, connection: IConnection) -> None:
        if "\0" in originator:
            return  # never a valid ID; kept out of the directory's messages
        binding = f"{self.node_name} {self.incarnation} {next(self._seq)}".encode()
        self._bound[originator] = (connection, binding)
        if not self.commands.connected:
            return  # published when Redis is back
        published = self.commands.eval(
            BIND,
            [self._okey(originator), self._held_key(self._me)],
            [binding, self._me, originator, self._channel_prefix, self._node_prefix],
        )
        published.addErrback(self._directory_failed, "publishing", originator)

    def originator_disconnected(self, originator: str, connection: IConnection) -> None:
        entry = self._bound.get(originator)
        if entry is None or entry[0] is not connection:
            return
        del self._bound[originator]
        if self.commands.connected:
            self._unbind(originator, entry[1]).addErrback(
                self._directory_failed, "withdrawing", originator
            )

    def _unbind(self, originator: str, binding: bytes) -> Deferred[Any]:
        return self.commands.eval(
            UNBIND,
            [self._okey(originator), self._held_key(self._me)],
            [binding, originator, self._me],
        )

    def _directory_failed(self, failure: Failure, doing: str, originator: str) -> None:
        if failure.check(RedisUnavailable):
            return  # said once; put right when Redis is back
        self.log.failure(
            "cluster: {doing} {originator} failed",
            failure,
            doing=doing,
            originator=originator[:100],
        )

    def _taken_over(self, originator: str, binding: bytes) -> None:
        """A newer connection for ``originator`` was bound elsewhere: close ours (if the
        binding named is still ours)."""
        entry = self._bound.get(originator)
        if entry is None or entry[1] != binding:
            return
        del self._bound[originator]
        connection = entry[0]
        self.counts["taken_over"] += 1
        self.log.info(
            "cluster: {originator} reconnected to another node; closing its connection here",
            originator=originator,
        )
        self.originators.unbind(originator, connection)
        connection.close(1000, f"replaced by a newer connection for {originator} on another node")

    # -- messages ---------------------------------------------------------------------------

    def _message(self, channel: bytes, data: bytes) -> None:
        kind = data[:2]
        try:
            if kind == b"B\0":
                self._serve_batch(data)
            elif kind == b"A\0":
                self._answers(data)
            elif kind == b"S\0":
                self._marker(data[2:])
            elif kind == b"T\0":
                _, originator, binding = data.split(b"\0", 2)
                self._taken_over(originator.decode("utf-8", "surrogatepass"), binding)
            elif kind == b"F\0":
                flushed = data[2:].decode("utf-8", "surrogatepass")
                if self.flush is not None and flushed in self._bound:
                    self.flush(flushed)
            else:
                raise ValueError("unknown message type")
        except Exception as e:
            self.log.warn(
                "cluster: dropped a malformed message on {channel} ({error}): {data!r}",
                channel=channel[:100],
                error=str(e)[:200],
                data=data[:80],
            )

    # -- relaying: IClusterRelay ------------------------------------------------------------

    def relay(
        self, target: str, request: Request, timeout: float, stored: bool = False
    ) -> Deferred[Response]:
        """Send ``request`` on ``target``'s live connection on another node; fails with
        :class:`~acmews.errors.NoClusterRoute` when no other node holds one (or Redis cannot
        be asked, or, ``stored``, the holding node is delivering ``target``'s queue: the
        notification goes behind), with 4008 when no answer comes within ``timeout``, and as
        the holding node's connection failed otherwise.

        The relays asked for in one turn of the reactor go together: one :data:`RELAY` for
        all of them, one message a holding node, and the answers back likewise (one message
        a turn of the holding node); each keeps its own rqi, timeout and outcome."""
        if not self.available:
            return fail(NoClusterRoute("the cluster directory is unreachable"))
        now = self._clock.seconds()
        rid = b"%s/%d" % (self._me, next(self._relay_ids))
        relayed = _Relay(rid, target, request, timeout, stored, now + timeout)
        self._pending[rid] = relayed
        self._outbox.append(relayed)
        if self._outbox_call is None:
            self._outbox_call = self._reactor.callLater(0, self._send_outbox)
        self._expect(relayed)
        return relayed.waiting

    def holder(self, target: str) -> Deferred[str | None]:
        """The other node that holds ``target``'s live connection, or None."""
        return Deferred.fromCoroutine(self._holder(target))

    def queued(self, target: str) -> None:
        """Notifications were queued for ``target``: the node holding it is told to flush."""
        Deferred.fromCoroutine(self._kick(target)).addErrback(lambda _: None)

    async def _lookup(self, target: str) -> bytes | None:
        if not self.available:
            raise NoClusterRoute("the cluster directory is unreachable")
        try:
            binding = await self.commands.eval(LOOKUP, [self._okey(target)], [self._node_prefix])
        except RedisUnavailable as e:
            raise NoClusterRoute(f"the cluster directory is unreachable ({e})") from e
        return binding if isinstance(binding, bytes) else None

    async def _holder(self, target: str) -> str | None:
        try:
            binding = await self._lookup(target)
        except NoClusterRoute:
            return None
        if binding is None:
            return None
        node = binding.split(b" ", 1)[0]
        return None if node == self._me else node.decode()

    async def _kick(self, target: str) -> None:
        node = await self._holder(target)
        if node is not None:
            await self.commands.command(
                "PUBLISH", self._channel_prefix + node.encode(), b"F\0" + target.encode()
            )

    def _send_outbox(self) -> None:
        """This turn's relays, to Redis: one :data:`RELAY` (a chunk of them)."""
        self._outbox_call = None
        outbox, self._outbox = self._outbox, []
        chunk: list[_Relay] = []
        requests: list[bytes] = []
        for relayed in outbox:
            if relayed.waiting.called:
                continue  # timed out (or this node stopped) before it could be sent
            try:
                payload = encode_request(relayed.request)
            except Exception as e:
                self._settle(relayed, Failure(e))
                continue
            timeout_ms = f"{int(relayed.timeout * 1000)}{'q' if relayed.stored else ''}"
            requests.append(
                b"\0".join(
                    [
                        relayed.rid,
                        relayed.target.encode("utf-8", "surrogatepass"),
                        timeout_ms.encode(),
                        payload,
                    ]
                )
            )
            chunk.append(relayed)
            if len(chunk) >= self.relay_batch:
                self._send_chunk(chunk, requests)
                chunk, requests = [], []
        if chunk:
            self._send_chunk(chunk, requests)

    def _send_chunk(self, chunk: list[_Relay], requests: list[bytes]) -> None:
        if not self.commands.connected:
            for relayed in chunk:
                self._settle(relayed, Failure(NoClusterRoute(UNREACHABLE)))
            return
        sent = self.commands.eval(
            RELAY,
            [self._okey(relayed.target) for relayed in chunk],
            [self._node_prefix, self._channel_prefix, self._me, *requests],
        )
        sent.addCallbacks(
            self._looked_up, self._lookup_lost, callbackArgs=(chunk,), errbackArgs=(chunk,)
        )

    def _looked_up(self, result: Any, chunk: list[_Relay]) -> None:
        """RELAY's answer: where each request went (its answer may have come already)."""
        outcomes: list[bytes] = []
        if isinstance(result, bytes) and result[:1] == b"R":
            outcomes = result[1:].split(b"\0")
        if len(outcomes) != len(chunk):
            outcomes = [b"?"] * len(chunk)
        for relayed, outcome in zip(chunk, outcomes, strict=True):
            if relayed.waiting.called:
                continue
            code, node = outcome[:1], outcome[1:]
            if code == b"+":
                relayed.node = node
            elif code == b"-" or code == b"=":  # nowhere, or (a stale entry) here
                self._settle(relayed, Failure(NoClusterRoute("no live connection in the cluster")))
            elif code == b"0":
                relayed.node = node
                self._settle(
                    relayed, Failure(NoClusterRoute(f"node {node.decode()} is not listening"))
                )
            else:
                self._settle(relayed, Failure(TargetNotReachable("a malformed directory answer")))

    def _lookup_lost(self, failure: Failure, chunk: list[_Relay]) -> None:
        if failure.check(RedisUnavailable):
            # Redis's answer was lost with the connection (no answer in time, a node too
            # busy to read it): the requests may be on their way to the holding nodes, whose
            # answers come on the other connection. Waiting for them until the timeout,
            # rather than failing at once into the queue, keeps a notification from being
            # delivered twice.
            for relayed in chunk:
                if relayed.node is None:
                    relayed.node = b"?"
            return
        for relayed in chunk:
            self._settle(relayed, failure)

    def _settle(self, relayed: _Relay, result: Response | Failure) -> None:
        self._pending.pop(relayed.rid, None)
        if relayed.waiting.called:
            return
        if isinstance(result, Failure):
            relayed.waiting.errback(result)
        else:
            self.counts["relayed"] += 1
            relayed.waiting.callback(result)

    # (the timeouts: one timer for all the relays waiting, at the earliest deadline)

    def _expect(self, relayed: _Relay) -> None:
        deadlines = self._deadlines
        item = (relayed.deadline, relayed.rid)
        if deadlines and item < deadlines[-1]:
            bisect.insort(deadlines, item)  # (a shorter timeout than the relays before)
        else:
            deadlines.append(item)
        call = self._expiry_call
        if call is None:
            self._expiry_call = self._clock.callLater(
                max(relayed.deadline - self._clock.seconds(), 0), self._expire
            )
        elif relayed.deadline < call.getTime():
            call.reset(max(relayed.deadline - self._clock.seconds(), 0))

    def _expire(self) -> None:
        self._expiry_call = None
        now = self._clock.seconds()
        deadlines = self._deadlines
        due: list[_Relay] = []
        while deadlines and deadlines[0][0] <= now:
            _, rid = deadlines.popleft()
            relayed = self._pending.get(rid)
            if relayed is None:
                continue
            if relayed.waiting.called:  # (cancelled: the chain stopped)
                del self._pending[rid]
                continue
            due.append(relayed)
        if deadlines:
            self._expiry_call = self._clock.callLater(max(deadlines[0][0] - now, 0), self._expire)
        if due:
            self._catch_up(due)

    def _catch_up(self, due: list[_Relay]) -> None:
        """Before relays time out: read what Redis already has for this node. Twisted runs
        its timers before it reads the answers waiting, so a node too busy to read for a
        while would take answers that came in time for lost ones (and queue notifications
        that were delivered). A marker published on this node's channel now comes back
        after every answer published before it, and PUBLISH's own reply after every reply
        to this node's commands: once both are read (or ``catch_up`` seconds passed, or
        Redis is not connected), what is still waiting has timed out."""
        if not (self.commands.connected and self.subscriber.connected):
            self._time_out(due)
            return
        token = b"%d" % next(self._marker_ids)
        marker = _CatchUp(due)
        self._markers[token] = marker

        def done(_: object = None) -> None:
            marker.waiting -= 1
            if marker.waiting <= 0:
                finish()

        def finish() -> None:
            if self._markers.pop(token, None) is None:
                return
            if marker.grace is not None and marker.grace.active():
                marker.grace.cancel()
            self._time_out(marker.due)

        marker.arrived = done
        marker.grace = self._clock.callLater(self.catch_up, finish)
        published = self.commands.command(
            "PUBLISH", self._channel_prefix + self._me, b"S\0" + token
        )
        published.addCallbacks(done, lambda _: finish())

    def _time_out(self, due: list[_Relay]) -> None:
        for relayed in due:
            if relayed.waiting.called:
                continue
            if relayed.node is None:
                error = RequestTimeout(f"no response within {relayed.timeout:g} s (directory)")
            else:
                error = RequestTimeout(
                    f"no response within {relayed.timeout:g} s "
                    f"(relayed to node {relayed.node.decode()})",
                    rqi=relayed.request.rqi,
                )
            self._settle(relayed, Failure(error))

    def _marker(self, token: bytes) -> None:
        marker = self._markers.get(token)
        if marker is not None and marker.arrived is not None:
            marker.arrived()

    # (the answers)

    def _answers(self, data: bytes) -> None:
        """An A message: answers to this node's relays (``A NUL`` then per answer ``rid NUL
        status NUL length NUL payload``)."""
        position = 2
        end = len(data)
        while position < end:
            rid_end = data.index(b"\0", position)
            status_end = data.index(b"\0", rid_end + 1)
            length_end = data.index(b"\0", status_end + 1)
            length = int(data[status_end + 1 : length_end])
            start = length_end + 1
            if length < 0 or start + length > end:
                raise ValueError("a truncated answer")
            rid, status = data[position:rid_end], data[rid_end + 1 : status_end]
            self._answered(rid, status, data[start : start + length])
            position = start + length

    def _answered(self, rid: bytes, status: bytes, payload: bytes) -> None:
        relayed = self._pending.get(rid)
        if relayed is None:
            return  # timed out meanwhile (the chain went on), or a stray
        if relayed.waiting.called:  # (cancelled: the chain stopped)
            del self._pending[rid]
            return
        if status == b"ok":
            try:
                response = CBOR.decode(payload)
            except OneM2MError:
                response = None
            if not isinstance(response, Response):
                self.log.warn("cluster: a malformed answer to relay {rid}", rid=rid[:100])
                self._settle(relayed, Failure(TargetNotReachable(MALFORMED)))
                return
            self._settle(relayed, response)
        elif status == b"no":
            self._settle(relayed, Failure(NoClusterRoute(payload.decode("utf-8", "replace"))))
        elif status[:1] == b"e" and status[1:].isdigit():
            rsc = int(status[1:])
            text = payload.decode("utf-8", "replace")
            error: OneM2MError
            if rsc == int(RequestTimeout.rsc):
                error = RequestTimeout(text)
            else:
                error = TargetNotReachable(text)
            self._settle(relayed, Failure(error))
        else:
            self._settle(relayed, Failure(TargetNotReachable(MALFORMED)))

    # (serving other nodes' relays)

    def _serve_batch(self, data: bytes) -> None:
        """A B message: other node's requests for this node's connections, in order."""
        sender_end = data.index(b"\0", 2)
        sender = data[2:sender_end]
        if not sender:
            raise ValueError("no sender")
        reply_to = self._channel_prefix + sender
        position = sender_end + 1
        end = len(data)
        while position < end:
            binding_end = data.index(b"\0", position)
            length_end = data.index(b"\0", binding_end + 1)
            length = int(data[binding_end + 1 : length_end])
            start = length_end + 1
            if length < 0 or start + length > end:
                raise ValueError("a truncated request")
            rid, target, timeout_ms, payload = data[start : start + length].split(b"\0", 3)
            self._serve(reply_to, rid, target, data[position:binding_end], timeout_ms, payload)
            position = start + length

    def _serve(
        self,
        reply_to: bytes,
        rid: bytes,
        target_bytes: bytes,
        binding: bytes,
        timeout_ms: bytes,
        payload: bytes,
    ) -> None:
        """Another node asks this one to send a request on one of its connections."""
        target = target_bytes.decode("utf-8", "surrogatepass")
        stored = timeout_ms.endswith(b"q")
        timeout = int(timeout_ms.rstrip(b"q")) / 1000.0
        entry = self._bound.get(target)
        if entry is None or entry[1] != binding:
            self._reply(reply_to, rid, b"no", b"no live connection here any more")
            return
        if stored and self.busy is not None and self.busy(target):
            # its queue is being delivered here: the sender queues it, behind (order)
            self._reply(reply_to, rid, b"no", b"its queue is being delivered; queue it")
            return
        if len(self._serving) >= self.max_relayed:
            self._reply(reply_to, rid, b"e5103", b"the holding node is busy")
            return
        try:
            request = decode_request(payload)
        except OneM2MError as e:
            self._reply(reply_to, rid, b"e5103", b"the request cannot be relayed")
            self.log.warn(
                "cluster: a relayed request that cannot be decoded ({error})",
                error=e.reason[:200],
            )
            return
        # (a connection that refuses at once, say a request too large for it, fails the same)
        sent: Deferred[Response] = maybeDeferred(entry[0].request, request, timeout)
        self._serving.add(sent)

        def done(result: Response | Failure) -> None:
            self._serving.discard(sent)
            if isinstance(result, Failure):
                if result.check(CancelledError):
                    return
                error = result.value
                if isinstance(error, OneM2MError):
                    code = int(error.rsc) if isinstance(error, RequestTimeout) else 5103
                    self._reply(
                        reply_to, rid, b"e%d" % code, reason(error).encode("utf-8", "replace")
                    )
                else:
                    self._reply(reply_to, rid, b"e5103", b"the connection failed")
                return
            self.counts["served"] += 1
            try:
                encoded = CBOR.encode(result)
            except Exception:
                self._reply(reply_to, rid, b"e5103", b"the response cannot be relayed")
                return
            self._reply(reply_to, rid, b"ok", encoded)

        sent.addBoth(done)

    def _reply(self, channel: bytes, rid: bytes, status: bytes, payload: bytes) -> None:
        """An answer, sent with the others of this turn for the same node (one A message)."""
        answers = self._replies.get(channel)
        if answers is None:
            answers = self._replies[channel] = []
        answers.append(b"%s\0%s\0%d\0%s" % (rid, status, len(payload), payload))
        if self._replies_call is None:
            self._replies_call = self._reactor.callLater(0, self._send_replies)

    def _send_replies(self) -> None:
        self._replies_call = None
        replies, self._replies = self._replies, {}
        for channel, answers in replies.items():
            for start in range(0, len(answers), self.relay_batch):
                message = b"A\0" + b"".join(answers[start : start + self.relay_batch])
                sent = self.commands.command("PUBLISH", channel, message)
                # lost on the way: the sender's timeout sends them down the chain (at least
                # once)
                sent.addErrback(lambda _: None)

    # -- what the cluster looks like ---------------------------------------------------------

    def when_available(self) -> Deferred[None]:
        """Fires once Redis is reachable and this node's lease and bindings are in it."""
        d: Deferred[None] = Deferred()
        if self._published:
            d.callback(None)
        else:
            self._available_waiters.append(d)
        return d

    def when_unavailable(self) -> Deferred[None]:
        """Fires once this node finds Redis unreachable (at once if it is now)."""
        d: Deferred[None] = Deferred()
        if self.running and not self.available:
            d.callback(None)
        else:
            self._unavailable_waiters.append(d)
        return d

    def sync(self) -> Deferred[Any]:
        """Fires once every directory change this node made so far is in Redis (they go in
        order on one connection)."""
        return self.commands.command("PING")

    def bound_here(self) -> list[str]:
        return list(self._bound)


class _Relay:
    """A request this node relays to another, until it is answered or times out."""

    __slots__ = ("deadline", "node", "request", "rid", "stored", "target", "timeout", "waiting")

    def __init__(
        self,
        rid: bytes,
        target: str,
        request: Request,
        timeout: float,
        stored: bool,
        deadline: float,
    ) -> None:
        self.rid = rid
        self.target = target
        self.request = request
        self.timeout = timeout
        self.stored = stored
        self.deadline = deadline
        #: the holding node, once the directory said (b"?": its answer was lost)
        self.node: bytes | None = None
        self.waiting: Deferred[Response] = Deferred()


class _CatchUp:
    """Relays past their deadline, waiting for the marker that says Redis handed over
    whatever answers it had for them."""

    __slots__ = ("arrived", "due", "grace", "waiting")

    def __init__(self, due: list[_Relay]) -> None:
        self.due = due
        #: the marker's message and PUBLISH's reply
        self.waiting = 2
        self.arrived: Callable[[], None] | None = None
        self.grace: IDelayedCall | None = None


def _bound_originators(originators: IOriginatorMap) -> list[str]:
    listing = getattr(originators, "originators", None)
    return list(listing()) if callable(listing) else []


async def _nothing() -> None:
    return None
