from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from acmews.timestamps import Timestamps, expiry_delay, parse_timestamp


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
