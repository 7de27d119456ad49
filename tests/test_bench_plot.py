"""``acmews bench --plot FILE.png``: completion times recorded, the figure drawn (both
endpoints on one figure with --compare), a clear error without matplotlib."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from acmews.bench import cli
from acmews.bench.connections import BenchError
from acmews.bench.ledger import Ledger, Result
from acmews.bench.plot import histogram_edges, plot, throughput
from acmews.bench.scenarios import RUNNERS, BenchOptions

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:  # pragma: no cover
    HAVE_MATPLOTLIB = False


def run_result(rate: float, seconds: float = 2.0, latency: float = 0.002) -> Result:
    """A result as a steady run at ``rate`` answers per second would give."""
    n = int(rate * seconds)
    return Result(
        sent=n,
        answered=n,
        latencies=[latency * (1 + (i % 7) / 7) for i in range(n)],
        completions=[100.0 + i / rate for i in range(n)],
        connections=1,
    )


class CompletionTests(SynchronousTestCase):
    def test_the_ledger_records_when_each_answer_came(self) -> None:
        ledger = Ledger("p-")
        for now in (1.0, 1.5):
            ledger.send(now)
        ledger.answer(ledger.rqi(1), 2000, 2.0)
        ledger.answer(ledger.rqi(0), 2000, 2.5)
        ledger.answer(ledger.rqi(0), 2000, 3.0)  # a duplicate: not a completion
        result = Result.from_ledger(ledger).merge(Result(completions=[9.0]))
        self.assertEqual(result.completions, [2.0, 2.5, 9.0])
        self.assertNotIn("completions", result.summary())

    def test_throughput_per_slot(self) -> None:
        times, rates = throughput([10.0 + i / 100 for i in range(200)], slots=4)
        self.assertEqual(len(times), 4)
        self.assertAlmostEqual(times[0], 0.24875, places=3)
        self.assertTrue(all(abs(r - 100) < 2 for r in rates), rates)
        self.assertEqual(throughput([]), ([], []))

    def test_histogram_edges_are_logarithmic(self) -> None:
        edges = histogram_edges([0.1, 10.0], bins=2)
        self.assertEqual([round(e, 6) for e in edges], [0.1, 1.0, 10.0])


class PlotTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not HAVE_MATPLOTLIB:
            raise self.skipTest("matplotlib is not installed (the plot extra)")
        os.mkdir(directory := self.mktemp())
        self.path = os.path.join(directory, "bench.png")

    def drawn(self, runs: list[tuple[str, Result]]) -> Any:
        """Draw ``runs``; the figure as saved."""
        from matplotlib.figure import Figure

        saved: list[Any] = []
        savefig = Figure.savefig

        def keep(figure: Any, *args: Any, **kwargs: Any) -> None:
            saved.append(figure)
            savefig(figure, *args, **kwargs)

        self.patch(Figure, "savefig", keep)
        plot(self.path, runs, "retrieve pipelined json")
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        (figure,) = saved
        return figure

    def test_one_endpoint(self) -> None:
        figure = self.drawn([("ws://a:1", run_result(500))])
        latency, rate = figure.axes
        self.assertEqual(latency.get_xscale(), "log")
        (line,) = rate.get_lines()
        rates = list(line.get_ydata())
        self.assertEqual(len(rates), 100)
        self.assertTrue(all(abs(y - 500) < 60 for y in rates), rates)

    def test_compare_draws_both_endpoints_on_one_figure(self) -> None:
        runs = [
            ("ws://a:1", run_result(500)),
            ("ws://b:2", run_result(300)),
            ("ws://a:1", run_result(510)),
            ("ws://b:2", run_result(290)),
        ]
        latency, rate = self.drawn(runs).axes
        self.assertEqual(len(rate.get_lines()), 4)  # every round of each
        labels = [t.get_text() for t in rate.get_legend().get_texts()]
        self.assertEqual(labels, ["A: ws://a:1", "B: ws://b:2"])
        self.assertEqual(len(latency.patches), 2)  # one step histogram each

    def test_without_matplotlib(self) -> None:
        saved = sys.modules.get("matplotlib")
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # import fails
        self.addCleanup(sys.modules.__setitem__, "matplotlib", saved)
        error = self.assertRaises(BenchError, plot, self.path, [], "x")
        self.assertIn("acmews[plot]", str(error))


class OptionTests(SynchronousTestCase):
    def test_plot_option(self) -> None:
        self.assertIsNone(cli.parse_options(["ws://127.0.0.1:8180"]).plot)
        opts = cli.parse_options(["ws://127.0.0.1:8180", "--plot", "out.png"])
        self.assertEqual(opts.plot, "out.png")
        self.assertIn("--plot", cli.build_parser().format_help())

    def test_run_draws_every_run(self) -> None:
        """``run`` hands plot every endpoint's result (the runner faked: no load here)."""
        drawn: list[Any] = []
        self.patch(
            sys.modules["acmews.bench.plot"],
            "plot",
            lambda path, runs, title: drawn.append((path, [u for u, _ in runs], title)),
        )

        async def runner(reactor: Any, opts: Any, run: Any) -> Any:
            return run_result(100, seconds=0.1), {}

        saved = RUNNERS["retrieve"]
        RUNNERS["retrieve"] = runner
        self.addCleanup(RUNNERS.__setitem__, "retrieve", saved)
        opts = BenchOptions("ws://a:1", compare="ws://b:2", rounds=2, plot="f.png")
        code = self.successResultOf(Deferred.fromCoroutine(cli.run(Clock(), opts, io.StringIO())))
        self.assertEqual(code, 0)
        self.assertEqual(
            drawn, [("f.png", ["ws://a:1", "ws://b:2"] * 2, "retrieve sequential json")]
        )
