"""Registration event package notifier of the embedded core (RFC 3680, RFC 6665; TS 24.229 §5.4.2.1).

Theory of operation
-------------------
After registering a user, an IMS P-CSCF (and the UE) SUBSCRIBE to the ``reg`` event
of the user's default public identity (TS 24.229 §5.2.3); the S-CSCF is the
notifier.  ``RegEventNotifier`` plays that part for the embedded core:

* ``subscribe(request, server_transaction)``: a new SUBSCRIBE (no To tag) for one of
  our users' identities → 200 OK (with our tag and Contact, Record-Route copied, RFC
  3261 §12.1.1) and at once a NOTIFY with the full registration state (RFC 6665
  §4.2.1.2).  ``Expires: 0`` (or a refresh with 0) ends the subscription with a
  final NOTIFY ``terminated;reason=timeout``.  A refresh is a SUBSCRIBE inside the
  dialog (``refresh``).
* Every change of the user's bindings (``LocationService.observers``) sends a NOTIFY
  with the full state and the next ``version`` (RFC 3680 §5.2: full state is always
  allowed).  Contacts that went away are listed once as ``terminated`` with event
  ``expired`` or ``unregistered``.  When the last contact is gone the registration is
  ``terminated`` and so is the subscription (``Subscription-State:
  terminated;reason=noresource``; TS 24.229 §5.4.1.4/§5.4.2.1.2).
* A timer at the earliest binding expiry makes lazily-expired bindings visible
  (``LocationService`` removes them only when read); a timer at the subscription's
  own expiry ends it (``reason=timeout``, RFC 6665 §4.2.2).
* NOTIFY is a UAC request inside the subscription dialog (RFC 3261 §12.2.1.1): the
  Record-Route of the SUBSCRIBE is the route set, the subscriber's Contact the remote
  target.  A 481 to a NOTIFY ends the subscription (RFC 6665 §4.2.2).

The core is a loopback lab core: any peer may subscribe to any of its users.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from epcscf.core.location import Binding, LocationService
from epcscf.core.randomness import random_hex
from epcscf.sip import proxy_rules as rules
from epcscf.sip.connection import Connection
from epcscf.sip.headers import HeaderError, from_address, to_address
from epcscf.sip.message import Headers, Request, Response, make_response
from epcscf.sip.uri import SipUri, UriError, parse_name_addr_list, parse_uri

log = Logger(namespace="epcscf.core.regevent")

REGINFO_NAMESPACE = "urn:ietf:params:xml:ns:reginfo"  # RFC 3680 §5.3
REGINFO_TYPE = "application/reginfo+xml"
# RFC 3680 §6.4: the default subscription duration; TS 24.229 P-CSCFs ask for 600000 s.
DEFAULT_SUBSCRIPTION_EXPIRES = 3761
MAX_SUBSCRIPTION_EXPIRES = 2**31 - 1
#: live reg-event subscriptions per AOR: its P-CSCF, its UEs and an application server or two
#: (TS 24.229 §5.4.2.1.2); more are refused.  Without a cap one user could make the core keep a
#: dialog and a timer per SUBSCRIBE (a fuzz burst left ~530 of them, docs/performance.md,
#: "What pins a fuzz burst's memory").
MAX_SUBSCRIPTIONS_PER_AOR = 8


def is_reg_subscription(request: Request) -> bool:
    """A SUBSCRIBE for the ``reg`` event package (RFC 3680 §5.1; RFC 6665 §8.2.1 Event syntax)."""
    event = (request.headers.get("event") or "").split(";", 1)[0].strip().lower()
    return request.method == "SUBSCRIBE" and event == "reg"


@dataclass(eq=False)
class Subscription:
    """One reg-event subscription dialog (RFC 6665 §4.2; we are the notifier, the UAS of the SUBSCRIBE)."""

    aor: str
    identities: tuple[str, ...]
    call_id: str
    local_tag: str
    remote_tag: str
    #: our From (the subscribed identity) and the subscriber's address, as name-addr text
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: tuple[str, ...]
    expires_at: float
    local_cseq: int = 0
    version: int = 0
    #: contacts reported as active in the last NOTIFY (contact URI → binding)
    reported: dict[str, Binding] = field(default_factory=dict)
    expiry_timer: IDelayedCall | None = None
    terminated: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)


class RegEventNotifier:
    """The core's notifier for the reg event package."""

    def __init__(
        self,
        clock: Any,
        location: LocationService,
        identities_of: Callable[[str], "tuple[str, ...] | None"],
        transactions: Any,
        transports: Any,
        resolver: Any,
        contact_uri: Callable[[], str],
    ) -> None:
        self.clock = clock
        self.location = location
        #: AOR → all public identities of its user (the implicit registration set), or None
        self.identities_of = identities_of
        self.transactions = transactions
        self.transports = transports
        self.resolver = resolver
        self.contact_uri = contact_uri
        self.subscriptions: dict[tuple[str, str, str], Subscription] = {}
        #: AOR → how many of ``subscriptions`` are for it: every REGISTER changes bindings,
        #: and with nobody subscribed to that AOR the change must cost no scan of them all
        self._subscribed: dict[str, int] = {}
        self._binding_timers: dict[str, IDelayedCall] = {}
        self._pending_aors: set[str] = set()
        self._flush_call: IDelayedCall | None = None
        location.observers.append(self._bindings_changed)

    # --- SUBSCRIBE ---

    def subscribe(self, request: Request, server_transaction: Any, aor: str) -> None:
        """A new reg-event SUBSCRIBE for ``aor`` (one of our users)."""
        local_tag = random_hex(6)
        try:
            subscriber = from_address(request)
            target = to_address(request)
            contacts = [v for line in request.headers.get_all("contact") for v in parse_name_addr_list(line)]
        except (HeaderError, UriError) as error:
            server_transaction.respond(make_response(request, 400, f"Bad Request ({error})", to_tag=local_tag))
            return
        if subscriber is None or target is None or subscriber.tag is None or len(contacts) != 1:
            # RFC 6665 §4.1.2.1 / RFC 3261 §12.1.2: a dialog needs a From tag and one Contact.
            server_transaction.respond(make_response(request, 400, "Bad Request (From tag and one Contact needed)", to_tag=local_tag))
            return
        expires = self._expires(request)
        if expires and self._subscribed.get(aor, 0) >= MAX_SUBSCRIPTIONS_PER_AOR:
            # RFC 6665 §4.2.1.1: the notifier's policy may refuse a subscription (403).
            log.info("reg subscription to {aor} refused: {count} already", aor=aor, count=self._subscribed[aor])
            server_transaction.respond(make_response(request, 403, "Forbidden (too many reg subscriptions)", to_tag=local_tag))
            return
        identities = self.identities_of(aor) or (aor,)
        subscription = Subscription(
            aor=aor,
            identities=identities,
            call_id=request.headers.get("call-id") or "",
            local_tag=local_tag,
            remote_tag=subscriber.tag,
            local_uri=f"<{target.uri}>",
            remote_uri=f"<{subscriber.uri}>",
            remote_target=str(contacts[0].uri),
            # RFC 3261 §12.1.1: the UAS's route set is the Record-Route list, in order.
            route_set=tuple(rules.list_values(request.headers, "record-route")),
            expires_at=self.clock.seconds() + expires,
        )
        self._respond(request, server_transaction, subscription, expires)
        if expires == 0:
            # RFC 6665 §4.2.1.1: a fetch: one NOTIFY, then the subscription is over.
            self._notify(subscription, terminated_reason="timeout")
            return
        self.subscriptions[subscription.key] = subscription
        self._subscribed[aor] = self._subscribed.get(aor, 0) + 1
        self._arm_subscription_timer(subscription)
        log.info("reg subscription to {aor} for {expires} s", aor=aor, expires=expires)
        self._notify(subscription)
        self._arm_binding_timer(aor)

    def find(self, request: Request) -> Subscription | None:
        """The subscription an in-dialog request (a refreshing SUBSCRIBE) belongs to."""
        try:
            local = to_address(request)
            remote = from_address(request)
        except HeaderError:
            return None
        if local is None or remote is None or local.tag is None or remote.tag is None:
            return None
        return self.subscriptions.get((request.headers.get("call-id") or "", local.tag, remote.tag))

    def refresh(self, request: Request, server_transaction: Any, subscription: Subscription) -> None:
        """RFC 6665 §4.2.1.2: a SUBSCRIBE inside the dialog refreshes (or with 0, ends) it."""
        expires = self._expires(request)
        subscription.expires_at = self.clock.seconds() + expires
        self._respond(request, server_transaction, subscription, expires)
        if expires == 0:
            self._notify(subscription, terminated_reason="timeout")
            return
        self._arm_subscription_timer(subscription)
        self._notify(subscription)

    def close(self) -> None:
        """Cancel every timer (service shutdown); subscribers are not notified."""
        for subscription in self.subscriptions.values():
            _cancel(subscription.expiry_timer)
        for timer in self._binding_timers.values():
            _cancel(timer)
        _cancel(self._flush_call)
        self.subscriptions.clear()
        self._subscribed.clear()
        self._binding_timers.clear()
        if self._bindings_changed in self.location.observers:
            self.location.observers.remove(self._bindings_changed)

    # --- registration changes ---

    def _bindings_changed(self, aor: str) -> None:
        # One REGISTER may change several bindings: notify once, on the next reactor turn.
        if aor not in self._subscribed:
            return
        self._pending_aors.add(aor)
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        aors, self._pending_aors = self._pending_aors, set()
        for aor in aors:
            for subscription in [s for s in self.subscriptions.values() if s.aor == aor]:
                self._notify(subscription)
            self._arm_binding_timer(aor)

    def _arm_binding_timer(self, aor: str) -> None:
        """Wake up at the next binding expiry so that it is noticed and notified (RFC 3680 §5.2 'expired')."""
        _cancel(self._binding_timers.pop(aor, None))
        bindings = self.location.bindings(aor)
        if not bindings or aor not in self._subscribed:
            return
        delay = max(0.0, min(b.expires_at for b in bindings) - self.clock.seconds())
        self._binding_timers[aor] = self.clock.callLater(delay, self.location.bindings, aor)

    def _arm_subscription_timer(self, subscription: Subscription) -> None:
        _cancel(subscription.expiry_timer)
        delay = max(0.0, subscription.expires_at - self.clock.seconds())
        subscription.expiry_timer = self.clock.callLater(delay, self._subscription_expired, subscription)

    def _subscription_expired(self, subscription: Subscription) -> None:
        subscription.expiry_timer = None
        # RFC 6665 §4.2.2: the notifier ends an expired subscription with reason=timeout.
        self._notify(subscription, terminated_reason="timeout")

    # --- NOTIFY ---

    def _notify(self, subscription: Subscription, terminated_reason: str | None = None) -> None:
        if subscription.terminated:
            return
        now = self.clock.seconds()
        bindings = self.location.bindings(subscription.aor)
        body = reginfo(subscription, bindings, now)
        subscription.version += 1
        subscription.reported = {b.contact: b for b in bindings}
        if terminated_reason is None and not bindings and subscription.version > 1:
            # The registration is over (TS 24.229 §5.4.2.1.2): so is the subscription.
            terminated_reason = "noresource"
        if terminated_reason is None:
            state = f"active;expires={max(0, int(subscription.expires_at - now))}"
        else:
            state = f"terminated;reason={terminated_reason}"
            self._end(subscription)
        self._send_notify(subscription, state, body)

    def _end(self, subscription: Subscription) -> None:
        subscription.terminated = True
        _cancel(subscription.expiry_timer)
        if self.subscriptions.pop(subscription.key, None) is not None:
            left = self._subscribed.pop(subscription.aor, 1) - 1
            if left:
                self._subscribed[subscription.aor] = left
        if subscription.aor not in self._subscribed:
            _cancel(self._binding_timers.pop(subscription.aor, None))

    def _send_notify(self, subscription: Subscription, state: str, body: bytes) -> None:
        subscription.local_cseq += 1
        request = Request("NOTIFY", subscription.remote_target)
        headers: Headers = request.headers
        for route in subscription.route_set:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", f"{subscription.local_uri};tag={subscription.local_tag}")
        headers.add("To", f"{subscription.remote_uri};tag={subscription.remote_tag}")
        headers.add("Call-ID", subscription.call_id)
        headers.add("CSeq", f"{subscription.local_cseq} NOTIFY")
        headers.add("Contact", f"<{self.contact_uri()}>")
        headers.add("Event", "reg")
        headers.add("Subscription-State", state)
        headers.add("Content-Type", REGINFO_TYPE)
        request.body = body
        rules.apply_strict_route(request)  # RFC 3261 §12.2.1.1: a strict first hop
        try:
            next_hop = parse_uri(rules.next_hop_uri(request))
        except UriError:
            log.info("reg NOTIFY for {aor} not sent: bad next hop", aor=subscription.aor)
            return
        if not isinstance(next_hop, SipUri):
            return
        resolving = self.resolver.resolve_uri(next_hop)
        resolving.addCallback(self._connect_and_send, request, subscription)
        resolving.addErrback(lambda f: log.info("reg NOTIFY for {aor} not sent: {why}", aor=subscription.aor, why=f.value))

    def _connect_and_send(self, targets: list[Any], request: Request, subscription: Subscription) -> Any:
        if not targets:
            raise LookupError(f"no address for {rules.next_hop_uri(request)}")
        target = targets[0]

        def send(connection: Connection) -> None:
            local = self.transports.local_address(connection.transport) or connection.local
            request.headers.insert_first(
                "Via", f"SIP/2.0/{connection.transport} {local};branch=z9hG4bK{random_hex(10)};rport"
            )
            self.transactions.send_request(request, connection, _NotifyUser(self, subscription))

        return self.transports.connect(target).addCallback(send)

    def notify_failed(self, subscription: Subscription, status: int) -> None:
        # RFC 6665 §4.2.2: 481 (or a timeout) to a NOTIFY removes the subscription.
        if status in (408, 481) and not subscription.terminated:
            log.info("reg subscription to {aor} ended by a {status} to NOTIFY", aor=subscription.aor, status=status)
            self._end(subscription)

    # --- helpers ---

    def _respond(self, request: Request, server_transaction: Any, subscription: Subscription, expires: int) -> None:
        response = make_response(request, 200, to_tag=subscription.local_tag)
        for value in request.headers.get_all("record-route"):
            response.headers.add("Record-Route", value)  # RFC 3261 §12.1.1
        response.headers.add("Contact", f"<{self.contact_uri()}>")
        response.headers.add("Expires", str(expires))
        server_transaction.respond(response)

    @staticmethod
    def _expires(request: Request) -> int:
        value = (request.headers.get("expires") or "").strip()
        if not value.isdigit():
            return DEFAULT_SUBSCRIPTION_EXPIRES
        return min(int(value), MAX_SUBSCRIPTION_EXPIRES)


class _NotifyUser:
    """Client-transaction user of one NOTIFY."""

    def __init__(self, notifier: RegEventNotifier, subscription: Subscription) -> None:
        self.notifier = notifier
        self.subscription = subscription

    def response_received(self, response: Response, transaction: Any) -> None:
        if response.status >= 200:
            self.notifier.notify_failed(self.subscription, response.status)

    def timed_out(self, transaction: Any) -> None:
        self.notifier.notify_failed(self.subscription, 408)

    def transport_failed(self, transaction: Any, reason: str) -> None:
        log.info("reg NOTIFY not delivered: {reason}", reason=reason)


def reginfo(subscription: Subscription, bindings: list[Binding], now: float) -> bytes:
    """The full-state reginfo document (RFC 3680 §5.3) for every identity of the subscription."""
    root = ElementTree.Element(
        "reginfo", {"xmlns": REGINFO_NAMESPACE, "version": str(subscription.version), "state": "full"}
    )
    if bindings:
        state = "active"
    elif subscription.reported or subscription.version > 0:
        state = "terminated"
    else:
        state = "init"
    current = {b.contact for b in bindings}
    for index, identity in enumerate(subscription.identities):
        registration = ElementTree.SubElement(
            root, "registration", {"aor": identity, "id": f"reg{index}", "state": state}
        )
        for binding in bindings:
            # RFC 3680 §5.3: "registered" for a contact that is (still) active.
            event = "registered" if binding.contact in subscription.reported else "created"
            element = ElementTree.SubElement(
                registration,
                "contact",
                {
                    "id": _contact_id(binding.contact),
                    "state": "active",
                    "event": event,
                    "expires": str(binding.remaining(now)),
                },
            )
            ElementTree.SubElement(element, "uri").text = binding.contact
        for contact, binding in subscription.reported.items():
            if contact in current:
                continue
            event = "expired" if binding.expires_at <= now else "unregistered"
            element = ElementTree.SubElement(
                registration, "contact", {"id": _contact_id(contact), "state": "terminated", "event": event}
            )
            ElementTree.SubElement(element, "uri").text = contact
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8")


def _contact_id(contact: str) -> str:
    return "c" + hashlib.sha256(contact.encode("utf-8")).hexdigest()[:12]


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()
