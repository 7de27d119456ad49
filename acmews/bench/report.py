"""Reporting: the machine-readable summary of a run, its text form, and A/B comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from acmews.bench.ledger import Result, percentile, ratio_summary
from acmews.bench.scenarios import BenchOptions

__all__ = [
    "compare_summary",
    "format_compare",
    "format_report",
    "report",
]


def report(opts: BenchOptions, url: str, result: Result, server: dict[str, Any]) -> dict[str, Any]:
    d = result.summary()
    d.update(
        url=url,
        scenario=opts.scenario,
        mode=opts.mode,
        window=opts.effective_window,
        serialization=opts.serialization,
        processes=opts.processes,
        server=server,
    )
    if server.get("cpu_s") is not None and opts.scenario != "idle":
        n = result.sent if opts.scenario not in ("fanout", "cluster") else result.answered
        if n:
            d["server_cpu_us_per_request"] = server["cpu_s"] / n * 1e6
            reference = server.get("reference_us_per_request")
            if reference:
                d["notification_per_request_ratio"] = d["server_cpu_us_per_request"] / reference
    return d


def format_report(d: dict[str, Any]) -> str:
    lines = [
        f"{d['scenario']} {d['mode']} {d['serialization']} -> {d['url']}"
        f"  ({d['processes']} proc, {d['connections']} conn, window {d['window']})"
    ]
    lat = d["latency_ms"]
    pcts = (
        f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}"
    )
    rsc = ", ".join(f"{k}: {v}" for k, v in sorted(d["rsc"].items())) or "-"
    unit = "request"
    if d["scenario"] == "idle":
        lines.extend(_idle_lines(d))
    elif d["scenario"] in ("fanout", "cluster"):
        unit = "notification"
        n = d["connections"] * d["extra"].get("rounds", 0)
        lines.append(
            f"  rounds            {d['extra'].get('rounds', 0)} CIN CREATEs (rsc {rsc}), "
            f"{d['answered']}/{n} NOTIFYs in {d['elapsed']:.2f} s"
            f" -> {d['requests_per_second']:.1f} notifications/s"
        )
        lines.append(f"  all N notified ms {pcts}")
        per = d["extra"].get("notify_latencies_ms", [])
        lines.append(
            f"  each NOTIFY ms    p50 {percentile(per, 50):.2f}  p99 {percentile(per, 99):.2f}"
            f"  max {(per[-1] if per else 0.0):.2f}"
        )
        kill = d["extra"].get("kill")
        if kill:
            lines.append(
                f"  kill              node pid {kill.get('pid')} killed before round "
                f"{kill.get('round', -1) + 1}; {kill.get('reconnected', 0)} AEs reconnected; "
                f"{kill.get('duplicates', 0)} NOTIFYs came twice (at least once)"
                + (
                    f"; all reconnected {kill['reconnect_s']:.2f} s after the kill, every "
                    f"round sent until then complete {kill['drained_s']:.2f} s after it"
                    if kill.get("drained_s") is not None
                    else ""
                )
            )
        for name, label in (
            ("same_node", "  same node ms    "),
            ("cross_node", "  cross node ms   "),
        ):
            part = d["extra"].get(f"notify_latencies_ms_{name}")
            if part is not None:
                lines.append(
                    f"{label} p50 {percentile(part, 50):.2f}  p99 {percentile(part, 99):.2f}"
                    f"  max {(part[-1] if part else 0.0):.2f}  ({len(part)} NOTIFYs)"
                )
        lines.append(
            f"  client CPU        {d['client_cpu'] / max(1, d['answered']) * 1e6:.0f}"
            f" us/notification ({d['client_cpu']:.2f} s)"
        )
    else:
        lines.append(
            f"  requests          {d['sent']} sent, {d['answered']} answered in "
            f"{d['elapsed']:.2f} s -> {d['requests_per_second']:.1f} req/s"
        )
        lines.append(f"  latency (ms)      {pcts}")
        lines.append(f"  rsc               {rsc}")
        if d.get("failed"):
            lines.append(
                f"  failed            {d['failed']} with 5103 at once: the server closed the "
                "connection going away (1001)"
            )
        lines.append(
            f"  client CPU        {d['client_cpu_us_per_request']:.0f} us/request"
            f" ({d['client_cpu']:.2f} s)"
        )
    if "server_cpu_us_per_request" in d:
        server = d["server"]
        kernel = ""
        if server.get("system_s") is not None and server["cpu_s"] > 0:
            kernel = f", {100 * server['system_s'] / server['cpu_s']:.0f} % in the kernel"
        lines.append(
            f"  server CPU        {d['server_cpu_us_per_request']:.1f} us/{unit}"
            f" ({server['cpu_s']:.2f} s{kernel})"
        )
    if "notification_per_request_ratio" in d:
        lines.append(
            f"  reference         pipelined RETRIEVE on the same server: "
            f"{d['server']['reference_us_per_request']:.1f} us/request; a notification costs "
            f"{d['notification_per_request_ratio']:.2f} x a request"
        )
    if "rss_growth_kib" in d["server"] and d["scenario"] != "idle":
        lines.append(
            f"  server RSS        +{d['server']['rss_growth_kib']} KiB"
            f" ({d['server']['rss_per_connection_kib']:.1f} KiB/connection)"
        )
    for e in d["errors"]:
        lines.append(f"  error: {e}")
    if d["correct"]:
        lines.append(
            "  correctness       OK: "
            + {
                "idle": "every connection opened and stayed open, every sampled one notified",
                "fanout": "every NOTIFY arrived exactly once, every request answered once",
            }.get(d["scenario"], "every request answered exactly once, with its own rqi")
        )
    else:
        lines.append(
            f"  !!! CORRECTNESS FAILURE: {d['unanswered']} never answered, "
            f"{d['duplicates']} answered twice, {d['unknown']} with an rqi never sent, "
            f"{d['malformed']} malformed (late answers: {d['late']}) !!!"
        )
    return "\n".join(lines)


def _idle_lines(d: dict[str, Any]) -> list[str]:
    """The idle scenario's connections held, each node's RSS and the sample's notifications."""
    c = d["extra"].get("counts", {})
    lines = [
        f"  open connections  {d['extra'].get('open_connections', 0)}",
        f"  connections held  {c.get('open_at_end', 0)} of {c.get('asked', 0)} still open "
        f"after the hold ({c.get('opened', 0)} opened, {c.get('failed', 0)} failed to open)",
    ]
    for node in d["server"].get("nodes", []):
        n = max(1, node["connections"])
        lines.append(
            f"  node {node['url'] or node['pid']}: {node['connections']} connections, RSS "
            f"{node['rss_before_kib'] / 1024:.0f} MiB before, "
            f"{node['rss_open_kib'] / 1024:.0f} MiB open, "
            f"{node['rss_held_kib'] / 1024:.0f} MiB held: "
            f"{(node['rss_held_kib'] - node['rss_before_kib']) / n:.1f} KiB/connection, "
            f"CPU {node['cpu_s']:.1f} s"
        )
    if "rss_growth_kib" in d["server"]:
        lines.append(
            f"  server RSS        +{d['server']['rss_growth_kib']} KiB"
            f" ({d['server']['rss_per_connection_kib']:.1f} KiB/connection)"
        )
    if c.get("sampled"):
        lat = d["latency_ms"]
        lines.append(
            f"  sample            {c.get('notified', 0)}/{c.get('sampled', 0)} notified "
            f"({c.get('subscribed', 0)} subscribed, {d['duplicates']} twice), "
            f"ms p50 {lat['p50']:.1f}  "
            f"p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f}"
        )
    return lines


def compare_summary(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Ratios A/B per pair (requests/s, and server CPU/request when both are known)."""
    rates, median = ratio_summary(
        [a["requests_per_second"] for a, _ in pairs], [b["requests_per_second"] for _, b in pairs]
    )
    d: dict[str, Any] = {"rate_ratios": rates, "rate_ratio_median": median}
    if all("server_cpu_us_per_request" in x for pair in pairs for x in pair):
        cpu, cmed = ratio_summary(
            [a["server_cpu_us_per_request"] for a, _ in pairs],
            [b["server_cpu_us_per_request"] for _, b in pairs],
        )
        d.update(cpu_ratios=cpu, cpu_ratio_median=cmed)
    return d


def format_compare(c: dict[str, Any]) -> str:
    lines = [
        "compare A/B  requests/s ratios: "
        + ", ".join(f"{r:.2f}" for r in c["rate_ratios"])
        + f"  median {c['rate_ratio_median']:.2f}"
    ]
    if "cpu_ratios" in c:
        lines.append(
            "compare A/B  server CPU/request ratios: "
            + ", ".join(f"{r:.2f}" for r in c["cpu_ratios"])
            + f"  median {c['cpu_ratio_median']:.2f}"
        )
    return "\n".join(lines)
