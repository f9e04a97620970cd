"""An ended call's timeline packed into one object (``call_model.PackedTimeline``): read back
entry for entry as it was noted, as its JSON form (before issue 16's eighth pass) read back."""

from __future__ import annotations

import json
import sys

from twisted.trial import unittest

from epcscf.pcscf.call_model import PackedTimeline, TimelineEntry

ENTRIES = [
    TimelineEntry(1796667348.2015295, "sip-in", "INVITE from the WIC (<sip:alice@example.com>)"),
    TimelineEntry(1796667348.2422533, "state", "offer-received → offer-forwarded (offer-forwarded)"),
    TimelineEntry(1796667348.25, "ice", "m-line 0: pair ('127.0.0.1', 42003) → ('127.0.0.1', 52083) selected"),
    TimelineEntry(0.1 + 0.2, "media", ""),
    TimelineEntry(-1.5e-300, "", "a NUL \x00, a quote \", a backslash \\ and a newline \n"),
    TimelineEntry(7.0, "sip-in", "488 Not Acceptable Here \udcff (a byte the wire decoder escaped) 🎉"),
]


def as_json_read_back(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """The previous packing: JSON text, read back entry by entry."""
    text = json.dumps([[entry.at, entry.kind, entry.text] for entry in entries])
    return [TimelineEntry(at, kind, text) for at, kind, text in json.loads(text)]


class PackedTimelineTests(unittest.TestCase):
    def test_entries_read_back_as_noted_and_as_json_read_them_back(self) -> None:
        for entries in (ENTRIES, ENTRIES[:1], [], ENTRIES[2:] * 40):
            packed = PackedTimeline(entries)
            self.assertEqual(list(packed), entries)
            self.assertEqual(list(packed), as_json_read_back(entries))
            self.assertEqual(len(packed), len(entries))
            if entries:
                self.assertEqual(packed[-1], entries[-1])
                self.assertEqual(packed[1:3], entries[1:3])

    def test_times_come_back_bit_for_bit(self) -> None:
        [entry] = PackedTimeline([TimelineEntry(1796667348.2015295, "x", "y")])
        self.assertEqual(entry.at.hex(), (1796667348.2015295).hex())

    def test_a_late_note_is_packed_in_with_the_limit_kept(self) -> None:
        packed = PackedTimeline(ENTRIES)
        packed.add(9.5, "sip-in", "a late ACK → again", limit=4)
        self.assertEqual(list(packed), [*ENTRIES[-3:], TimelineEntry(9.5, "sip-in", "a late ACK → again")])

    def test_the_packed_timeline_is_one_object_no_larger_than_its_json(self) -> None:
        packed = PackedTimeline(ENTRIES[:3] * 5)
        self.assertEqual(PackedTimeline.__slots__, ("_data",))
        self.assertIsInstance(packed._data, bytes)
        as_json = json.dumps([[entry.at, entry.kind, entry.text] for entry in ENTRIES[:3] * 5])
        self.assertLessEqual(sys.getsizeof(packed._data), sys.getsizeof(as_json))
