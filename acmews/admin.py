"""The admin listener (``twistd acmews --admin-listen``): ``/metrics`` for Prometheus,
``/health`` and ``/ready`` for load balancers and orchestrators.

- ``GET /health``: 200 and ``{"status": "ok", ...}`` whenever the process answers at all.
- ``GET /ready``: 200 when the CSE should get traffic, else 503; the JSON body has each
  check: ``listening`` (every listener listens, and the CSE is not stopping), ``store`` (it
  takes changes: not read-only after a write the disk refused), ``registrar`` (registered
  at its registrar; only when one is configured). See
  :meth:`acmews.server.CSEService.readiness`.

Every server has a registry of its own (never ``prometheus_client``'s global one, so that
tests and several CSEs in one process do not collide) holding :class:`CSECollector`, which
reads the plain counters of :mod:`acmews.metrics` when scraped, and ``prometheus_client``'s
``ProcessCollector`` (RSS, CPU seconds, open file descriptors).

A scrape is rendered on the reactor thread: the collector reads dicts and lists the reactor
changes, which another thread must not iterate (``prometheus_client.twisted.MetricsResource``
renders on a thread of the reactor's pool, and imports the global reactor). It reads a few
hundred integers and three small files of ``/proc``: well under a millisecond.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from acmews.metrics import OPERATIONS, BindingMetrics, ChainCounts, Histogram

__all__ = [
    "LINK_STATES",
    "CSECollector",
    "HealthResource",
    "MetricsResource",
    "ReadyResource",
    "admin_site",
    "metrics_registry",
]

#: the registrar link's states (``state`` label), the first words of its ``state``
LINK_STATES = (
    "stopped",
    "connecting",
    "registering",
    "registered",
    "backing off",
    "registration failed",
    "connection lost",
)


def link_state(state: str) -> str:
    """The label of a registrar link's ``state`` ("backing off: next try in 2.0 s" ->
    "backing off")."""
    label = state.split(":", 1)[0]
    return label if label in LINK_STATES else "stopped"


def _histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: Histogram
) -> HistogramMetricFamily:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)
    return family


class CSECollector:
    """Reads a CSE server's counters at scrape time (a ``prometheus_client`` collector).

    @param service: a :class:`~acmews.server.CSEService` (its ``metrics``, ``chain``,
        ``store``, ``link`` and ``originators``).
    """

    def __init__(self, service: Any) -> None:
        self.service = service

    def describe(self) -> list[Metric]:
        # no names up front: the registry then never collects at registration
        return []

    def collect(self) -> Iterator[Metric]:
        service = self.service
        metrics: BindingMetrics | None = service.metrics
        if metrics is not None:
            yield from self._binding(metrics)
        yield from self._chain(service.chain.counts, service.chain.queue)
        database = service.store.database
        if database is not None:
            yield from self._store(database)
        originators = GaugeMetricFamily(
            "acmews_originators", "Originators with a live connection (bound routes)."
        )
        originators.add_metric([], len(service.originators))
        yield originators
        if service.link is not None:
            yield from self._link(service.link)

    def _binding(self, metrics: BindingMetrics) -> Iterable[Metric]:
        connections = GaugeMetricFamily(
            "acmews_connections",
            "Open oneM2M WebSocket connections, accepted (in) or opened by the CSE (out).",
            labels=["direction", "subprotocol"],
        )
        for (direction, subprotocol), count in sorted(metrics.connections.items()):
            connections.add_metric([direction, subprotocol], count)
        refused = CounterMetricFamily(
            "acmews_handshakes_refused",
            "Opening handshakes refused (or connections aborted at once), by reason.",
            labels=["reason"],
        )
        for reason, count in metrics.refused.items():
            refused.add_metric([reason], count)
        requests = CounterMetricFamily(
            "acmews_requests",
            "Requests answered, by operation and response class (rsc // 1000).",
            labels=["operation", "response_class"],
        )
        for operation, response_class, count in metrics.request_counts():
            requests.add_metric([operation, response_class], count)
        latency = HistogramMetricFamily(
            "acmews_request_duration_seconds",
            "Seconds from a request's arrival to its answer, by operation.",
            labels=["operation"],
        )
        for operation, histogram in zip(OPERATIONS, metrics.latency, strict=True):
            if operation != "invalid":
                _histogram(latency, [operation], histogram)
        return (connections, refused, requests, latency)

    def _chain(self, counts: ChainCounts, queue: Any) -> Iterable[Metric]:
        notifications = CounterMetricFamily(
            "acmews_notifications",
            "Notifications by outcome: delivered (answered by the target), queued (stored "
            "for an unreachable originator), expired (dropped from the queue unsent), dropped "
            "(refused by or pushed out of a full queue, or not storable).",
            labels=["outcome"],
        )
        for outcome, count in (
            ("delivered", counts.delivered),
            ("queued", counts.queued),
            ("expired", counts.expired + getattr(queue, "expired", 0)),
            ("dropped", counts.dropped + getattr(queue, "dropped", 0)),
        ):
            notifications.add_metric([outcome], count)
        depth = GaugeMetricFamily(
            "acmews_queue_notifications", "Notifications waiting in store-and-forward."
        )
        depth.add_metric([], queue.total())
        size = GaugeMetricFamily(
            "acmews_queue_bytes", "Bytes the notifications in store-and-forward hold."
        )
        size.add_metric([], getattr(queue, "bytes", 0))
        steps = CounterMetricFamily(
            "acmews_poa_steps",
            "Outbound poa and URL deliveries by scheme and result (answered, failed, or denied "
            "by the target policy).",
            labels=["scheme", "result"],
        )
        for (scheme, result), count in sorted(counts.steps.items()):
            steps.add_metric([scheme, result], count)
        return (notifications, depth, size, steps)

    def _store(self, database: Any) -> Iterable[Metric]:
        commit = _histogram(
            HistogramMetricFamily(
                "acmews_store_commit_duration_seconds",
                "Seconds one store transaction took (group commit, fsync included).",
            ),
            [],
            database.commit_seconds,
        )
        batch = _histogram(
            HistogramMetricFamily(
                "acmews_store_commit_changes", "Changes written by one store transaction."
            ),
            [],
            database.commit_changes,
        )
        read_only = GaugeMetricFamily(
            "acmews_store_read_only",
            "1 while the store refuses changes (the disk refused a write), else 0.",
        )
        read_only.add_metric([], 1 if database.refused is not None else 0)
        return (commit, batch, read_only)

    def _link(self, link: Any) -> Iterable[Metric]:
        current = link_state(link.state)
        state = GaugeMetricFamily(
            "acmews_registrar_link_state",
            "The registrar link's state: 1 for the current one.",
            labels=["state"],
        )
        for name in LINK_STATES:
            state.add_metric([name], 1 if name == current else 0)
        up = GaugeMetricFamily(
            "acmews_registrar_link_up", "1 while this CSE is registered at its registrar."
        )
        up.add_metric([], 1 if link.registered else 0)
        return (state, up)


def metrics_registry(service: Any) -> CollectorRegistry:
    """A registry of ``service``'s own: its :class:`CSECollector` and the process's
    collector (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
    ``process_open_fds``...)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CSECollector(service))
    ProcessCollector(registry=registry)
    return registry


class MetricsResource(Resource):
    """``GET /metrics``: ``registry`` in the format the scraper's ``Accept`` asks for
    (Prometheus text, or OpenMetrics)."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        encoder, content_type = choose_encoder(request.getHeader("accept") or "")
        request.setHeader("content-type", content_type)
        return encoder(self.registry)


def _json(request: Request, code: int, body: dict[str, Any]) -> bytes:
    request.setResponseCode(code)
    request.setHeader("content-type", "application/json")
    request.setHeader("cache-control", "no-store")
    return json.dumps(body, sort_keys=True).encode() + b"\n"


class HealthResource(Resource):
    """``GET /health``: the process serves (200, always: a process that cannot answer is
    what the orchestrator looks for)."""

    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        from acmews import __version__

        return _json(
            request,
            200,
            {"status": "ok", "cse_id": self.service.config.cse_id, "version": __version__},
        )


class ReadyResource(Resource):
    """``GET /ready``: 200 when every check of the service's readiness passes, else 503."""

    isLeaf = True

    def __init__(self, service: Any) -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request: Request) -> bytes:
        checks: dict[str, dict[str, Any]] = self.service.readiness()
        ready = all(check["ok"] for check in checks.values())
        return _json(
            request,
            200 if ready else 503,
            {"status": "ready" if ready else "not ready", "checks": checks},
        )


class _QuietSite(Site):
    """No access log: a scrape every few seconds would fill it."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def admin_site(service: Any, reactor: Any) -> Site:
    """The admin listener's HTTP site for ``service`` (a CSEService)."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics_registry(service)))
    root.putChild(b"health", HealthResource(service))
    root.putChild(b"ready", ReadyResource(service))
    return _QuietSite(root, reactor=reactor)
