"""What a cluster looks like now, read from its Redis: the nodes, the leader, the originators
each node holds (``acmews cluster``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from .redis import RedisClient, RedisUnavailable, RedisURL, Script

__all__ = ["ClusterStatus", "NodeStatus", "format_status", "read_status"]

#: KEYS: nodes, leader. ARGV: prefix, how many originators to list per node (0: none).
#: For each node: its name, whether its lease holds, its live originators (counted; the
#: first N listed).
STATUS = Script(
    """
local out = {}
local leader = redis.call('GET', KEYS[2]) or ''
local limit = tonumber(ARGV[2])
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local inc = redis.call('GET', ARGV[1] .. 'node:' .. node)
  local count = 0
  local listed = {}
  if inc then
    local mine = node .. ' ' .. inc .. ' '
    for _, o in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'held:' .. node)) do
      local v = redis.call('GET', ARGV[1] .. 'o:' .. o)
      if v and string.sub(v, 1, #mine) == mine then
        count = count + 1
        if #listed < limit then listed[#listed + 1] = o end
      end
    end
  end
  out[#out + 1] = {node, inc and 1 or 0, count, listed}
end
return {leader, out}
"""
)


@dataclass
class NodeStatus:
    name: str
    #: its lease holds (it renewed it within the last 10 s)
    alive: bool
    #: originators whose live connection it holds
    originators: int
    #: the first of them (as many as asked for), sorted
    listed: list[str] = field(default_factory=list)


@dataclass
class ClusterStatus:
    redis: str
    prefix: str
    leader: str | None
    nodes: list[NodeStatus]


async def read_status(url: RedisURL, reactor: Any, prefix: str, listed: int = 0) -> ClusterStatus:
    """Connects once (RedisUnavailable if that fails), reads, disconnects."""
    outcome: Deferred[str | None] = Deferred()

    def state(up: bool, why: str) -> None:
        if not outcome.called:
            outcome.callback(None if up else why)

    client = RedisClient(url, reactor, name="acmews cluster", on_state=state)
    client.start()
    try:
        problem = await outcome
        if problem is not None:
            raise RedisUnavailable(f"cannot reach {url.description}: {problem}")
        reply = await client.eval(
            STATUS,
            [(prefix + "nodes").encode(), (prefix + "leader").encode()],
            [prefix.encode(), listed],
        )
    finally:
        await client.stop()
    leader_value, rows = reply
    leader = _text(leader_value).split(" ", 1)[0] or None
    nodes = [
        NodeStatus(_text(name), bool(alive), int(count), sorted(_text(o) for o in names))
        for name, alive, count, names in rows
    ]
    nodes.sort(key=lambda n: (not n.alive, n.name))
    return ClusterStatus(url.description, prefix, leader, nodes)


def format_status(status: ClusterStatus) -> str:
    """The status as lines of text."""
    alive = [n for n in status.nodes if n.alive]
    lines = [
        f"cluster {status.prefix!r} on {status.redis}",
        f"leader: {status.leader or '(none)'}",
        f"nodes: {len(alive)} up"
        + (f", {len(status.nodes) - len(alive)} down" if len(alive) < len(status.nodes) else ""),
    ]
    width = max((len(n.name) for n in status.nodes), default=0)
    for node in status.nodes:
        state = "leader" if node.name == status.leader and node.alive else ""
        state = state if node.alive else "down (lease lapsed)"
        count = f"{node.originators} originator{'' if node.originators == 1 else 's'}"
        line = f"  {node.name:<{width}}  {state:<19}  {count if node.alive else ''}"
        lines.append(line.rstrip())
        for originator in node.listed:
            lines.append(f"    {originator}")
        if node.listed and node.originators > len(node.listed):
            lines.append(f"    ... and {node.originators - len(node.listed)} more")
    return "\n".join(lines) + "\n"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
