"""The WICs' own reg-event subscriptions, as they pass through the eP-CSCF (TS 24.229 §5.2.5.1).

A WIC may subscribe to its own registration state (TS 24.229 §5.1.1.3, the Gm option of
TS 24.371 §7.2.1); that dialog is between the WIC and the core's notifier, and the eP-CSCF only
forwards it.  When the network ends the WIC's registration, the core normally NOTIFYs the WIC
itself.  If it has not done so when the eP-CSCF closes the WebSocket (``close_grace`` after
the de-registration), the eP-CSCF tells the WIC in that dialog before closing: a NOTIFY with
``Subscription-State: terminated;reason=rejected`` (RFC 6665 §4.2.2; ``rejected``: the
subscription can no longer be served) and a full reginfo (RFC 3680 §5.3) saying the contact
was ended, with the CSeq and ``version`` following the last ones the core used (we saw them
pass: RFC 3261 §12.2.1.1 needs the CSeq to grow, RFC 3680 §4.1 the version).

What is kept per subscription: its dialog identifiers and the WIC's target (from the
SUBSCRIBE and its 2xx), and the highest CSeq / version and whether the core ended it (from
each NOTIFY toward the WIC).  It is forgotten with its flow.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from epcscf.pcscf.reginfo import REGINFO_NAMESPACE, REGINFO_TYPE, ReginfoError, parse_reginfo
from epcscf.sip.headers import HeaderError, cseq, from_address, to_tag
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_rules import add_via
from epcscf.sip.uri import UriError, parse_name_addr


def is_reg_event(message: Request) -> bool:
    return (message.headers.get("event") or "").split(";", 1)[0].strip().lower() == "reg"


@dataclass(eq=False)
class WicRegSubscription:
    flow_id: str
    call_id: str
    wic_tag: str  # the From tag of the WIC's SUBSCRIBE
    wic_uri: str  # its From URI
    aor: str  # its To URI: the IMPU it watches
    target: str | None = None  # the WIC's Contact URI
    notifier_tag: str | None = None  # the To tag of the 2xx (the From tag of NOTIFYs)
    cseq: int = 0  # the highest NOTIFY CSeq seen from the notifier
    version: int = -1  # the highest reginfo version seen
    terminated: bool = False


class WicRegSubscriptions:
    """Every WIC reg-event subscription on open flows (see module docstring)."""

    def __init__(self) -> None:
        self._by_flow: dict[str, dict[str, WicRegSubscription]] = {}

    def __len__(self) -> int:
        return sum(len(on_flow) for on_flow in self._by_flow.values())

    def subscribe_answered(self, subscribe: Request, response: Response, flow_id: str) -> None:
        """A 2xx to a WIC's SUBSCRIBE, on its way to the WIC."""
        if not is_reg_event(subscribe):
            return
        try:
            wic = from_address(subscribe)
            notifier_tag = to_tag(response)
            contact = parse_name_addr(subscribe.headers.get("contact") or "")
        except (HeaderError, UriError, ValueError):
            return
        to = subscribe.headers.get("to") or ""
        if wic is None or wic.tag is None:
            return
        try:
            aor = str(parse_name_addr(to).uri)
        except (UriError, ValueError):
            return
        subscription = self._find_or_add(flow_id, subscribe.headers.get("call-id") or "", wic.tag, str(wic.uri), aor)
        subscription.target = str(contact.uri)
        subscription.notifier_tag = subscription.notifier_tag or notifier_tag

    def notify_passing(self, notify: Request, flow_id: str) -> None:
        """A NOTIFY from the core on its way to the WIC on ``flow_id``."""
        if not is_reg_event(notify):
            return
        subscription = self._by_flow.get(flow_id, {}).get(notify.headers.get("call-id") or "")
        if subscription is None:
            return
        number = cseq(notify)
        if number is not None:
            subscription.cseq = max(subscription.cseq, number.number)
        if notify.body:
            try:
                subscription.version = max(subscription.version, parse_reginfo(notify.body).version)
            except ReginfoError:
                pass
        state = (notify.headers.get("subscription-state") or "").split(";", 1)[0].strip().lower()
        if state == "terminated":
            subscription.terminated = True

    def flow_closed(self, flow_id: str) -> None:
        self._by_flow.pop(flow_id, None)

    def live_on(self, flow_id: str) -> list[WicRegSubscription]:
        """The subscriptions on ``flow_id`` the notifier has not ended (and can be written to)."""
        return [
            s for s in self._by_flow.get(flow_id, {}).values()
            if not s.terminated and s.target is not None and s.notifier_tag is not None
        ]

    def _find_or_add(self, flow_id: str, call_id: str, wic_tag: str, wic_uri: str, aor: str) -> WicRegSubscription:
        on_flow = self._by_flow.setdefault(flow_id, {})
        subscription = on_flow.get(call_id)
        if subscription is None or subscription.wic_tag != wic_tag:
            subscription = on_flow[call_id] = WicRegSubscription(flow_id, call_id, wic_tag, wic_uri, aor)
        return subscription


def final_notify(subscription: WicRegSubscription, contact_uri: str, event: str, transport: str, sent_by: str) -> Request:
    """The NOTIFY that ends ``subscription`` with the registration (see module docstring)."""
    assert subscription.target is not None
    subscription.cseq += 1
    subscription.version += 1
    subscription.terminated = True
    notify = Request("NOTIFY", subscription.target)
    headers = notify.headers
    headers.add("Max-Forwards", "70")
    headers.add("From", f"<{subscription.aor}>;tag={subscription.notifier_tag}")
    headers.add("To", f"<{subscription.wic_uri}>;tag={subscription.wic_tag}")
    headers.add("Call-ID", subscription.call_id)
    headers.add("CSeq", f"{subscription.cseq} NOTIFY")
    headers.add("Event", "reg")
    headers.add("Subscription-State", "terminated;reason=rejected")
    headers.add("Content-Type", REGINFO_TYPE)
    notify.body = _reginfo(subscription, contact_uri, event)
    add_via(notify, transport, sent_by, f"z9hG4bK.regev.{secrets.token_hex(8)}")
    return notify


def _reginfo(subscription: WicRegSubscription, contact_uri: str, event: str) -> bytes:
    root = ElementTree.Element("reginfo", {"xmlns": REGINFO_NAMESPACE, "version": str(subscription.version), "state": "full"})
    registration = ElementTree.SubElement(root, "registration", {"aor": subscription.aor, "id": "a1", "state": "terminated"})
    contact = ElementTree.SubElement(registration, "contact", {"id": "c1", "state": "terminated", "event": event})
    ElementTree.SubElement(contact, "uri").text = contact_uri
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8")
