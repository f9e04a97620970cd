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

A REFER sent to the WIC is still answered 405 by the UA: following it needs a second call on
another handle (Janus's helpers), which this subset does not have.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol
from urllib.parse import quote

from twisted.logger import Logger

from epcscf.pcscf.nonsip_messages import body_text
from epcscf.pcscf.nonsip_register import TransactionOutcome, UaEvent
from epcscf.sip.headers import to_tag
from epcscf.sip.message import Request, Response, make_response, new_tag
from epcscf.sip.transaction import ClientTransaction, ServerTransaction

__all__ = ["Transfers", "notify_event", "replaces_value", "subscription_state"]

log = Logger(namespace="epcscf.pcscf.nonsip")


class TransferUa(Protocol):
    """What transfers need of the non-SIP UA (``epcscf.pcscf.nonsip_ua``)."""

    emit: Callable[[UaEvent], None]

    def contact(self) -> str: ...

    def send(self, request: Request, user: Any) -> ClientTransaction: ...

    def respond(self, transaction: ServerTransaction, response: Response) -> None: ...

    def in_dialog_request(self, method: str) -> Request | None: ...

    def dialog_call_id(self) -> str | None: ...


def replaces_value(call_id: str, local_tag: str, remote_tag: str) -> str:
    """RFC 3891 §3 Replaces for one of our dialogs, as its other party (the transfer target,
    who receives the INVITE with it) matches it: its local tag is our remote one (``to-tag``)."""
    return f"{call_id};to-tag={remote_tag};from-tag={local_tag}"


class Transfers:
    """The REFER/NOTIFY side of one UA."""

    def __init__(self, ua: TransferUa) -> None:
        self._ua = ua

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
