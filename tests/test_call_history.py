"""The ended-call history (``epcscf.pcscf.call_history``): an ended call is kept as a compact
record that the console, ``/metrics`` and a stray 2xx read as they read the call."""

from __future__ import annotations

import collections
import dataclasses
import enum
import gc
import json
import marshal
import weakref
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from epcscf.ice.types import IceState, IceStats
from epcscf.media.session import DirectionStats, MediaStats
from epcscf.media.srtp import SrtpErrorCounts
from epcscf.pcscf import call_history, call_view
from epcscf.pcscf.call_history import CallHistory, EndedCall
from epcscf.pcscf.call_model import Call, CallSettings
from epcscf.pcscf.call_state import CallDirection, CallState
from tests import test_calls_manager
from tests.test_calls_manager import CORE_SDP, FakeMedia, response_to

STREAMS = {
    0: {"ice": "connected", "media": {"dtls_state": "connected", "wic_to_core": {"packets": 500, "bytes": 80000},
                                     "core_to_wic": {"packets": 498, "bytes": 79680}}},
    1: {"ice": "closed", "media": None},
}


def walked(value: Any) -> Any:
    """The record's media statistics as the whole snapshot was walked in Python before
    ``json.dumps(default=...)`` did the walk: the reference the record must still equal."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: walked(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): walked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [walked(item) for item in value]
    if isinstance(value, enum.Enum):
        return walked(value.value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def builtin_engine_streams() -> dict[int, Any]:
    """A snapshot as the builtin engine's ``CallStreams.stats()`` gives it: dataclasses,
    tuples, enums, floats and None nested in dicts."""
    sent = DirectionStats(packets=500, bytes=80000, lost=2, first_packet_time=12.25, last_packet_time=31.5)
    media = MediaStats(sent, DirectionStats(), SrtpErrorCounts(unprotect=3, last_error="replay check failed"),
                       "connected", "SRTP_AES128_CM_SHA1_80", "sendrecv", ("192.0.2.7", 49170), None, 1)
    return {0: {"ice": IceState.CONNECTED.value, "ice_stats": IceStats(checks_sent=3, connect_time=0.0123),
                "media": media},
            1: {"ice": IceState.CLOSED, "ice_stats": IceStats(), "media": None}}


def json_leaf(value: Any) -> Any:
    """The ``default`` the record's ``json.dumps`` had (a dataclass as its fields, an enum as
    its value, anything else as its str): the reference for ``call_history._plain``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    return str(value)


class MediaWithTraffic(FakeMedia):
    def stats(self) -> dict:
        return STREAMS


class EndedCallRecordTests(unittest.TestCase):
    # the call manager's own harness (not imported by name: trial would run its tests here)
    setUp = test_calls_manager.CallManagerTests.setUp
    originate = test_calls_manager.CallManagerTests.originate
    respond = test_calls_manager.CallManagerTests.respond

    def confirmed_call(self) -> tuple[Any, Call, Any]:
        self.manager.media_factory = lambda call: MediaWithTraffic(self.log)
        context, _ = self.originate()
        ok = self.respond(context, response_to(context.request, 200, CORE_SDP))
        [call] = self.manager.calls()
        return context, call, ok

    def answered_call_released(self, media: type[FakeMedia]) -> Call:
        """A call answered with ``media`` and released by the operator (its media closing)."""
        self.manager.media_factory = lambda call: media(self.log)
        context, _ = self.originate()
        self.respond(context, response_to(context.request, 200, CORE_SDP))
        [call] = self.manager.calls()
        self.manager.release(call.call_id)
        return call  # type: ignore[no-any-return]

    def test_the_console_and_metrics_see_the_same_call_after_it_is_compacted(self) -> None:
        _, call, _ = self.confirmed_call()
        self.clock.advance(12)
        self.manager.release(call.call_id)
        # what the views read from the call itself, at its end
        expected_record = call_view.call_record(call, False)
        expected_timeline = call_view.timeline_records(call)
        [ended] = self.manager.ended_calls()
        self.assertIsInstance(ended, EndedCall)
        self.assertEqual(call_view.call_record(ended, False), expected_record)
        self.assertEqual(call_view.timeline_records(ended), expected_timeline)
        self.assertEqual(expected_record["packets"], {"wic_to_core": 500, "core_to_wic": 498})
        self.assertEqual((expected_record["ice"], expected_record["dtls"]), ("closed", "connected"))
        self.assertIs(ended.state, CallState.TERMINATED)
        self.assertEqual(ended.release_cause, call.release_cause)

    def test_the_record_s_media_statistics_are_the_snapshot_walked_field_by_field(self) -> None:
        for streams in (builtin_engine_streams(), STREAMS,
                        {0: {"engine": "rtpengine", "node": "udp:192.0.2.1:2223", "ice": "",
                             "media": {"dtls_state": "", "wic_to_core": {"packets": 7, "bytes": 1120}}}}):
            call = Call("call-1", CallDirection.ORIGINATING, self.wic, 1.0, self.clock)
            call.ended_at = 2.0
            call.media_stats = streams
            expected = {index: walked(stream) for index, stream in streams.items()}
            self.assertEqual(EndedCall(call).media_stats, expected)
            if streams is not STREAMS and "engine" not in streams[0]:  # the builtin engine's
                self.assertEqual(expected[0]["media"]["core_rtp_target"], ["192.0.2.7", 49170])
                self.assertEqual(expected[0]["ice_stats"]["connect_time"], 0.0123)
                self.assertEqual(expected[1]["ice"], "closed")
        self.assertEqual(expected[0]["media"]["wic_to_core"]["packets"], 7)
        self.assertEqual(EndedCall(call).media_stats[0]["media"], streams[0]["media"])

    def test_the_record_s_plain_data_is_what_json_wrote_and_read_back(self) -> None:
        """The record (``marshal`` of ``call_history._plain``) reads back as the JSON record of
        before did: dataclasses as dicts, enums as values, tuples as lists, keys as JSON text."""
        class Colour(enum.Enum):
            RED = "red"

        class Level(enum.IntEnum):
            HIGH = 3

        class Note(str, enum.Enum):
            LATE = "late"

        @dataclasses.dataclass(frozen=True, slots=True)
        class Slotted:
            at: float
            colour: Colour

        @dataclasses.dataclass
        class Grown:
            count: int = 0

        grown = Grown(2)
        grown.extra = "not a field"  # type: ignore[attr-defined]
        odd = {"colour": Colour.RED, "level": Level.HIGH, "note": Note.LATE, "slotted": Slotted(1.5, Colour.RED),
               "grown": grown, "keys": {1: "one", 2.5: "two and a half", True: "yes", None: "none", Note.LATE: "x"},
               "nested": [(1, (2, [3])), {"t": ("a", None)}], "floats": [float("inf"), -0.0, 1e-300, 0.1 + 0.2],
               "other": weakref, "ordered": collections.OrderedDict(b=1, a=2)}
        for streams in (builtin_engine_streams(), STREAMS, {0: odd}):
            as_json = json.loads(json.dumps(streams, default=json_leaf))
            for index, stream in streams.items():
                plain = call_history._plain(stream)
                self.assertEqual(plain, as_json[str(index)])
                self.assertEqual(repr(marshal.loads(marshal.dumps(plain))), repr(as_json[str(index)]))
                self.assertEqual(list(plain), list(as_json[str(index)]))  # key order as well

    def test_a_refused_call_without_media_shows_no_figures(self) -> None:
        context, _ = self.originate()
        [call] = self.manager.calls()
        self.respond(context, response_to(context.request, 486))
        expected = call_view.call_record(call, False)
        [ended] = self.manager.ended_calls()
        self.assertEqual(call_view.call_record(ended, False), expected)
        self.assertTrue(ended.dialog.matches(response_to(context.request, 200, tag="any")))  # unconfirmed: as Dialog.matches

    def test_the_record_lets_go_of_the_call_its_dialog_and_its_media(self) -> None:
        _, call, _ = self.confirmed_call()
        self.manager.release(call.call_id)
        held = [weakref.ref(thing) for thing in (call, call.dialog, call.dialog.wic, call.dialog.core)]  # type: ignore[union-attr]
        del call
        [ended] = self.manager.ended_calls()
        gc.collect()
        self.assertEqual([ref() for ref in held], [None] * 4)
        owned = [thing for thing in gc.get_referents(ended) if not isinstance(thing, type)]
        self.assertLessEqual(len(owned), 7)  # call-id, end time, timeline, limit, clock, text, answer

    def test_a_retransmitted_2xx_of_an_ended_call_still_carries_the_same_answer(self) -> None:
        # RFC 3261 §13.3.1.4: the callee's 2xx retransmissions carry the answer already sent.
        context, call, first = self.confirmed_call()
        self.manager.release(call.call_id)
        del call
        self.assertIsInstance(self.manager.ended_calls()[0], EndedCall)
        again = self.manager.stray_response(response_to(context.request, 200, CORE_SDP))
        self.assertEqual(again.body, first.body)
        other_fork = self.manager.stray_response(response_to(context.request, 200, CORE_SDP, tag="fork2"))
        self.assertEqual(other_fork.body, b"")

    def test_a_late_note_on_the_call_shows_in_the_record(self) -> None:
        _, call, _ = self.confirmed_call()
        self.manager.release(call.call_id)
        [ended] = self.manager.ended_calls()
        call.note("sip-in", "a late ACK")
        self.assertEqual(ended.timeline[-1].text, "a late ACK")
        ended.note("sip-in", "another")
        self.assertEqual([entry.text for entry in call.timeline][-2:], ["a late ACK", "another"])

    def test_a_call_released_before_its_2xx_stays_whole_for_the_racing_2xx(self) -> None:
        context, _ = self.originate()
        self.manager.flow_closed(self.wic)
        [ended] = self.manager.ended_calls()
        self.assertIsInstance(ended, Call)  # RFC 3261 §9.1, §15: its dialog ACKs and BYEs a late 2xx
        self.assertIsNone(self.manager.stray_response(response_to(context.request, 200, CORE_SDP)))

    def test_every_ended_call_is_kept_though_a_freed_call_s_address_is_reused(self) -> None:
        history = CallHistory(self.clock, lambda: CallSettings())
        for number in range(50):
            call = Call(f"call-{number}", CallDirection.ORIGINATING, self.wic, self.clock.seconds(), self.clock)
            call.ended_at = self.clock.seconds()
            call.release_cause = "cancelled"
            history.add(call)
            del call
            history.calls()  # compacted: the Call is freed, the next one may get its address
        self.assertEqual(len(history.calls()), 50)
        history.close()

    def test_a_call_is_compacted_only_once_its_media_closed_with_the_engine_s_last_totals(self) -> None:
        # rtpengine's totals come with the reply to its delete (``rtpengine_media``), after the end.
        closed: defer.Deferred = defer.Deferred()
        totals = {"wic_to_core": {"packets": 1, "bytes": 100}, "core_to_wic": {"packets": 1, "bytes": 100}}

        class EngineMedia(FakeMedia):
            def stats(self) -> dict:
                return {0: {"engine": "rtpengine", "node": "node-1", "ice": "", "media": totals}}

            def close(self) -> defer.Deferred:
                return closed

        call = self.answered_call_released(EngineMedia)
        self.assertIs(self.manager.ended_calls()[0], call)  # its media is still closing
        totals["wic_to_core"] = {"packets": 700, "bytes": 70000}
        closed.callback(None)
        [ended] = self.manager.ended_calls()
        self.assertIsInstance(ended, EndedCall)
        self.assertEqual(ended.media_stats[0]["engine"], "rtpengine")
        self.assertEqual(call_view.call_record(ended, False)["packets"], {"wic_to_core": 700, "core_to_wic": 1})

    def test_a_call_is_compacted_when_its_media_closes_though_nobody_looks_at_the_history(self) -> None:
        closed: defer.Deferred = defer.Deferred()

        class SlowMedia(MediaWithTraffic):
            def close(self) -> defer.Deferred:
                return closed

        held = weakref.ref(self.answered_call_released(SlowMedia))
        self.assertIsNotNone(held())  # kept whole while its media closes
        closed.callback("closed")
        gc.collect()
        self.assertIsNone(held())  # the next look may be keep_ended (600 s) away: compacted now
        self.assertEqual(closed.result, "closed")  # the closing's result is passed on unchanged
        [ended] = self.manager.ended_calls()
        self.assertIsInstance(ended, EndedCall)
