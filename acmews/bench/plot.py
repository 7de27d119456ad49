"""``--plot FILE.png``: a run's latency histogram and its throughput over time, on one figure;
with ``--compare`` both endpoints on the same axes (every round of each).

matplotlib is an optional extra (``pip install acmews[plot]``), imported only here, with its
file-only backend (Agg): no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from acmews.bench.connections import BenchError
from acmews.bench.ledger import Result

__all__ = ["histogram_edges", "plot", "throughput"]

#: time slots of the throughput curve per run
SLOTS = 100


def histogram_edges(latencies_ms: Sequence[float], bins: int = 60) -> list[float]:
    """Logarithmic bin edges in ms spanning ``latencies_ms`` (latencies span decades)."""
    positive = [v for v in latencies_ms if v > 0]
    low = min(positive, default=0.01)
    high = max(positive, default=1.0)
    if high <= low:
        high = low * 10
    a, b = math.log10(low), math.log10(high)
    return [10 ** (a + (b - a) * i / bins) for i in range(bins + 1)]


def throughput(
    completions: Sequence[float], slots: int = SLOTS
) -> tuple[list[float], list[float]]:
    """Answers per second over time: the slot midpoints (seconds from the first answer) and
    the rate in each slot."""
    if not completions:
        return [], []
    start, end = min(completions), max(completions)
    width = max((end - start) / slots, 1e-3)
    counts = [0] * min(slots, int((end - start) / width) + 1)
    last = len(counts) - 1
    for t in completions:
        counts[min(last, int((t - start) / width))] += 1  # (the last answer: the last slot)
    return [(i + 0.5) * width for i in range(len(counts))], [c / width for c in counts]


def plot(path: str, runs: Sequence[tuple[str, Result]], title: str) -> None:
    """Draw ``runs`` (``(endpoint URL, result)``, several per URL with ``--compare``) to the
    PNG ``path``: left the latency histogram, right the answers per second over time.
    BenchError when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib: pip install 'acmews[plot]' (or matplotlib)"
        ) from None
    figure: Any
    figure, (latency_axes, rate_axes) = plt.subplots(1, 2, figsize=(13, 4.8))
    urls = list(dict.fromkeys(url for url, _ in runs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    every_ms = [v * 1000 for _, r in runs for v in r.latencies]
    edges = histogram_edges(every_ms)
    for i, url in enumerate(urls):
        color = colors[i % len(colors)]
        mine = [r for u, r in runs if u == url]
        latencies_ms = [v * 1000 for r in mine for v in r.latencies]
        label = f"{'AB'[i] + ': ' if len(urls) > 1 else ''}{url}"
        if latencies_ms:
            latency_axes.hist(latencies_ms, bins=edges, histtype="step", color=color, label=label)
        for k, result in enumerate(mine):
            times, rates = throughput(result.completions)
            rate_axes.plot(times, rates, color=color, alpha=0.8, label=label if k == 0 else None)
    latency_axes.set(xscale="log", xlabel="latency (ms)", ylabel="requests", title="Latency")
    rate_axes.set(xlabel="seconds into the run", ylabel="answers / s", title="Throughput")
    rate_axes.set_ylim(bottom=0)
    for axes in (latency_axes, rate_axes):
        axes.grid(True, alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
