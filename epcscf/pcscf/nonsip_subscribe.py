"""SUBSCRIBE/NOTIFY (RFC 6665) for a non-SIP WIC's user agent, as the Janus SIP plugin's
``subscribe`` and ``unsubscribe`` requests offer them (``janus_sip.c``), e.g. message waiting
(RFC 3842 ``message-summary``) or presence.

* ``subscribe`` (``event``, optional ``to`` — the WIC's own identity by default —, ``accept``,
  ``subscribe_ttl``, ``call_id``): once registered, a SUBSCRIBE outside any dialog (RFC 6665
  §4.1.2.1), one subscription per event package per handle, as the plugin keys them.  The WIC
  gets ``subscribing`` at once, then ``subscribe_succeeded`` (``code``, ``reason``,
  ``expires``) for a 2xx or ``subscribe_failed`` for anything else (a timeout is 408).  A
  granted subscription is refreshed in its dialog before it expires (RFC 6665 §4.1.2.2; the
  plugin's sofia stack does the same).
* NOTIFYs in a subscription's dialog (its Call-ID and our From tag as their To tag, RFC 6665
  §4.1.3) are answered 200 and become ``notify`` events (``notify``, ``substate``,
  ``content-type``, ``content``); ``Subscription-State: terminated`` ends the subscription.
* ``unsubscribe`` (``event``): SUBSCRIBE with ``Expires: 0`` in the dialog (RFC 6665
  §4.1.2.3), ``unsubscribing``.  When the handle goes, its flow goes and the notifier's
  subscriptions end by their own expiry.

What the WIC names goes only where the grammar allows it: ``event`` is an RFC 6665 §8.4 token,
``accept`` a list of media types, ``to`` a SIP URI (checked by the gateway).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.logger import Logger

from epcscf.nonsip import janus_api as api
from epcscf.pcscf.nonsip_messages import CALL_ID_RE, is_sip_uri, media_type_ok
from epcscf.pcscf.nonsip_register import Credentials, RegState, TransactionOutcome, UaEvent, identity_name_addr
from epcscf.pcscf.nonsip_transfer import notify_event, subscription_state
from epcscf.sip.headers import to_tag
from epcscf.sip.message import Request, Response, make_response, new_tag
from epcscf.sip.proxy_rules import list_values, name_addr_uri
from epcscf.sip.transaction import ClientTransaction, ServerTransaction

__all__ = ["DEFAULT_TTL", "Subscriptions", "accept_ok", "check_subscription", "event_ok"]

log = Logger(namespace="epcscf.pcscf.nonsip")

#: janus_sip.c's JANUS_DEFAULT_SUBSCRIBE_TTL
DEFAULT_TTL = 3600
MIN_TTL, MAX_TTL = 60, 86400
#: subscriptions one handle may hold (one per event package)
MAX_SUBSCRIPTIONS = 8
#: seconds an ended subscription still takes its final NOTIFY (RFC 6665 §4.1.2.3: it follows
#: the un-SUBSCRIBE's 2xx, and may come late)
FINAL_NOTIFY_WAIT = 10.0

# RFC 6665 §8.4: event-type = event-package *( "." event-template ), tokens without "."
_EVENT = re.compile(r"[!#$%&'*+^_`|~0-9A-Za-z-]{1,32}(\.[!#$%&'*+^_`|~0-9A-Za-z-]{1,32})*", re.ASCII)


def event_ok(text: str) -> bool:
    return _EVENT.fullmatch(text) is not None


def accept_ok(text: str) -> bool:
    """An Accept value: media types separated by commas (RFC 3261 §20.1)."""
    return len(text) <= 256 and all(media_type_ok(part.strip()) for part in text.split(","))


class SubscribingUa(Protocol):
    """What subscriptions need of the non-SIP UA (``epcscf.pcscf.nonsip_ua``)."""

    emit: Callable[[UaEvent], None]

    @property
    def credentials(self) -> Credentials | None: ...

    def via(self) -> str: ...

    def contact(self) -> str: ...

    def send(self, request: Request, user: Any) -> ClientTransaction: ...

    def respond(self, transaction: ServerTransaction, response: Response) -> None: ...


@dataclass(eq=False)
class _Subscription:
    event: str
    to: str
    accept: str | None
    ttl: int
    call_id: str
    local_tag: str
    cseq: int = 0
    remote_tag: str | None = None
    remote_target: str = ""
    route_set: tuple[str, ...] = ()
    refresh: Any = None
    confirmed: bool = False
    ending: bool = False  # un-SUBSCRIBE sent: only its final NOTIFY is still expected


class Subscriptions:
    """The SUBSCRIBE/NOTIFY side of one UA."""

    def __init__(self, reactor: Any, ua: SubscribingUa) -> None:
        self._reactor = reactor
        self._ua = ua
        self._by_event: dict[str, _Subscription] = {}

    def __len__(self) -> int:
        return len(self._by_event)

    def has(self, event: str) -> bool:
        subscription = self._by_event.get(event)
        return subscription is not None and not subscription.ending

    # --- what the WIC sends ----------------------------------------------------------------

    def subscribe(self, event: str, to: str | None, accept: str | None, ttl: int, call_id: str | None) -> None:
        credentials = self._ua.credentials
        assert credentials is not None
        current = self._by_event.get(event)
        if current is not None and current.ending:
            self._forget(current)
            current = None
        if current is not None:  # the plugin reuses its handle for the event: a refresh
            current.ttl = ttl
            self._send(current, ttl)
        else:
            subscription = _Subscription(event, to or credentials.aor, accept, ttl, call_id or secrets.token_hex(12), new_tag())
            self._by_event[event] = subscription
            self._send(subscription, ttl)
            current = subscription
        self._ua.emit(UaEvent({"event": "subscribing", "call_id": current.call_id}, call_id=current.call_id))

    def unsubscribe(self, event: str) -> bool:
        subscription = self._by_event.get(event)
        if subscription is None or subscription.ending:
            return False
        self._stop_refresh(subscription)
        subscription.ending = True
        self._send(subscription, 0)
        self._ua.emit(UaEvent({"event": "unsubscribing"}, call_id=subscription.call_id))
        return True

    def close(self) -> None:
        for subscription in self._by_event.values():
            self._stop_refresh(subscription)
        self._by_event.clear()

    def _send(self, subscription: _Subscription, expires: int) -> None:
        credentials = self._ua.credentials
        assert credentials is not None
        self._stop_refresh(subscription)
        subscription.cseq += 1
        # RFC 6665 §4.1.2.1 out of a dialog (RFC 3261 §8.1.1), §4.1.2.2 refreshes in it (§12.2.1.1)
        request = Request("SUBSCRIBE", subscription.remote_target or subscription.to)
        request.headers.add("Via", self._ua.via())
        request.headers.add("Max-Forwards", "70")
        for route in subscription.route_set:
            request.headers.add("Route", route)
        request.headers.add("From", f"{identity_name_addr(credentials)};tag={subscription.local_tag}")
        remote_tag = f";tag={subscription.remote_tag}" if subscription.remote_tag else ""
        request.headers.add("To", f"<{subscription.to}>{remote_tag}")
        request.headers.add("Call-ID", subscription.call_id)
        request.headers.add("CSeq", f"{subscription.cseq} SUBSCRIBE")
        request.headers.add("Contact", self._ua.contact())
        request.headers.add("Event", subscription.event)
        if subscription.accept:
            request.headers.add("Accept", subscription.accept)
        request.headers.add("Expires", str(expires))
        self._ua.send(request, TransactionOutcome(lambda response: self._answered(subscription, expires, response)))

    def _answered(self, subscription: _Subscription, expires: int, response: Response) -> None:
        if response.status < 200:
            return
        if expires == 0:
            # its final NOTIFY (terminated) is still to come: wait for it a little
            subscription.refresh = self._reactor.callLater(FINAL_NOTIFY_WAIT, self._forget, subscription)
            return
        if response.status >= 300:
            log.info("non-SIP UA: SUBSCRIBE {event} {call_id} refused: {status}",
                     event=subscription.event, call_id=subscription.call_id, status=response.status)
            first = not subscription.confirmed
            self._forget(subscription)
            if first or response.status != 481:
                self._ua.emit(UaEvent({"event": "subscribe_failed", "code": response.status, "reason": response.reason},
                                      call_id=subscription.call_id))
            return
        if not subscription.confirmed:
            # RFC 6665 §4.1.2.1 / RFC 3261 §12.1.2: the dialog from the 2xx
            subscription.confirmed = True
            subscription.remote_tag = to_tag(response)
            subscription.route_set = tuple(reversed(list_values(response.headers, "Record-Route")))
            contacts = list_values(response.headers, "Contact")
            if contacts:
                subscription.remote_target = name_addr_uri(contacts[0])
        header = response.headers.get("Expires")
        granted = int(header) if header and header.isdigit() else expires
        if granted > 0 and self._by_event.get(subscription.event) is subscription and not subscription.ending:
            # RFC 6665 §4.1.2.2: refresh before it lapses
            subscription.refresh = self._reactor.callLater(max(granted * 0.8, 1.0), self._send, subscription, subscription.ttl)
        result = {"event": "subscribe_succeeded", "code": response.status, "reason": response.reason, "expires": granted}
        self._ua.emit(UaEvent(result, call_id=subscription.call_id))

    # --- what the notifier sends -------------------------------------------------------------

    def notify_received(self, request: Request, transaction: ServerTransaction) -> bool:
        """A NOTIFY of one of our subscriptions: answered 200 and told; False when it is not ours."""
        subscription = next((s for s in self._by_event.values()
                             if s.call_id == request.call_id and to_tag(request) == s.local_tag), None)
        if subscription is None:
            return False
        event = (request.headers.get("Event") or "").split(";")[0].strip()
        if event.lower() != subscription.event.lower():
            self._ua.respond(transaction, make_response(request, 489))  # RFC 6665 §4.1.3
            return True
        self._ua.respond(transaction, make_response(request, 200))
        if request.body:
            self._ua.emit(notify_event(request, event))
        if subscription_state(request) == "terminated":
            self._forget(subscription)  # RFC 6665 §4.1.3: the subscription is over
        return True

    def _forget(self, subscription: _Subscription) -> None:
        self._stop_refresh(subscription)
        if self._by_event.get(subscription.event) is subscription:
            del self._by_event[subscription.event]

    @staticmethod
    def _stop_refresh(subscription: _Subscription) -> None:
        if subscription.refresh is not None and subscription.refresh.active():
            subscription.refresh.cancel()
        subscription.refresh = None


def check_subscription(what: str, body: dict[str, Any], ua: Any) -> tuple[int, str] | None:
    """janus_sip.c's checks of ``subscribe``/``unsubscribe``; what goes into a header is checked
    against its grammar (``epcscf.pcscf.nonsip_subscribe``)."""
    event = body.get("event")
    if not isinstance(event, str):
        return api.SIP_MISSING_ELEMENT, "Missing element (event)"
    if not event_ok(event):
        return api.SIP_INVALID_ELEMENT, "Invalid element (event should be an event package such as message-summary)"
    if ua.reg_state is not RegState.REGISTERED:
        return api.SIP_WRONG_STATE, "Wrong state (not registered)"
    if what == "unsubscribe":
        return None if ua.subscriptions.has(event) else (api.SIP_WRONG_STATE, "Wrong state (not subscribed to this event)")
    to, accept, ttl, call_id = body.get("to"), body.get("accept"), body.get("subscribe_ttl", DEFAULT_TTL), body.get("call_id")
    if to is not None and not (isinstance(to, str) and is_sip_uri(to, needs_user=False) and "?" not in to):
        return api.SIP_INVALID_ADDRESS, f"Invalid user address {str(to)[:80]}"
    if accept is not None and not (isinstance(accept, str) and accept_ok(accept)):
        return api.SIP_INVALID_ELEMENT, "Invalid element (accept should be media types such as application/simple-message-summary)"
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_TTL <= ttl <= MAX_TTL:
        return api.SIP_INVALID_ELEMENT, f"Invalid element (subscribe_ttl should be {MIN_TTL}-{MAX_TTL} seconds)"
    if call_id is not None and not (isinstance(call_id, str) and CALL_ID_RE.fullmatch(call_id)):
        return api.SIP_INVALID_ELEMENT, "Invalid element (call_id should be a SIP Call-ID)"
    if "content" in body or "content_type" in body:
        return api.SIP_INVALID_ELEMENT, "Invalid element (a SUBSCRIBE body is not supported by epcscf)"
    if not ua.subscriptions.has(event) and len(ua.subscriptions) >= MAX_SUBSCRIPTIONS:
        return api.SIP_WRONG_STATE, f"Wrong state (at most {MAX_SUBSCRIPTIONS} subscriptions per handle)"
    return None
