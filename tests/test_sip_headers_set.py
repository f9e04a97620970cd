"""``Headers.set`` with the index (no walk when the name is absent, no filter when it has one
line) against the way it worked before: a walk with ``canonical_name`` over every line."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from epcscf.sip.message import Headers, canonical_name

# long and compact forms, in odd capitals, of a few fields, and one unknown
_NAMES = st.sampled_from(["Via", "v", "VIA", "Contact", "m", "To", "t", "Max-Forwards", "max-forwards",
                          "Route", "X-Other", "x-other", "Call-ID", "i"])
_LINES = st.lists(st.tuples(_NAMES, st.sampled_from(["a", "b", "c, d", ""])), max_size=8)


def set_as_before(items: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    items = list(items)
    key = canonical_name(name)
    for index, (n, _) in enumerate(items):
        if canonical_name(n) == key:
            items[index] = (n, value)
            items[index + 1 :] = [item for item in items[index + 1 :] if canonical_name(item[0]) != key]
            return items
    items.append((name, value))
    return items


class HeadersSetTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(_LINES, _NAMES, st.sampled_from(["new", "70"]), st.booleans())
    def test_set_gives_the_lines_and_lookups_the_walk_gave(
        self, lines: list[tuple[str, str]], name: str, value: str, indexed: bool
    ) -> None:
        headers = Headers(list(lines))
        if indexed:
            headers.get("via")  # builds the index, as any read does
        copy = headers.copy()
        headers.set(name, value)
        expected = set_as_before(lines, name, value)
        self.assertEqual(list(headers), expected)
        rebuilt = Headers(expected)
        for probe in ("via", "contact", "to", "max-forwards", "route", "x-other", "call-id"):
            self.assertEqual(headers.get_all(probe), rebuilt.get_all(probe), probe)
        self.assertEqual(list(copy), lines)  # a copy made before is untouched
        self.assertFalse(headers._as_parsed)
