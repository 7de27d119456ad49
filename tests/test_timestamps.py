from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from acmews.timestamps import Timestamps, expiry_delay, parse_duration, parse_timestamp


class TimestampTests(SynchronousTestCase):
    def test_format_and_parse(self) -> None:
        ts = Timestamps()
        self.assertEqual(ts.format(0), "19700101T000000,000000")
        self.assertEqual(ts.format(1794907600.25), "20261117T092640,250000")
        self.assertEqual(ts.format(1794907600.5), "20261117T092640,500000")  # cached second
        self.assertEqual(parse_timestamp("20261117T092640,250000"), 1794907600.25)
        self.assertEqual(parse_timestamp("20261117T092640"), 1794907600.0)
        self.assertEqual(ts.format(0.9999999), "19700101T000000,999999")  # never rounds up

    def test_parse_rejects(self) -> None:
        for bad in (
            "20261317T092640",
            "20261117T252640",
            "20261100T092640",
            "2026",
            "20261117X092640",
            "20261117T09264a",
            "20261117T092640,x",
            "",
        ):
            self.assertRaises(ValueError, parse_timestamp, bad)

    def test_expiry_delay(self) -> None:
        now = parse_timestamp("20261126T000000")
        self.assertEqual(expiry_delay("20261126T000010", now), 10.0)
        self.assertEqual(expiry_delay(2500, now), 2.5)
        self.assertEqual(expiry_delay("1500", now), 1.5)
        self.assertEqual(expiry_delay("20261125T235950", now), -10.0)
        self.assertIsNone(expiry_delay(None, now))
        self.assertIsNone(expiry_delay("garbage", now))
        self.assertIsNone(expiry_delay(True, now))  # type: ignore[arg-type]

    def test_iso8601_durations(self) -> None:
        """TS-0004's relative times may be ISO 8601 durations (as the reference
        implementations accept them): a year counts 365 days, a month 30."""
        now = parse_timestamp("20261126T000000")
        for text, seconds in (
            ("PT2S", 2.0),
            ("PT0.5S", 0.5),
            ("PT1,5S", 1.5),
            ("PT1M", 60.0),
            ("P1DT2H30M", 95400.0),
            ("P2W", 14 * 86400.0),
            ("P1M", 30 * 86400.0),
            ("P1Y", 365 * 86400.0),
        ):
            self.assertEqual(parse_duration(text), seconds, text)
            self.assertEqual(expiry_delay(text, now), seconds, text)
        for bad in ("P", "PT", "P1DT", "2S", "PT-1S", "P1D2H", "PT1H1H", "pt2s", "P1S"):
            self.assertRaises(ValueError, parse_duration, bad)
            self.assertIsNone(expiry_delay(bad, now), bad)
