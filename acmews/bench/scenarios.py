"""The scenarios: retrieve and create-cin (set up, load, clean up), fanout and idle; and the
server's CPU time and RSS read from /proc around them.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredSemaphore,
    FirstError,
    TimeoutError,
    gatherResults,
)
from twisted.internet.task import deferLater

from acmews.bench import idle
from acmews.bench.connections import (
    RVI,
    BenchError,
    RequestChannel,
    Target,
    ae_create,
    close_all,
    open_client,
)
from acmews.bench.idle import (
    IdleConfig,
    IdleCounts,
    hold,
    open_concurrency,
    per_node_concurrency,
    sample_for,
    subscription,
)
from acmews.bench.ledger import Result
from acmews.bench.load import LoadConfig, cpu_time, run_load, split_evenly
from acmews.bench.progress import Progress
from acmews.bench.workers import run_workers

__all__ = [
    "RUNNERS",
    "BenchOptions",
    "Run",
    "ServerSample",
    "admin_requests",
    "ae_create",
    "parse_proc",
    "run_fanout",
    "run_idle",
    "run_requests",
    "sample_server",
]


# ---------------------------------------------------------------------------------------------
# the server process


@dataclass
class ServerSample:
    cpu: float  # seconds, utime + stime
    rss_kib: int
    system: float = 0.0  # seconds, stime: the kernel's part of ``cpu``


def sample_server(pid: int | None) -> ServerSample | None:
    """CPU time and RSS of a local process, from /proc (``None`` without a pid)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status", "rb") as f:
            status = f.read()
    except OSError as e:
        raise BenchError(f"cannot read /proc/{pid}: {e}") from None
    return parse_proc(stat, status, os.sysconf("SC_CLK_TCK"))


def parse_proc(stat: bytes, status: bytes, ticks: int) -> ServerSample:
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    rss = 0
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
    return ServerSample((utime + stime) / ticks, rss, stime / ticks)


def _server_cpu(before: ServerSample, after: ServerSample) -> dict[str, Any]:
    """The server's CPU between two samples, the kernel's part of it, and its RSS after."""
    return {
        "cpu_s": after.cpu - before.cpu,
        "system_s": after.system - before.system,
        "rss_kib": after.rss_kib,
    }


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclass
class BenchOptions:
    url: str
    originator: str = "CAdmin"
    target: str = "cse-in"
    scenario: str = "retrieve"
    mode: str = "sequential"
    window: int = 64
    connections: int = 1
    processes: int = 1
    requests: int = 2000
    duration: float = 5.0
    timeout: float = 5.0
    serialization: str = "json"
    json_file: str | None = None
    server_pid: int | None = None
    compare: str | None = None
    compare_pid: int | None = None
    rounds: int = 3
    register: bool = False
    #: a PNG to draw the latency histogram and the throughput over time into
    plot: str | None = None
    #: the group scenario: containers in the group each request is fanned out to
    members: int = 100
    #: the group scenario across a CSE-to-CSE link: the members are made on the CSE at this
    #: URL (registered to the one under load), which the group's CSE knows as ``member_cse``
    #: (its CSEBase's SP-relative address, e.g. ``/id-mn/cse-mn``)
    member_url: str | None = None
    member_cse: str | None = None
    #: every URL given: the nodes of one CSE, the connections spread over them in turn
    urls: list[str] = field(default_factory=list)
    #: the cluster scenario's kill mode: this node process (not the first URL's) is killed
    #: (SIGKILL) before round ``kill_after``; its AEs reconnect to the next node in turn
    kill_pid: int | None = None
    kill_after: int = 1
    #: the idle scenario: connections registered and subscribed, then notified once
    sample: int = 0
    #: the idle scenario: the nodes' pids, one per URL in order (RSS per node)
    node_pids: list[int] = field(default_factory=list)

    def urls_for(self, url: str) -> list[str]:
        """Where a run against ``url`` opens its connections: every node when ``url`` is the
        first of several, else ``url`` alone (a --compare run)."""
        return list(self.urls) if self.urls and url == self.urls[0] else [url]

    @property
    def effective_window(self) -> int:
        return 1 if self.mode == "sequential" else self.window


@dataclass(frozen=True)
class Run:
    """One run of a scenario: the server's URL and pid (None: not sampled), where its warnings
    go (the report's stream) and where its progress goes."""

    url: str
    pid: int | None
    out: TextIO
    progress: Progress = field(default_factory=lambda: Progress(None))


async def admin_requests(
    reactor: Any,
    opts: BenchOptions,
    target: Target,
    originator: str,
    requests: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Send requests one after the other on a connection of their own; their responses."""
    client = await open_client(reactor, target, opts.serialization, originator, opts.timeout)
    channel = RequestChannel(client, opts.serialization, reactor, originator, opts.timeout)
    try:
        return [await channel.request(r) for r in requests]
    finally:
        await close_all(reactor, [client])


async def run_requests(
    reactor: Any, opts: BenchOptions, run: Run
) -> tuple[Result, dict[str, Any]]:
    """retrieve / create-cin / group: set up, run the load (in-process or in workers), clean up."""
    url, pid, out, progress = run.url, run.pid, run.out, run.progress
    tag = secrets.token_hex(3)
    target = Target.parse(url)
    cleanup: list[str] = []
    #: what the group scenario made on the members' CSE (``--member-url``)
    member_cleanup: list[str] = []
    first = opts.originator.replace("{k}", "0")
    request: dict[str, Any] = {"op": 2, "to": opts.target, "fr": first, "rvi": RVI}
    registered: list[str] = []
    try:
        if opts.register:
            for k in range(max(opts.connections, opts.processes)):
                aei = opts.originator.replace("{k}", str(k))
                [resp] = await admin_requests(
                    reactor, opts, target, aei, [ae_create(opts.target, aei)]
                )
                if resp.get("rsc") != 2001:
                    raise BenchError(f"cannot register the AE {aei}: {resp}")
                registered.append(aei)
        if opts.scenario == "create-cin":
            # set-up and clean-up on their own short connections: a server closes an older
            # connection of the same originator when the load connections open
            rn = f"bench{tag}"
            [resp] = await admin_requests(
                reactor,
                opts,
                target,
                first,
                [{"op": 1, "to": opts.target, "ty": 3, "pc": {"m2m:cnt": {"rn": rn, "mni": 10}}}],
            )
            if resp.get("rsc") != 2001:
                raise BenchError(f"cannot create the container {opts.target}/{rn}: {resp}")
            cleanup.append(f"{opts.target}/{rn}")
            request = {
                "op": 1,
                "to": f"{opts.target}/{rn}",
                "fr": first,
                "rvi": RVI,
                "ty": 4,
                "pc": {"m2m:cin": {"con": "bench", "cnf": "text/plain:0"}},
            }
        elif opts.scenario == "group":
            request = await _set_up_group(
                reactor, opts, target, first, tag, cleanup, member_cleanup
            )
        n_proc = max(1, opts.processes)
        conns = split_evenly(max(opts.connections, n_proc), n_proc)
        reqs = split_evenly(opts.requests, n_proc)
        cfgs = [
            LoadConfig(
                url=url,
                urls=opts.urls_for(url),
                serialization=opts.serialization,
                originator=opts.originator,
                request=request,
                connections=conns[i],
                window=opts.effective_window,
                requests=reqs[i],
                duration=opts.duration,
                timeout=opts.timeout,
                tag=f"{tag}{i}",
                first_connection=sum(conns[:i]),
            )
            for i in range(n_proc)
        ]

        def show(answered: int) -> None:
            progress.update(f"{answered}/{opts.requests} answered")

        before: ServerSample | None = None

        def sample_before() -> Deferred[None]:
            nonlocal before
            before = sample_server(pid)
            return Deferred.fromCoroutine(_noop())

        if n_proc == 1:
            result = await run_load(reactor, cfgs[0], go=sample_before, progress=show)
        else:
            result = await run_workers(reactor, cfgs, sample_before, show)
        after = sample_server(pid)
        progress.clear()
    finally:
        await _delete_all(reactor, opts, target, first, cleanup, out)
        if member_cleanup and opts.member_url is not None:
            member_target = Target.parse(opts.member_url)
            await _delete_all(reactor, opts, member_target, first, member_cleanup, out)
        for aei in registered:  # an AE may delete itself
            try:
                [r] = await admin_requests(
                    reactor, opts, target, aei, [{"op": 4, "to": f"{opts.target}/{aei}"}]
                )
                if r.get("rsc") != 2002:
                    out.write(f"  warning: could not delete the AE {aei}: {r}\n")
            except Exception as e:
                out.write(f"  warning: could not delete the AE {aei}: {e}\n")
    server: dict[str, Any] = {}
    if before is not None and after is not None:
        server = _server_cpu(before, after)
    return result, server


async def _delete_all(
    reactor: Any, opts: BenchOptions, target: Target, first: str, paths: list[str], out: Any
) -> None:
    """DELETE ``paths`` (newest first is not needed: each is a subtree of its own)."""
    if not paths:
        return
    try:
        answers = await admin_requests(
            reactor, opts, target, first, [{"op": 4, "to": p} for p in paths]
        )
        for path, r in zip(paths, answers, strict=True):
            if r.get("rsc") != 2002:
                out.write(f"  warning: could not delete {path}: {r}\n")
    except Exception as e:
        out.write(f"  warning: clean-up failed: {e}\n")


async def _set_up_group(
    reactor: Any,
    opts: BenchOptions,
    target: Target,
    first: str,
    tag: str,
    cleanup: list[str],
    member_cleanup: list[str],
) -> dict[str, Any]:
    """The group scenario's set-up: ``opts.members`` containers (each with one instance) in
    a group; the request, a RETRIEVE of its fan-out point's ``la`` (each member's latest
    instance, aggregated). One such request is checked first: one 2000 per member.

    With ``member_url`` the members are made on that CSE (by its admin, as ``--originator``),
    under an ACP that lets anyone RETRIEVE them (the group's CSE forwards as its own
    ``/cse-id/originator``), and the group names them by ``member_cse``."""
    n = opts.members
    names = [f"bench{tag}m{i}" for i in range(n)]
    rn = f"bench{tag}g"
    member_target, base, remote = target, opts.target, opts.target
    setup: list[dict[str, Any]] = []
    acpi: dict[str, Any] = {}
    if opts.member_url is not None:
        if opts.member_cse is None:
            raise BenchError("--member-url needs --member-cse (e.g. /id-mn/cse-mn)")
        member_target = Target.parse(opts.member_url)
        remote = opts.member_cse
        base = remote.rsplit("/", 1)[-1]
        acp = f"bench{tag}acp"
        rules = {
            "pv": {"acr": [{"acor": ["*"], "acop": 2}]},
            "pvs": {"acr": [{"acor": [first], "acop": 63}]},
        }
        setup.append({"op": 1, "to": base, "ty": 1, "pc": {"m2m:acp": {"rn": acp, **rules}}})
        acpi = {"acpi": [f"{base}/{acp}"]}
    for name in names:
        setup.append({"op": 1, "to": base, "ty": 3, "pc": {"m2m:cnt": {"rn": name, **acpi}}})
        setup.append({"op": 1, "to": f"{base}/{name}", "ty": 4, "pc": {"m2m:cin": {"con": name}}})
    answers = await admin_requests(reactor, opts, member_target, first, setup)
    made = member_cleanup if opts.member_url is not None else cleanup
    made.extend(
        f"{base}/{request['pc'][key]['rn']}"
        for request, answer in zip(setup, answers, strict=True)
        for key in ("m2m:cnt", "m2m:acp")
        if key in request["pc"] and answer.get("rsc") == 2001
    )
    if any(r.get("rsc") != 2001 for r in answers):
        raise BenchError(f"cannot create the group's members: {answers[-1]}")
    mid = [f"{remote}/{name}" for name in names]
    body = {"rn": rn, "mt": 3, "mid": mid, "mnm": n}
    fopt = f"{opts.target}/{rn}/fopt/la"
    [created, probe] = await admin_requests(
        reactor,
        opts,
        target,
        first,
        [
            {"op": 1, "to": opts.target, "ty": 9, "pc": {"m2m:grp": body}},
            {"op": 2, "to": fopt},
        ],
    )
    if created.get("rsc") != 2001:
        raise BenchError(f"cannot create the group {opts.target}/{rn}: {created}")
    cleanup.append(f"{opts.target}/{rn}")
    rsps = (probe.get("pc") or {}).get("m2m:agr", {}).get("m2m:rsp", [])
    if probe.get("rsc") != 2000 or [r.get("rsc") for r in rsps] != [2000] * n:
        raise BenchError(f"the group's fan-out point does not answer for {n} members: {probe}")
    return {"op": 2, "to": fopt, "fr": first, "rvi": RVI}


async def _noop() -> None:
    return None


def _drain_times(kill: dict[str, Any], rounds: dict[int, dict[str, Any]], count: int) -> None:
    """Kill mode: seconds from the kill until the last AE reconnected (``reconnect_s``) and
    until every round sent before then had reached every AE (``drained_s``: what was queued
    for the moved AEs delivered; None if some round never did)."""
    killed = kill.pop("at", None)
    last = kill.pop("reconnected_at", None)
    if killed is None or last is None:
        return
    kill["reconnect_s"] = last - killed
    ends = []
    for r in rounds.values():
        if r["t0"] > last:
            continue
        if len(r["got"]) < count:
            kill["drained_s"] = None
            return
        ends.append(r["t0"] + max(r["got"].values()))
    kill["drained_s"] = max(max(ends, default=killed) - killed, 0.0)


async def run_fanout(reactor: Any, opts: BenchOptions, run: Run) -> tuple[Result, dict[str, Any]]:
    """N AEs subscribe to one container; each CIN must reach all N (rounds, timed).

    With several URLs (the nodes of one CSE) AE k connects to the k-th in turn, the admin
    (who creates the container and each CIN) to the first; the ``cluster`` scenario then
    reports the notifications to AEs on the first node (same node) and on the others
    (relayed across the cluster) apart."""
    url, pid, out, progress = run.url, run.pid, run.out, run.progress
    tag = secrets.token_hex(2)
    target = Target.parse(url)
    nodes = [Target.parse(u) for u in opts.urls_for(url)]
    #: the node each AE is connected to now, its AE-ID (kill mode: AEs move)
    where = [k % len(nodes) for k in range(opts.connections)]
    aei_of = [f"Cbench{tag}x{k}" for k in range(opts.connections)]
    killing = opts.kill_pid is not None
    finished = [False]
    kill: dict[str, Any] = {}
    t = opts.timeout
    admin_client = await open_client(reactor, target, opts.serialization, opts.originator, t)
    admin = RequestChannel(admin_client, opts.serialization, reactor, opts.originator, t)
    channels: list[RequestChannel] = []
    created_aes: list[str] = []
    cnt = f"{opts.target}/benchfan{tag}"
    result = Result(connections=0)
    rounds: dict[int, dict[str, Any]] = {}
    before = after = None
    try:
        resp = await admin.request(
            {
                "op": 1,
                "to": opts.target,
                "ty": 3,
                "pc": {"m2m:cnt": {"rn": cnt.rsplit("/")[-1], "mni": 10}},
            }
        )
        if resp.get("rsc") != 2001:
            raise BenchError(f"cannot create the container {cnt}: {resp}")
        slots = DeferredSemaphore(SETUP_CONCURRENCY)
        opened: list[RequestChannel | None] = [None] * opts.connections

        async def set_up(k: int) -> None:
            # a bounded number at a time: a thousand simultaneous connects overflow a
            # server's listen backlog (Twisted's default is 50)
            await slots.acquire()
            try:
                aei = f"Cbench{tag}x{k}"
                # registered and subscribed through the first node (where the container
                # is: nodes with stores of their own see it only there), then connected to
                # its own node
                client = await open_client(reactor, target, opts.serialization, aei, t)
                s = opened[k] = RequestChannel(client, opts.serialization, reactor, aei, t)
                resp = await s.request(ae_create(opts.target, aei))
                if resp.get("rsc") != 2001:
                    raise BenchError(f"AE CREATE for {aei} failed: {resp}")
                created_aes.append(aei)
                aei = aei_of[k] = resp.get("pc", {}).get("m2m:ae", {}).get("aei") or aei
                # (contentInstances only: not the other AEs' subscriptions)
                sub = subscription(cnt, k, aei)
                resp = await s.request(sub)
                if resp.get("rsc") == 4103:
                    # the AE may not subscribe to the admin's container (ACME's default
                    # ACPs): the admin subscribes on its behalf; the CSE verifies with the AE
                    resp = await admin.request(sub)
                if resp.get("rsc") != 2001:
                    raise BenchError(f"subscription for {aei} failed: {resp}")
                if where[k]:
                    # its own node first (newest wins: the route moves there in one step
                    # and the first node closes the old connection), so that no
                    # notification finds it connected nowhere
                    old, client = (
                        client,
                        await open_client(reactor, nodes[where[k]], opts.serialization, aei, t),
                    )
                    s = opened[k] = RequestChannel(client, opts.serialization, reactor, aei, t)
                    await close_all(reactor, [old])
                progress.update(f"{len(created_aes)}/{opts.connections} AEs subscribed")
            finally:
                slots.release()

        try:
            await gatherResults(
                [Deferred.fromCoroutine(set_up(k)) for k in range(opts.connections)],
                consumeErrors=True,
            )
        except FirstError as e:
            error = e.subFailure.value
            assert isinstance(error, Exception)
            raise error from None
        finally:
            channels.extend(s for s in opened if s is not None)

        def on_notify(k: int) -> Callable[[dict[str, Any]], None]:
            def handle(msg: dict[str, Any]) -> None:
                sgn = (msg.get("pc") or {}).get("m2m:sgn") or {}
                rep = (sgn.get("nev") or {}).get("rep") or {}
                con = (rep.get("m2m:cin") or {}).get("con", "")
                if not (isinstance(con, str) and con.startswith("r")):
                    return  # verification request or other
                r = rounds.get(int(con[1:]))
                if r is None:
                    result.unknown += 1
                elif k in r["got"]:
                    if killing:  # at least once: a NOTIFY in flight at the kill comes again
                        kill["duplicates"] = kill.get("duplicates", 0) + 1
                    else:
                        result.duplicates += 1
                else:
                    r["got"][k] = time.perf_counter() - r["t0"]
                    r["node"][k] = where[k]
                    if len(r["got"]) == opts.connections:
                        for whole in (r["all"], r["whole"]):  # (all: timed, whole: not)
                            if not whole.called:
                                whole.callback(None)

            return handle

        def watch(k: int, s: RequestChannel) -> None:
            """Kill mode: an AE whose connection is lost reconnects to the next node."""
            if killing:
                s.client.closed.addCallback(lambda _: None if finished[0] else moved(k))

        def moved(k: int) -> None:
            Deferred.fromCoroutine(reconnect(k)).addErrback(lambda _: None)

        async def reconnect(k: int) -> None:
            for attempt in range(3 * len(nodes)):
                index = (where[k] + 1 + attempt) % len(nodes)
                try:
                    client = await open_client(
                        reactor, nodes[index], opts.serialization, aei_of[k], t
                    )
                except Exception:
                    continue
                s = RequestChannel(client, opts.serialization, reactor, aei_of[k], t)
                s.on_request = on_notify(k)
                channels[k] = s
                where[k] = index
                kill["reconnected"] = kill.get("reconnected", 0) + 1
                kill["reconnected_at"] = time.perf_counter()
                watch(k, s)
                return

        for k, s in enumerate(channels):
            s.on_request = on_notify(k)
            watch(k, s)
        before = sample_server(pid)
        result.started, cpu0 = time.time(), cpu_time()
        end = time.perf_counter() + opts.duration
        n = 0
        while n < opts.requests and time.perf_counter() < end:
            progress.update(f"round {n + 1}/{opts.requests}")
            if killing and n == opts.kill_after and "round" not in kill:
                assert opts.kill_pid is not None
                os.kill(opts.kill_pid, signal.SIGKILL)
                kill.update(pid=opts.kill_pid, round=n, at=time.perf_counter())
                progress.say(f"killed node pid {opts.kill_pid} before round {n + 1}")
            r = rounds[n] = {"t0": time.perf_counter(), "got": {}, "node": {}}
            r["all"], r["whole"] = Deferred(), Deferred()
            cin = await admin.request(
                {"op": 1, "to": cnt, "ty": 4, "pc": {"m2m:cin": {"con": f"r{n}"}}}
            )
            result.sent += 1
            result.rsc[str(cin.get("rsc"))] = result.rsc.get(str(cin.get("rsc")), 0) + 1
            if cin.get("rsc") == 2001:
                try:
                    await r["all"].addTimeout(t, reactor)
                    result.latencies.append(time.perf_counter() - r["t0"])
                except TimeoutError:
                    pass
            result.answered += len(r["got"])
            result.unanswered += opts.connections - len(r["got"])
            n += 1
        if killing:
            # what was queued for the moved AEs arrives once they are back: wait for it,
            # then count every round whole (late is not lost)
            late = [r["whole"] for r in rounds.values() if not r["whole"].called]
            if late:
                waiting = DeferredList(late, consumeErrors=True)
                waiting.addTimeout(t, reactor)
                try:
                    await waiting
                except TimeoutError:
                    pass
            result.answered = sum(len(r["got"]) for r in rounds.values())
            result.unanswered = opts.connections * len(rounds) - result.answered
            _drain_times(kill, rounds, opts.connections)
            result.extra["kill"] = kill
        result.ended, result.client_cpu = time.time(), cpu_time() - cpu0
        after = sample_server(pid)
        progress.clear()
        result.extra["rounds"] = n
        result.extra["notify_latencies_ms"] = sorted(
            v * 1000 for r in rounds.values() for v in r["got"].values()
        )
        if len(nodes) > 1:
            for name, same in (("same_node", True), ("cross_node", False)):
                result.extra[f"notify_latencies_ms_{name}"] = sorted(
                    v * 1000
                    for r in rounds.values()
                    for k, v in r["got"].items()
                    if (r["node"][k] == 0) == same
                )
        for s in [admin, *channels]:
            result.duplicates += s.ledger.duplicates
            result.unknown += s.ledger.unknown
            result.malformed += s.ledger.malformed
    finally:
        finished[0] = True
        await _clean_up(reactor, opts, target, admin, [*created_aes, cnt.rsplit("/")[-1]], out)
        await close_all(reactor, [s.client for s in channels] + [admin_client])
    result.connections = opts.connections
    server: dict[str, Any] = {}
    if before is not None and after is not None:
        server = _server_cpu(before, after)
        if result.answered:
            progress.update("pipelined RETRIEVE for reference")
            reference = await reference_retrieve(reactor, opts, url, pid, tag)
            progress.clear()
            if reference is not None:
                server["reference_us_per_request"] = reference
    return result, server


#: requests of the pipelined RETRIEVE run the fan-out compares a notification with (about a
#: second of the server's CPU: /proc counts in 10 ms ticks)
REFERENCE_REQUESTS = 50_000

#: before that run the server is let settle (the fan-out's clean-up has it close a thousand
#: connections and free what they held): at most QUIET_WAIT s, in steps of QUIET_STEP s, until
#: a step costs it at most QUIET_CPU s of CPU
QUIET_WAIT = 5.0
QUIET_STEP = 0.2
QUIET_CPU = 0.01


async def until_quiet(reactor: Any, pid: int | None) -> bool:
    """Wait until the server at ``pid`` is (almost) idle, so that what the fan-out left it
    to do is not counted as the reference's. False if it is still busy after
    :data:`QUIET_WAIT` s (the reference is measured anyway)."""
    last = sample_server(pid)
    steps = round(QUIET_WAIT / QUIET_STEP)
    for _ in range(steps):
        if last is None:
            return True
        await deferLater(reactor, QUIET_STEP, lambda: None)
        now = sample_server(pid)
        if now is not None and now.cpu - last.cpu <= QUIET_CPU:
            return True
        last = now
    return False


async def reference_retrieve(
    reactor: Any, opts: BenchOptions, url: str, pid: int | None, tag: str
) -> float | None:
    """The server's CPU per request of a pipelined RETRIEVE of the CSEBase (one connection,
    window 64, :data:`REFERENCE_REQUESTS`) on the server just measured, once it has settled
    (:func:`until_quiet`): what a notification should cost about as much as. None if the
    server's CPU cannot be read."""
    before: ServerSample | None = None

    def sample_before() -> Deferred[None]:
        nonlocal before
        before = sample_server(pid)
        return Deferred.fromCoroutine(_noop())

    cfg = LoadConfig(
        url=url,
        serialization=opts.serialization,
        originator=opts.originator,
        request={"op": 2, "to": opts.target, "fr": opts.originator, "rvi": RVI},
        connections=1,
        window=64,
        requests=REFERENCE_REQUESTS,
        duration=opts.duration,
        timeout=opts.timeout,
        tag=f"{tag}ref",
    )
    await until_quiet(reactor, pid)
    result = await run_load(reactor, cfg, go=sample_before)
    after = sample_server(pid)
    if before is None or after is None or not result.answered or not result.correct:
        return None
    return (after.cpu - before.cpu) / result.answered * 1e6


#: AEs the fan-out scenario sets up at a time: a thousand connects at once would overflow a
#: server's listen backlog (Twisted's default is 50). Each subscription is a child of the
#: container the others watch, but asks for contentInstances only (``chty``), so setting up N
#: AEs causes no notifications
SETUP_CONCURRENCY = 16


async def _clean_up(
    reactor: Any,
    opts: BenchOptions,
    target: Target,
    admin: RequestChannel,
    names: list[str],
    out: TextIO,
) -> None:
    """Delete what the run created (under ``opts.target``); if the admin's connection is
    gone, through a new one. Failures are summed up in one line."""
    failed: list[str] = []
    extra: list[Any] = []
    reason = ""
    for rn in names:
        for attempt in (1, 2):
            try:
                resp = await admin.request({"op": 4, "to": f"{opts.target}/{rn}"})
                if resp.get("rsc") not in (2002, 4004):
                    failed.append(rn)
                    reason = f"rsc {resp.get('rsc')}"
                break
            except Exception as e:
                if attempt == 2 or admin.client.is_open:
                    failed.append(rn)
                    reason = str(e) or type(e).__name__
                    break
                try:  # the connection is gone: one more, on a new one
                    client = await open_client(
                        reactor, target, opts.serialization, opts.originator, opts.timeout
                    )
                except Exception as e2:
                    failed.append(rn)
                    reason = str(e2) or type(e2).__name__
                    break
                admin = RequestChannel(
                    client, opts.serialization, reactor, opts.originator, opts.timeout
                )
                extra.append(client)
    await close_all(reactor, extra)
    if failed:
        out.write(
            f"  warning: could not delete {len(failed)} resource(s) ({failed[0]}...): {reason}\n"
        )


async def run_idle(reactor: Any, opts: BenchOptions, run: Run) -> tuple[Result, dict[str, Any]]:
    """Open N connections (distinct originators, spread over the nodes, over ``--processes``
    processes), hold them ``--duration`` s, measure each node's RSS; with ``--sample S``, S of
    them chosen at random are registered as AEs and subscribed to one container before the
    hold, and one contentInstance made after it must notify each of them."""
    url, progress = run.url, run.progress
    tag = secrets.token_hex(2)
    urls = opts.urls_for(url)
    pids = node_pids(opts, run)
    target = Target.parse(url)
    n = opts.connections
    sample = sorted(random.sample(range(n), min(opts.sample, n)))
    marker = f"idle{tag}"
    container = f"{opts.target}/benchidle{tag}" if sample else ""
    admin: RequestChannel | None = None
    acp = f"benchidle{tag}acp"
    #: what the run made besides the sample's AEs, deleted in this order
    made: list[str] = []
    before = [sample_server(pid) for pid in pids]
    opened: list[ServerSample | None] = []
    held: list[ServerSample | None] = []
    created: list[float] = []
    n_proc = max(1, opts.processes)
    shares = split_evenly(n, n_proc)
    limit = idle.open_files_limit()
    if idle.processes_needed(max(shares), limit) > 1:
        raise BenchError(
            f"{max(shares)} connections in one process need more than its {limit} open "
            f"files: use --processes {idle.processes_needed(n, limit)} or more (or raise "
            "ulimit -n)"
        )
    firsts = [sum(shares[:i]) for i in range(n_proc)]
    cfgs = [
        IdleConfig(
            urls=urls,
            serialization=opts.serialization,
            tag=tag,
            connections=shares[i],
            timeout=opts.timeout,
            first_connection=firsts[i],
            concurrency=open_concurrency(len(urls), n_proc),
            per_node=per_node_concurrency(n_proc),
            sample=sample_for(sample, firsts[i], shares[i]),
            container=container,
            parent=opts.target,
            marker=marker,
        )
        for i in range(n_proc)
    ]
    try:
        if sample:
            client = await open_client(
                reactor, target, opts.serialization, opts.originator, opts.timeout
            )
            admin = RequestChannel(
                client, opts.serialization, reactor, opts.originator, opts.timeout
            )
            # the sampled AEs subscribe themselves: an ACP lets anyone RETRIEVE the container
            # and subscribe to it (the CSE's default lets the creator only)
            rules = {
                "pv": {"acr": [{"acor": ["*"], "acop": 63}]},
                "pvs": {"acr": [{"acor": [opts.originator], "acop": 63}]},
            }
            resp = await admin.request(
                {"op": 1, "to": opts.target, "ty": 1, "pc": {"m2m:acp": {"rn": acp, **rules}}}
            )
            if resp.get("rsc") != 2001:
                raise BenchError(f"cannot create the ACP {opts.target}/{acp}: {resp}")
            made.append(f"{opts.target}/{acp}")
            rn = container.rsplit("/", 1)[-1]
            body = {"rn": rn, "mni": 1, "acpi": [f"{opts.target}/{acp}"]}
            resp = await admin.request(
                {"op": 1, "to": opts.target, "ty": 3, "pc": {"m2m:cnt": body}}
            )
            if resp.get("rsc") != 2001:
                raise BenchError(f"cannot create the container {container}: {resp}")
            made.insert(0, container)

        def show(count: int) -> None:
            progress.update(f"{count}/{n} connections open")

        async def held_then_notify() -> None:
            opened.extend(sample_server(pid) for pid in pids)
            progress.say(f"connections open; holding them for {opts.duration:g} s")
            hold_for: Deferred[None] = Deferred()
            reactor.callLater(opts.duration, hold_for.callback, None)
            await hold_for
            held.extend(sample_server(pid) for pid in pids)
            if admin is not None:
                progress.say(f"notifying the {len(sample)} sampled connections")
                created.append(time.time())
                resp = await admin.request(
                    {"op": 1, "to": container, "ty": 4, "pc": {"m2m:cin": {"con": marker}}}
                )
                if resp.get("rsc") != 2001:
                    raise BenchError(f"cannot create the contentInstance: {resp}")

        def go() -> Deferred[None]:
            return Deferred.fromCoroutine(held_then_notify())

        if n_proc == 1:
            result = await hold(reactor, cfgs[0], go, show)
        else:
            result = await run_workers(reactor, cfgs, go, show)
        progress.clear()
    finally:
        if admin is not None:
            await _delete_idle(reactor, opts, admin, made, tag, sample, run.out)
            await close_all(reactor, [admin.client])
    counts = IdleCounts.total(result.extra)
    result.extra["open_connections"] = counts.open_at_end
    result.extra["counts"] = asdict(counts)
    if created:
        result.latencies = sorted(t - created[0] for t in result.completions)
    # every connection asked for: opened, still open after the hold, the sample notified
    result.unanswered += (counts.asked - counts.opened) + (counts.opened - counts.open_at_end)
    result.unanswered += counts.sampled - counts.subscribed
    per_node = split_evenly(n, len(urls))
    server: dict[str, Any] = {"nodes": []}
    for i, pid in enumerate(pids):
        b, o, h = before[i], _at(opened, i), _at(held, i)
        if b is None or o is None or h is None:
            continue
        server["nodes"].append(
            {
                "url": urls[i] if i < len(urls) else "",
                "pid": pid,
                "connections": per_node[i] if i < len(per_node) else 0,
                "rss_before_kib": b.rss_kib,
                "rss_open_kib": o.rss_kib,
                "rss_held_kib": h.rss_kib,
                "cpu_s": h.cpu - b.cpu,
            }
        )
    nodes = server["nodes"]
    if nodes:
        growth = sum(x["rss_held_kib"] - x["rss_before_kib"] for x in nodes)
        conns = sum(x["connections"] for x in nodes) if len(nodes) > 1 else n
        server.update(
            cpu_s=sum(x["cpu_s"] for x in nodes),
            rss_kib=sum(x["rss_held_kib"] for x in nodes),
            rss_growth_kib=growth,
            rss_per_connection_kib=growth / max(1, conns),
        )
    return result, server


def node_pids(opts: BenchOptions, run: Run) -> list[int | None]:
    """The processes to sample: ``--node-pids`` (one per URL, in order) for a run against
    the nodes, else the run's ``--server-pid``."""
    if opts.node_pids and run.url == (opts.urls or [opts.url])[0]:
        return list(opts.node_pids)
    return [run.pid] if run.pid is not None else []


def _at(samples: list[ServerSample | None], i: int) -> ServerSample | None:
    return samples[i] if i < len(samples) else None


async def _delete_idle(
    reactor: Any,
    opts: BenchOptions,
    admin: RequestChannel,
    made: Sequence[str],
    tag: str,
    sample: Sequence[int],
    out: TextIO,
) -> None:
    """Delete the sample's AEs, the container (with its subscriptions) and its ACP."""
    failed = 0
    for k in sample:
        try:
            resp = await admin.request({"op": 4, "to": f"{opts.target}/Cidle{tag}x{k}"})
            failed += resp.get("rsc") not in (2002, 4004)
        except Exception:
            failed += 1
    for path in made:
        try:
            resp = await admin.request({"op": 4, "to": path})
            failed += resp.get("rsc") not in (2002, 4004)
        except Exception:
            failed += 1
    if failed:
        out.write(f"  warning: could not delete {failed} of the idle run's resources\n")


RUNNERS = {
    "retrieve": run_requests,
    "create-cin": run_requests,
    "group": run_requests,
    "fanout": run_fanout,
    "cluster": run_fanout,
    "idle": run_idle,
}
