"""Call transfer (REFER, RFC 3515) for a non-SIP WIC's user agent, as the Janus SIP plugin's
``transfer`` request offers it (``janus_sip.c``):

* ``transfer`` with a ``uri``: a REFER in the confirmed call's dialog, ``Refer-To: <uri>`` (a
  blind transfer); with ``replace``, the Call-ID of a confirmed call on another handle of the
  same Janus session, the Refer-To carries that dialog as an escaped ``Replaces`` header (RFC
  3891 §5: an attended transfer).  The WIC gets ``transferring`` at once; a refused REFER is
  logged (the plugin reports it no more than that).
* The transferee reports progress in NOTIFYs of the implicit ``refer`` subscription, which
  shares the call's dialog (RFC 3515 §2.4.4): each is answered 200 and, when it has a body (a
  ``message/sipfrag`` status line), becomes a ``notify`` event with the plugin's fields
  (``notify``, ``substate``, ``content-type``, ``content``).  A NOTIFY outside our dialog gets
  481, one for another event package 489 Bad Event (RFC 6665 §4.1.3).

* A REFER from the far end in the confirmed call's dialog (the WIC is the transferee) is
  answered 202 and followed by the initial NOTIFY (``SIP/2.0 100 Trying``, RFC 3515 §2.4.4);
  the WIC gets the plugin's ``transfer`` event (``refer_id``, ``refer_to``, ``referred_by``,
  ``replaces``).  Nothing is called on its behalf: a ``call`` with that ``refer_id`` (from any
  handle of the session, as the plugin's helpers do) carries ``Referred-By`` (RFC 3892) and the
  Refer-To's ``Replaces``, and its outcome goes back in the final NOTIFY (``Subscription-State:
  terminated``, RFC 3515 §2.4.5); a ``decline`` with the ``refer_id`` reports 603.  A REFER
  outside our dialog gets 481, one without exactly one usable Refer-To 400.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import quote, unquote

from twisted.logger import Logger

from epcscf.pcscf.nonsip_messages import body_text
from epcscf.pcscf.nonsip_register import TransactionOutcome, UaEvent
from epcscf.sip.headers import to_tag
from epcscf.sip.message import Request, Response, make_response, new_tag
from epcscf.sip.proxy_rules import list_values, name_addr_uri
from epcscf.sip.transaction import ClientTransaction, ServerTransaction

__all__ = ["Referral", "Transfers", "notify_event", "parse_refer_to", "referral_headers", "replaces_value", "subscription_state"]

log = Logger(namespace="epcscf.pcscf.nonsip")


class TransferUa(Protocol):
    """What transfers need of the non-SIP UA (``epcscf.pcscf.nonsip_ua``)."""

    emit: Callable[[UaEvent], None]

    def contact(self) -> str: ...

    def send(self, request: Request, user: Any) -> ClientTransaction: ...

    def respond(self, transaction: ServerTransaction, response: Response) -> None: ...

    def in_dialog_request(self, method: str) -> Request | None: ...

    def dialog_call_id(self) -> str | None: ...


#: transfers one UA holds open at once (each waits for the WIC's call or decline)
MAX_REFERRALS = 4


@dataclass(frozen=True)
class Referral:
    """A REFER the WIC was told of, until its outcome is reported."""

    refer_id: int
    refer_to: str  # the URI to call, without its headers
    referred_by: str  # RFC 3892: the Referred-By the REFER carried, else its From
    replaces: str | None  # RFC 3891: the Refer-To's Replaces header (an attended transfer)


def parse_refer_to(value: str) -> tuple[str, str | None] | None:
    """RFC 3515 §2.1 Refer-To → (SIP URI without headers, its unescaped Replaces); None when it
    is not a sip:/sips: URI."""
    uri = name_addr_uri(value).strip()
    target, _, headers = uri.partition("?")
    if not target.lower().startswith(("sip:", "sips:")) or any(c in target for c in "<>\"\r\n "):
        return None
    replaces = None
    for header in headers.split("&") if headers else ():
        name, _, text = header.partition("=")
        if name.lower() == "replaces" and text:
            replaces = unquote(text)
    return target, replaces


def referral_headers(referral: Referral) -> tuple[tuple[str, str], ...]:
    """What the INVITE made for ``referral`` carries: Referred-By (RFC 3892 §3) and, for an
    attended transfer, the Replaces of the Refer-To (RFC 3891 §5) — the network's, not the page's."""
    headers = (("Referred-By", referral.referred_by),)
    return headers + ((("Replaces", referral.replaces),) if referral.replaces else ())


def replaces_value(call_id: str, local_tag: str, remote_tag: str) -> str:
    """RFC 3891 §3 Replaces for one of our dialogs, as its other party (the transfer target,
    who receives the INVITE with it) matches it: its local tag is our remote one (``to-tag``)."""
    return f"{call_id};to-tag={remote_tag};from-tag={local_tag}"


class Transfers:
    """The REFER/NOTIFY side of one UA."""

    def __init__(self, ua: TransferUa) -> None:
        self._ua = ua
        self._referrals: dict[int, Referral] = {}

    def referral(self, refer_id: Any) -> Referral | None:
        return self._referrals.get(refer_id) if isinstance(refer_id, int) else None

    def refer(self, target: str, replaces: str | None = None) -> bool:
        """REFER the far end of the confirmed call to ``target``; False without a call."""
        ua = self._ua
        request = ua.in_dialog_request("REFER")
        if request is None:
            return False
        # RFC 3515 §2.1: the Refer-To URI; RFC 3891 §5: Replaces as an escaped URI header
        headers = "" if replaces is None else f"?Replaces={quote(replaces, safe='')}"
        request.headers.add("Refer-To", f"<{target}{headers}>")
        request.headers.add("Contact", ua.contact())  # RFC 3515 §2.4.1: REFER creates a subscription
        call_id = request.call_id
        ua.send(request, TransactionOutcome(lambda response: self._refer_answered(call_id, response)))
        ua.emit(UaEvent({"event": "transferring"}, call_id=call_id))
        return True

    @staticmethod
    def _refer_answered(call_id: str | None, response: Response) -> None:
        if response.status >= 300:
            log.info("non-SIP UA: REFER in {call_id} refused: {status}", call_id=call_id, status=response.status)

    def refer_received(self, request: Request, transaction: ServerTransaction) -> None:
        """RFC 3515 §2.4.2: the far end asks the WIC to call someone (see the module doc)."""
        ua = self._ua
        if request.call_id is None or request.call_id != ua.dialog_call_id() or not to_tag(request):
            ua.respond(transaction, make_response(request, 481, to_tag=new_tag()))
            return
        values = list_values(request.headers, "Refer-To")
        parsed = parse_refer_to(values[0]) if len(values) == 1 else None
        if parsed is None:
            ua.respond(transaction, make_response(request, 400, "Bad Request (one sip: Refer-To, RFC 3515 §2.4.1)"))
            return
        if len(self._referrals) >= MAX_REFERRALS:
            ua.respond(transaction, make_response(request, 503, "Service Unavailable (transfers pending)"))
            return
        ua.respond(transaction, make_response(request, 202))
        target, replaces = parsed
        referred_by = request.headers.get("Referred-By") or f"<{name_addr_uri(request.headers.get('From') or '')}>"
        referral = Referral(secrets.randbelow(2**31 - 1) + 1, target, referred_by, replaces)
        self._referrals[referral.refer_id] = referral
        self._notify(request.call_id, "SIP/2.0 100 Trying", final=False)  # RFC 3515 §2.4.4
        result: dict[str, Any] = {"event": "transfer", "refer_id": referral.refer_id, "refer_to": target,
                                  "referred_by": name_addr_uri(referred_by)}
        if replaces:
            result["replaces"] = replaces.split(";")[0]  # as the plugin: the Call-ID to replace
        ua.emit(UaEvent(result, call_id=request.call_id))

    def report(self, refer_id: int, status: int, reason: str) -> None:
        """The outcome of the call made for ``refer_id``: the final NOTIFY (RFC 3515 §2.4.5), if
        the call with the transferor is still there to carry it."""
        if self._referrals.pop(refer_id, None) is not None:
            call_id = self._ua.dialog_call_id()
            if call_id is not None:
                self._notify(call_id, f"SIP/2.0 {status} {reason}".strip(), final=True)

    def _notify(self, call_id: str | None, sipfrag: str, final: bool) -> None:
        ua = self._ua
        request = ua.in_dialog_request("NOTIFY")
        if request is None:
            return
        request.headers.add("Contact", ua.contact())
        request.headers.add("Event", "refer")
        state = "terminated;reason=noresource" if final else "active;expires=60"
        request.headers.add("Subscription-State", state)
        request.headers.add("Content-Type", "message/sipfrag;version=2.0")
        request.body = f"{sipfrag}\r\n".encode("utf-8")
        ua.send(request, TransactionOutcome(lambda response: None))

    def notify_received(self, request: Request, transaction: ServerTransaction) -> None:
        ua = self._ua
        if request.call_id is None or request.call_id != ua.dialog_call_id() or not to_tag(request):
            ua.respond(transaction, make_response(request, 481, to_tag=new_tag()))
            return
        event = (request.headers.get("Event") or "").split(";")[0].strip()
        if event.lower() != "refer":
            # RFC 6665 §4.1.3: a package we never subscribed to in this dialog
            ua.respond(transaction, make_response(request, 489))
            return
        ua.respond(transaction, make_response(request, 200))
        if request.body:  # as the plugin: one without a body tells the page nothing
            ua.emit(notify_event(request, event))


def subscription_state(request: Request) -> str:
    """The state of a NOTIFY's Subscription-State (RFC 6665 §8.2.3), lower case."""
    return (request.headers.get("Subscription-State") or "").split(";")[0].strip().lower()


def notify_event(request: Request, event: str) -> UaEvent:
    """janus_sip.c's ``notify`` event for a NOTIFY of package ``event``."""
    result = {"event": "notify", "notify": event, "substate": subscription_state(request),
              "content-type": request.headers.get("Content-Type") or "", "content": body_text(request.body)}
    return UaEvent(result, call_id=request.call_id)
