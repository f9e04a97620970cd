"""The call side's at-once paths (tenth pass, docs/performance.md): each gives what the Deferred
chain it stands for gives.

* ``succeeded_already``: a Deferred whose result a callback added now would get at once;
* the initial INVITE's offer decided at once (no Deferred for the proxy) when the media's offer
  has fired, the same decision, call state and timeline as when it fires later;
* ``CallMedia.offer_from_wic`` without its callback chain when the call's streams are ready:
  the same offer as through the chain;
* ``MediaSession.set_direction`` by value from a dict, as ``Direction(value)``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial import unittest

from epcscf.media.session import Direction, _DIRECTION_BY_VALUE
from epcscf.pcscf import call_media
from epcscf.pcscf.call_model import MediaRejected, succeeded_already
from epcscf.pcscf.call_state import CallState
from epcscf.pcscf.calls import CallManager, CallSettings
from epcscf.sip.proxy import Forward, ProxiedRequest
from tests.support.fakes import FakeConnection, FakeServerTransaction
from tests.test_calls_manager import ADDRESSES, ELEMENT_ADDRESS, PEER_ADDRESS, FakeMedia, FakeProxy, invite
from tests.test_calls_media import CallMediaTestCase


class SucceededAlreadyTests(unittest.TestCase):
    def test_only_a_plain_result_waiting_for_nothing_counts(self) -> None:
        self.assertTrue(succeeded_already(defer.succeed(b"v=0")))
        self.assertTrue(succeeded_already(defer.succeed(None)))
        self.assertFalse(succeeded_already(defer.Deferred()))
        failed = defer.fail(RuntimeError("no"))
        self.assertFalse(succeeded_already(failed))
        failed.addErrback(lambda _: None)
        inner: defer.Deferred = defer.Deferred()
        chained = defer.succeed(None).addCallback(lambda _: inner)  # waits on ``inner``
        self.assertFalse(succeeded_already(chained))
        inner.callback(b"late")
        self.assertTrue(succeeded_already(chained))
        self.assertEqual(chained.result, self.successResultOf(chained))


class InviteOfferAtOnceTests(unittest.TestCase):
    """The originating INVITE with a media whose offer has fired (the builtin media with shelved
    sockets) against one whose offer fires later."""

    def place(self, offer: Any) -> tuple[Any, CallManager, ProxiedRequest]:
        clock = task.Clock()
        log: list[str] = []

        def factory(call: Any) -> FakeMedia:
            media = FakeMedia(log)
            media.offer_from_wic = lambda sdp: offer(media._do("offer_from_wic", sdp))  # type: ignore[method-assign]
            return media

        manager = CallManager(clock, ADDRESSES, factory, CallSettings(keep_ended=60), FakeProxy())
        wic = FakeConnection("WSS", PEER_ADDRESS, ELEMENT_ADDRESS, "wss-1")
        request = invite(True)
        context = ProxiedRequest(request.copy(), wic, FakeServerTransaction(request, wic))
        return manager.originating_invite(context, "<sip:alice@example.com>", Forward(context.request)), manager, context

    def outcome(self, manager: CallManager, decision: Any) -> tuple[Any, ...]:
        [call] = manager.calls() or [None]
        return (type(decision), decision.request.serialize(), call.state if call else None,
                [(entry.kind, entry.text) for entry in call.timeline] if call else None)

    def test_a_fired_offer_is_decided_at_once_as_a_later_one_is(self) -> None:
        at_once, manager, _ = self.place(defer.succeed)
        self.assertIsInstance(at_once, Forward)  # no Deferred for the proxy
        later: list[defer.Deferred] = []
        decided, slow_manager, _ = self.place(lambda body: later.append(defer.Deferred()) or later[-1])
        self.assertIsInstance(decided, defer.Deferred)
        later[0].callback(b"v=0\r\noffer_from_wic\r\n")
        slow = self.successResultOf(decided)
        self.assertEqual(self.outcome(manager, at_once), self.outcome(slow_manager, slow))
        self.assertIs(manager.calls()[0].state, CallState.OFFER_FORWARDED)

    def test_a_failed_offer_is_refused_as_a_later_failure_is(self) -> None:
        refusing, manager, _ = self.place(lambda body: defer.fail(MediaRejected(488, "no DTLS fingerprint")))
        refused = self.successResultOf(refusing)  # a failed Deferred goes through its errback, as before
        later: list[defer.Deferred] = []
        decided, slow_manager, _ = self.place(lambda body: later.append(defer.Deferred()) or later[-1])
        later[0].errback(MediaRejected(488, "no DTLS fingerprint"))
        slow = self.successResultOf(decided)
        self.assertEqual(refused.response.serialize(), slow.response.serialize())
        self.assertEqual(refused.response.status, 488)
        self.assertEqual([h.release_cause for h in manager.ended_calls()],
                         [h.release_cause for h in slow_manager.ended_calls()])


class OfferFromWicAtOnceTests(CallMediaTestCase):
    async def test_a_reoffer_on_ready_streams_is_the_offer_the_chain_makes(self) -> None:
        media, wic, _, _ = await self.originating_call()
        ready = self.successResultOf(media._ensure_streams((0,)))  # the streams are there: fired
        self.assertEqual(ready, [None])
        at_once = media.offer_from_wic(wic.sdp("actpass", direction="sendonly"))
        self.assertTrue(succeeded_already(at_once))
        self.patch(call_media, "succeeded_already", lambda deferred: False)  # the chain, as before
        through_chain = await media.offer_from_wic(wic.sdp("actpass", direction="sendonly"))
        # The same content again: RFC 3264 §8 keeps the o= version, so the bytes are equal.
        self.assertEqual(at_once.result, through_chain)


class DirectionByValueTests(unittest.TestCase):
    def test_every_value_and_member_reads_as_the_enum_reads_it(self) -> None:
        for member in Direction:
            self.assertIs(_DIRECTION_BY_VALUE.get(member.value) or Direction(member.value), Direction(member.value))
            self.assertIs(_DIRECTION_BY_VALUE.get(member) or Direction(member), Direction(member))  # type: ignore[call-overload]
        self.assertIsNone(_DIRECTION_BY_VALUE.get("sideways"))
        self.assertRaises(ValueError, Direction, "sideways")  # what set_direction raises then, as before


del CallMediaTestCase  # imported for its set-up only: not run again here
