"""What follows the end of a WIC's registration (TS 24.229 §5.2.5).

* **Network-initiated de-registration** (a reg-event NOTIFY with the contact ``terminated``,
  ``epcscf.pcscf.reg_event``): the binding is removed; when no other binding remains on the
  WIC's flow, every call of the flow is released toward both sides (BYE, or CANCEL/503 while
  early) with ``Reason: SIP;cause=503;text="de-registered"`` (RFC 3326), its media ports
  freed, and after ``close_grace`` seconds the WebSocket is closed with a reason (RFC 6455
  §7.4.1, 1000): the grace lets the core's own NOTIFY reach a WIC that subscribed to its reg
  event (the S-CSCF tells the UE, the P-CSCF relays it).  If the core has not ended that
  subscription by then, the eP-CSCF does, with a final NOTIFY in the WIC's dialog
  (``epcscf.pcscf.wic_reg_subscriptions``), and closes the WebSocket when the WIC answers it
  (or ``close_grace`` later).
* **Expiry** (the WIC did not refresh in time, RFC 3261 §10.2.1): the same release of the
  flow's calls, with ``text="registration expired"``; the WebSocket stays for a new REGISTER.
* A WIC's own de-registration leaves its calls alone: they are its own business.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from epcscf.pcscf.flows import FlowTable
from epcscf.pcscf.registration import RegistrationBinding, Registrations
from epcscf.pcscf.wic_reg_subscriptions import WicRegSubscriptions, final_notify
from epcscf.sip.message import Response
from epcscf.sip.proxy_policy import ProxyOperations
from epcscf.sip.uri import UriError, parse_name_addr

log = Logger(namespace="epcscf.pcscf.deregistration")

NETWORK_PREFIX = "network_"
DEREGISTERED_REASON = 'SIP;cause=503;text="de-registered"'
EXPIRED_REASON = 'SIP;cause=503;text="registration expired"'
#: RFC 6455 §7.4.1: a normal closure, the reason saying which
CLOSE_CODE = 1000
CLOSE_REASON = "de-registered by the network"


class FlowCalls(Protocol):
    def release_flow(self, flow_id: str, reason_header: str, cause: str) -> int: ...


class SubscriptionOwner(Protocol):
    def binding_removed(self, binding: RegistrationBinding, network: bool) -> None: ...


class RegistrationEnd:
    """Releases what a registration held when it ends (see module docstring)."""

    def __init__(
        self,
        clock: IReactorTime,
        registrations: Registrations,
        flows: FlowTable,
        calls: Callable[[], FlowCalls | None],
        close_grace: float,
    ) -> None:
        self.clock = clock
        self.registrations = registrations
        self.flows = flows
        self.calls = calls
        self.close_grace = close_grace
        self.subscriptions: SubscriptionOwner | None = None
        #: the WICs' own reg subscriptions, and how to send a request of ours (set with the proxy)
        self.wic_subscriptions: WicRegSubscriptions | None = None
        self.proxy: ProxyOperations | None = None
        self.wic_sent_by = ""
        self._closing: dict[str, IDelayedCall] = {}

    def network_deregistered(self, binding: RegistrationBinding, event: str) -> None:
        """The core ended the binding (reg-event contact ``event``: expired, rejected…)."""
        if all(live is not binding for live in self.registrations.for_aor(binding.aor)):
            return  # already gone (an implicit set lists the same contact once per identity)
        log.info("network de-registration of {aor} on flow {flow}: {event}", aor=binding.aor, flow=binding.flow_id, event=event)
        self.registrations.remove(binding, NETWORK_PREFIX + event)

    def binding_removed(self, binding: RegistrationBinding, reason: str) -> None:
        network = reason.startswith(NETWORK_PREFIX)
        if self.subscriptions is not None:
            self.subscriptions.binding_removed(binding, network)
        if not network and reason != "expired":
            return
        if self.registrations.for_flow(binding.flow_id):
            return  # the WIC keeps another registration on this flow
        calls = self.calls()
        if calls is not None:
            header, cause = (DEREGISTERED_REASON, "de-registered by the network") if network else (EXPIRED_REASON, "registration expired")
            released = calls.release_flow(binding.flow_id, header, cause)
            if released:
                log.info("{count} call(s) on flow {flow} released: {cause}", count=released, flow=binding.flow_id, cause=cause)
        if network and binding.flow_id not in self._closing:
            event = reason[len(NETWORK_PREFIX):]
            self._closing[binding.flow_id] = self.clock.callLater(
                self.close_grace, self._tell_and_close, binding.flow_id, _contact_uri(binding.contact), event
            )

    def _tell_and_close(self, flow_id: str, contact_uri: str, event: str) -> None:
        self._closing.pop(flow_id, None)
        if self.registrations.for_flow(flow_id):
            return  # registered again meanwhile
        flow = self.flows.find(flow_id)
        if flow is None or not flow.open:
            return
        live = self.wic_subscriptions.live_on(flow_id) if self.wic_subscriptions is not None else []
        if not live or self.proxy is None:
            self._close_flow(flow_id)
            return
        connection = flow.connection
        for subscription in live:
            notify = final_notify(subscription, contact_uri, event, connection.transport, self.wic_sent_by)
            log.info("ending the reg subscription of the WIC on flow {flow}, Call-ID {call_id}", flow=flow_id, call_id=subscription.call_id)
            self.proxy.send_request(notify, connection, _CloseWhenAnswered(self, flow_id))
        self._closing[flow_id] = self.clock.callLater(self.close_grace, self._close_flow, flow_id)

    def _close_flow(self, flow_id: str) -> None:
        timer = self._closing.pop(flow_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        if self.registrations.for_flow(flow_id):
            return
        flow = self.flows.find(flow_id)
        if flow is not None and flow.open:
            log.info("flow {flow} closed: {reason}", flow=flow_id, reason=CLOSE_REASON)
            flow.connection.close(CLOSE_CODE, CLOSE_REASON)

    def close(self) -> None:
        for call in self._closing.values():
            if call.active():
                call.cancel()
        self._closing.clear()


class _CloseWhenAnswered:
    """Client-transaction user of our final NOTIFY to a WIC: its answer lets the flow close."""

    def __init__(self, end: RegistrationEnd, flow_id: str) -> None:
        self.end = end
        self.flow_id = flow_id

    def response_received(self, response: Response, transaction: Any) -> None:
        if response.status >= 200:
            self.end._close_flow(self.flow_id)

    def timed_out(self, transaction: Any) -> None:
        self.end._close_flow(self.flow_id)

    def transport_failed(self, transaction: Any, reason: Any) -> None:
        self.end._close_flow(self.flow_id)


def _contact_uri(contact: str) -> str:
    try:
        return str(parse_name_addr(contact).uri)
    except (UriError, ValueError):
        return contact.strip()
