"""The eP-CSCF as a subscriber to the ``reg`` event of the IMPUs it registered (TS 24.229 §5.2.3).

Theory of operation
-------------------
After a successful initial registration the P-CSCF subscribes to the registration state of
the registered public user identity (TS 24.229 §5.2.3, RFC 3680): a SUBSCRIBE with the IMPU
as Request-URI and To, our core-facing URI as From, Contact and P-Asserted-Identity,
``Event: reg`` and ``Expires: 600000``, sent along the binding's Service-Route (else to the
configured core entry point).  One subscription per IMPU: other WICs of the same IMPU share it.

* The SUBSCRIBE and its refreshes are UAC requests of ours: each goes through the proxy's
  ``ProxyOperations.send_request`` in its own client transaction (RFC 3261 §17.1).  The 2xx
  makes the dialog (RFC 6665 §4.1.2.1, RFC 3261 §12.1.2: route set = Record-Route reversed,
  remote target = Contact); a NOTIFY may come first and then makes it (RFC 6665 §4.1.2.4).
* Refresh: 600 s before expiry when more than 1200 s were granted, else at half the time
  (TS 24.229 §5.2.3).  A refresh failing, a 481 or a ``terminated`` subscription ends it;
  ``deactivated`` or ``timeout`` with bindings still live is subscribed again at once
  (RFC 6665 §4.1.3), anything else at the next registration refresh.
* NOTIFY (``handle_notify``; the edge hands over every NOTIFY addressed to our own URI from a
  trusted core source): matched on Call-ID and our tag, else 481 (RFC 6665 §4.1.3); a body
  that is not reginfo is 400.  Each contact of the reginfo (RFC 3680 §5.3) is matched to our
  bindings of the IMPU by contact URI: ``terminated`` (expired, deactivated, probation,
  unregistered, rejected) is a network-initiated de-registration (TS 24.229 §5.2.5.1,
  ``on_deregistered``); ``active`` with ``shortened`` moves the binding's expiry
  (TS 24.229 §5.2.5.2).  A registration element ``terminated`` ends all its bindings.
* When the last binding of the IMPU ends for another reason (the WIC de-registered, expiry,
  its WebSocket closed) the subscription is ended with ``Expires: 0`` (RFC 6665 §4.1.2.3).

Every step is one counter (``observer``: subscribe_sent, subscribed, refreshed,
subscribe_failed, notify, notify_unknown, notify_bad, terminated) and failures an info line.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from epcscf.pcscf.edge import EdgeAddresses
from epcscf.pcscf.reginfo import ENDING_EVENTS, REGINFO_TYPE, Reginfo, ReginfoError, parse_reginfo
from epcscf.pcscf.registration import RegistrationBinding, Registrations
from epcscf.sip.connection import Connection
from epcscf.sip.headers import HeaderError, from_tag, split_header_list, to_tag
from epcscf.sip.message import Request, Response, make_response, new_tag
from epcscf.sip.proxy_policy import ProxyOperations
from epcscf.sip.proxy_rules import add_via, list_values, name_addr_uri
from epcscf.sip.resolver import Target
from epcscf.sip.uri import SipUri, UriError, parse_name_addr, parse_uri, uris_equal

log = Logger(namespace="epcscf.pcscf.reg_event")

#: TS 24.229 §5.2.3: the P-CSCF asks for 600000 s
DEFAULT_EXPIRES = 600000


@dataclass(frozen=True)
class RegEventSettings:
    enabled: bool = False
    expires: int = DEFAULT_EXPIRES
    #: seconds between a network de-registration and closing the WIC's WebSocket: the core's
    #: own NOTIFY to the WIC (on the WIC's subscription) goes through first
    close_grace: float = 1.0


class SubscriptionState(Enum):
    SUBSCRIBING = "subscribing"  # SUBSCRIBE sent, no 2xx nor NOTIFY yet
    ACTIVE = "active"
    TERMINATED = "terminated"


@dataclass(eq=False)
class RegSubscription:
    """One reg-event subscription dialog of ours (we are the subscriber, RFC 6665 §4.1)."""

    aor: str  # the registered IMPU: Request-URI and To
    call_id: str
    local_tag: str
    route_set: tuple[str, ...]  # Service-Route until the 2xx gives the dialog's
    cseq: int = 0
    remote_tag: str | None = None
    remote_target: str | None = None
    state: SubscriptionState = SubscriptionState.SUBSCRIBING
    expires_at: float = 0.0
    version: int | None = None  # of the last reginfo processed
    confirmed: bool = False  # a 2xx came (the next ones answer refreshes)
    _timer: IDelayedCall | None = field(default=None, repr=False)


class RegEventSubscriber:
    """The subscriptions of one eP-CSCF (see module docstring)."""

    def __init__(
        self,
        clock: IReactorTime,
        settings: RegEventSettings,
        addresses: EdgeAddresses,
        registrations: Registrations,
        proxy: ProxyOperations,
        connect: Callable[[Target], defer.Deferred],
        resolve_uri: Callable[[SipUri], defer.Deferred],
        core_targets: Callable[[], defer.Deferred],
        on_deregistered: Callable[[RegistrationBinding, str], None],
        observer: Callable[[str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.addresses = addresses
        self.registrations = registrations
        self.proxy = proxy
        self.connect = connect
        self.resolve_uri = resolve_uri
        #: Deferred[list[Target]]: the configured core entry point (no Service-Route)
        self.core_targets = core_targets
        self.on_deregistered = on_deregistered
        self.observer = observer
        self._by_aor: dict[str, RegSubscription] = {}
        self._by_dialog: dict[tuple[str, str], RegSubscription] = {}

    def subscriptions(self) -> list[RegSubscription]:
        return list(self._by_aor.values())

    def _count(self, what: str) -> None:
        if self.observer is not None:
            self.observer(what)

    # --- registration events -------------------------------------------------------------------

    def registered(self, bindings: list[RegistrationBinding]) -> None:
        """Bindings recorded from a 2xx to a REGISTER: subscribe for an IMPU without one."""
        if not self.settings.enabled:
            return
        for binding in bindings:
            if binding.aor not in self._by_aor:
                self._subscribe(binding)

    def binding_removed(self, binding: RegistrationBinding, network: bool) -> None:
        """A binding ended; with the IMPU's last one the subscription ends too (RFC 6665 §4.1.2.3)."""
        subscription = self._by_aor.get(binding.aor)
        if subscription is None or self.registrations.for_aor(binding.aor):
            return
        if subscription.state is SubscriptionState.ACTIVE and not network:
            self._send(subscription, 0)
        self._end(subscription)

    def close(self) -> None:
        """Service stop: timers off (the core ends the subscriptions at their expiry)."""
        for subscription in list(self._by_aor.values()):
            self._end(subscription)

    # --- SUBSCRIBE -----------------------------------------------------------------------------

    def _subscribe(self, binding: RegistrationBinding) -> None:
        subscription = RegSubscription(
            aor=binding.aor,
            call_id=secrets.token_hex(12),
            local_tag=new_tag(),
            route_set=tuple(binding.service_route),
        )
        self._by_aor[subscription.aor] = subscription
        self._by_dialog[(subscription.call_id, subscription.local_tag)] = subscription
        log.info("subscribing to the reg event of {aor}", aor=subscription.aor)
        self._send(subscription, self.settings.expires)

    def _build(self, subscription: RegSubscription, expires: int) -> Request:
        subscription.cseq += 1
        own = f"sip:{self.addresses.core_host}:{self.addresses.core_port};transport={self.addresses.core_transport}"
        request = Request("SUBSCRIBE", subscription.remote_target or subscription.aor)
        headers = request.headers
        for route in subscription.route_set:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<sip:{self.addresses.core_host}>;tag={subscription.local_tag}")
        to_tail = f";tag={subscription.remote_tag}" if subscription.remote_tag else ""
        headers.add("To", f"<{subscription.aor}>{to_tail}")
        headers.add("Call-ID", subscription.call_id)
        headers.add("CSeq", f"{subscription.cseq} SUBSCRIBE")
        headers.add("Contact", f"<{own}>")
        headers.add("P-Asserted-Identity", f"<sip:{self.addresses.core_host}>")
        headers.add("Event", "reg")
        headers.add("Accept", REGINFO_TYPE)
        headers.add("Expires", str(expires))
        return request

    def _send(self, subscription: RegSubscription, expires: int) -> None:
        request = self._build(subscription, expires)
        self._count("subscribe_sent")
        finding = self._next_hop(request, subscription.remote_target is not None)
        finding.addCallback(self._connect_and_send, request, _SubscribeUser(self, subscription, expires))
        finding.addErrback(self._not_sent, subscription)

    def _next_hop(self, request: Request, in_dialog: bool) -> defer.Deferred:
        """RFC 3261 §8.1.2 / §12.2.1.1: the top Route (loose routing), else in a dialog the remote
        target, else the configured core entry point."""
        routes = list_values(request.headers, "Route")
        if not routes and in_dialog:
            routes = [request.uri]
        if not routes:
            return self.core_targets()
        try:
            uri = parse_uri(name_addr_uri(routes[0]))
        except UriError as error:
            return defer.fail(error)
        if not isinstance(uri, SipUri):
            return defer.fail(UriError(f"next hop {routes[0]!r} is not a SIP URI"))
        return self.resolve_uri(uri)

    def _connect_and_send(self, targets: list[Target], request: Request, user: "_SubscribeUser") -> Any:
        if not targets:
            raise LookupError("no address for the next hop")

        def send(connection: Connection) -> None:
            add_via(request, connection.transport, self.addresses.core_sent_by, f"z9hG4bK.regev.{secrets.token_hex(8)}")
            self.proxy.send_request(request, connection, user)

        return self.connect(targets[0]).addCallback(send)

    def _not_sent(self, failure: Any, subscription: RegSubscription) -> None:
        self._failed(subscription, f"not sent: {failure.value}")

    def _answered(self, subscription: RegSubscription, response: Response, expires: int) -> None:
        if subscription.state is SubscriptionState.TERMINATED or expires == 0:
            return
        if response.status >= 300:
            self._failed(subscription, f"{response.status} {response.reason}")
            return
        refresh, subscription.confirmed = subscription.confirmed, True
        self._learn_dialog(subscription, response, response.headers.get_all("record-route"))
        granted = _expires(response.headers.get("expires"), expires)
        if granted == 0:
            self._end(subscription)
            return
        subscription.state = SubscriptionState.ACTIVE
        self._arm_refresh(subscription, granted)
        self._count("refreshed" if refresh else "subscribed")

    def _learn_dialog(self, subscription: RegSubscription, message: Request | Response, record_route: list[str]) -> None:
        """RFC 3261 §12.1.2: the first 2xx (or NOTIFY) fixes the remote tag, route set and target."""
        if subscription.remote_tag is None:
            try:
                tag = to_tag(message) if isinstance(message, Response) else from_tag(message)
            except HeaderError:
                tag = None
            subscription.remote_tag = tag
            values = [v for line in record_route for v in list_values_of(line)]
            if isinstance(message, Response):
                values.reverse()  # the UAC's route set is the Record-Route reversed
            subscription.route_set = tuple(values)
        contact = message.headers.get("contact")
        if contact:
            try:
                subscription.remote_target = str(parse_name_addr(contact).uri)
            except (UriError, ValueError):
                pass

    def _arm_refresh(self, subscription: RegSubscription, granted: int) -> None:
        _cancel(subscription._timer)
        subscription.expires_at = self.clock.seconds() + granted
        # TS 24.229 §5.2.3: 600 s before expiry when more than 1200 s were granted, else at half.
        delay = granted - 600 if granted > 1200 else granted / 2
        subscription._timer = self.clock.callLater(delay, self._refresh, subscription)

    def _refresh(self, subscription: RegSubscription) -> None:
        subscription._timer = None
        if subscription.state is SubscriptionState.ACTIVE:
            self._send(subscription, self.settings.expires)

    def _failed(self, subscription: RegSubscription, why: str) -> None:
        if subscription.state is SubscriptionState.TERMINATED:
            return  # an un-SUBSCRIBE (Expires: 0) that failed: nothing left to end
        log.info("reg subscription to {aor} failed ({why}); tried again at the next registration", aor=subscription.aor, why=why)
        self._count("subscribe_failed")
        self._end(subscription)

    def _end(self, subscription: RegSubscription) -> None:
        if subscription.state is not SubscriptionState.TERMINATED:
            subscription.state = SubscriptionState.TERMINATED
            self._count("terminated")
        _cancel(subscription._timer)
        subscription._timer = None
        if self._by_aor.get(subscription.aor) is subscription:
            del self._by_aor[subscription.aor]
        self._by_dialog.pop((subscription.call_id, subscription.local_tag), None)

    # --- NOTIFY --------------------------------------------------------------------------------

    def handle_notify(self, request: Request) -> Response:
        """A NOTIFY addressed to us by a trusted core source: the response to send."""
        try:
            ours = to_tag(request)
        except HeaderError:
            ours = None
        subscription = self._by_dialog.get((request.headers.get("call-id") or "", ours or ""))
        if subscription is None:
            self._count("notify_unknown")
            log.info("NOTIFY for no subscription of ours, Call-ID {call_id}", call_id=request.headers.get("call-id") or "")
            return make_response(request, 481, "Subscription Does Not Exist")
        event = (request.headers.get("event") or "").split(";", 1)[0].strip().lower()
        if event != "reg":
            self._count("notify_bad")
            return make_response(request, 489, "Bad Event")
        reginfo: Reginfo | None = None
        if request.body:
            content_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
            try:
                if content_type != REGINFO_TYPE:
                    raise ReginfoError(f"Content-Type {content_type or 'missing'}")
                reginfo = parse_reginfo(request.body)
            except ReginfoError as error:
                self._count("notify_bad")
                log.info("reg NOTIFY for {aor} refused: {why}, Call-ID {call_id}", aor=subscription.aor, why=error, call_id=subscription.call_id)
                return make_response(request, 400, "Bad Request (reginfo)")
        self._count("notify")
        if subscription.state is SubscriptionState.SUBSCRIBING:
            subscription.state = SubscriptionState.ACTIVE  # RFC 6665 §4.1.2.4: NOTIFY before the 2xx
        self._learn_dialog(subscription, request, request.headers.get_all("record-route"))
        state, reason = _subscription_state(request.headers.get("subscription-state"))
        if reginfo is not None and (subscription.version is None or reginfo.version > subscription.version or reginfo.state == "full"):
            subscription.version = reginfo.version
            self._apply(subscription, reginfo)
        if state == "terminated":
            log.info("reg subscription to {aor} terminated by the core ({reason})", aor=subscription.aor, reason=reason or "no reason")
            self._end(subscription)
            live = self.registrations.for_aor(subscription.aor)
            if live and reason in ("deactivated", "timeout"):
                self._subscribe(live[-1])  # RFC 6665 §4.1.3: subscribe again at once
        return make_response(request, 200)

    def _apply(self, subscription: RegSubscription, reginfo: Reginfo) -> None:
        for registration in reginfo.registrations:
            bindings = self.registrations.for_aor(subscription.aor)
            if not bindings:
                return
            if registration.state == "terminated" and not registration.contacts:
                for binding in bindings:
                    self.on_deregistered(binding, "terminated")
                continue
            for contact in registration.contacts:
                for binding in [b for b in bindings if _same_uri(b.contact, contact.uri)]:
                    if contact.state == "terminated":
                        event = contact.event if contact.event in ENDING_EVENTS else "terminated"
                        self.on_deregistered(binding, event)
                    elif contact.event == "shortened" and contact.expires is not None:
                        # TS 24.229 §5.2.5.2: the network shortened the registration.
                        log.info("registration of {aor} shortened to {expires} s", aor=binding.aor, expires=contact.expires)
                        self.registrations.reschedule(binding, contact.expires)
                        self._count("shortened")


class _SubscribeUser:
    """Client-transaction user of one SUBSCRIBE of ours."""

    def __init__(self, subscriber: RegEventSubscriber, subscription: RegSubscription, expires: int) -> None:
        self.subscriber = subscriber
        self.subscription = subscription
        self.expires = expires

    def response_received(self, response: Response, transaction: Any) -> None:
        if response.status >= 200:
            self.subscriber._answered(self.subscription, response, self.expires)

    def timed_out(self, transaction: Any) -> None:
        if self.expires:
            self.subscriber._failed(self.subscription, "timeout")

    def transport_failed(self, transaction: Any, reason: Any) -> None:
        if self.expires:
            self.subscriber._failed(self.subscription, f"transport: {reason}")


def list_values_of(line: str) -> list[str]:
    return [value.strip() for value in split_header_list(line) if value.strip()]


def _subscription_state(value: str | None) -> tuple[str, str | None]:
    """RFC 6665 §8.2.3: ``active;expires=…`` / ``terminated;reason=…`` → (state, reason)."""
    if not value:
        return "active", None
    state, _, rest = value.partition(";")
    reason = None
    for param in rest.split(";"):
        name, _, text = param.partition("=")
        if name.strip().lower() == "reason":
            reason = text.strip().lower()
    return state.strip().lower(), reason


def _expires(value: str | None, default: int) -> int:
    try:
        return max(0, int((value or "").strip()))
    except ValueError:
        return default


def _same_uri(contact: str, uri: str) -> bool:
    try:
        return uris_equal(parse_name_addr(contact).uri, parse_uri(uri))
    except (UriError, ValueError):
        return False


def _cancel(call: IDelayedCall | None) -> None:
    if call is not None and call.active():
        call.cancel()
