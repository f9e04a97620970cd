"""MESSAGE (RFC 3428) and INFO (RFC 6086) for a non-SIP WIC's user agent, as the Janus SIP
plugin offers them to its page (``janus_sip.c``: requests ``message`` and ``info``).

* ``message`` with a ``uri``: a MESSAGE outside any dialog (RFC 3428 §4), once registered, with
  the Call-ID the WIC chose or a fresh one; without a ``uri``: in the confirmed call's dialog
  (RFC 3428 §4: allowed, though not a session refresh).  The WIC gets ``messagesent`` at once
  and ``messagedelivery`` with the final status when it arrives (a timeout is 408).
* ``info``: in the confirmed call's dialog only (RFC 6086 §4.2.1); ``infosent`` at once, the
  answer is not reported (as the plugin, whose FIXME says so).
* Incoming MESSAGE, in or out of a dialog, and INFO in our dialog become ``message`` / ``info``
  events and are answered 200 (the plugin's sofia stack answers them itself).  An INFO outside
  our dialog gets 481 (RFC 6086 §4.2.2); a request with no body has nothing to deliver: 400.

The WIC's text goes into the body only: the Content-Type it names is checked as a media type
(RFC 3261 §20.15) and no header of its choosing is added (the plugin's ``headers`` is refused
by the gateway), so a WIC can write nothing into our headers.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.logger import Logger

from epcscf.pcscf.call_model import TRICKLE_SDPFRAG
from epcscf.pcscf.nonsip_register import Credentials, TransactionOutcome, UaEvent, identity_name_addr
from epcscf.sip.headers import to_tag
from epcscf.sip.message import Request, Response, make_response, new_tag
from epcscf.sip.proxy_rules import name_addr_uri
from epcscf.sip.transaction import ClientTransaction, ServerTransaction
from epcscf.sip.uri import SipUri, UriError, parse_uri

__all__ = ["CALL_ID_RE", "MAX_CONTENT", "Messaging", "TextBody", "body_text", "is_sip_uri", "media_type_ok", "sender_fields"]

log = Logger(namespace="epcscf.pcscf.nonsip")

#: the body of one MESSAGE/INFO a WIC may send (RFC 3428 §7 wants pager-mode messages short;
#: this is what one Janus frame may usefully carry, far under [ws] max_message_size)
MAX_CONTENT = 16384
#: RFC 3428 §5 / janus_sip.c: a MESSAGE without a content type is text/plain
DEFAULT_MESSAGE_TYPE = "text/plain"

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# RFC 3261 §20.15 media-type: type "/" subtype *(SEMI m-parameter), a parameter value a token
# or a quoted-string without line breaks
_MEDIA_TYPE = re.compile(rf'{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*', re.ASCII)


def media_type_ok(text: str) -> bool:
    """Whether ``text`` may be written as a Content-Type header value as it is."""
    return len(text) <= 128 and _MEDIA_TYPE.fullmatch(text) is not None


@dataclass(frozen=True)
class TextBody:
    """What the WIC sends: a checked media type and its text (UTF-8 on the wire)."""

    content_type: str
    content: str


class MessagingUa(Protocol):
    """What messaging needs of the non-SIP UA (``epcscf.pcscf.nonsip_ua``)."""

    emit: Callable[[UaEvent], None]

    @property
    def credentials(self) -> Credentials | None: ...

    def via(self) -> str: ...

    def send(self, request: Request, user: Any) -> ClientTransaction: ...

    def respond(self, transaction: ServerTransaction, response: Response) -> None: ...

    def in_dialog_request(self, method: str) -> Request | None:
        """A request in the confirmed call's dialog (RFC 3261 §12.2.1.1), None without one."""

    def dialog_call_id(self) -> str | None:
        """The Call-ID of the confirmed call, None without one."""


class Messaging:
    """The MESSAGE/INFO side of one UA."""

    def __init__(self, ua: MessagingUa) -> None:
        self._ua = ua

    # --- what the WIC sends ----------------------------------------------------------------------

    def send_message(self, body: TextBody, uri: str | None, call_id: str | None) -> str | None:
        """Send a MESSAGE (to ``uri`` outside a dialog, else in the call's); its Call-ID, or
        None when in-dialog and there is no confirmed call."""
        ua = self._ua
        if uri is None:
            request = ua.in_dialog_request("MESSAGE")
            if request is None:
                return None
        else:
            credentials = ua.credentials
            assert credentials is not None
            # RFC 3428 §4: a MESSAGE outside a dialog is built as any request (RFC 3261 §8.1.1)
            request = Request("MESSAGE", uri)
            request.headers.add("Via", ua.via())
            request.headers.add("Max-Forwards", "70")
            request.headers.add("From", f"{identity_name_addr(credentials)};tag={new_tag()}")
            request.headers.add("To", f"<{uri}>")
            request.headers.add("Call-ID", call_id or secrets.token_hex(12))
            request.headers.add("CSeq", "1 MESSAGE")
        request.headers.add("Content-Type", body.content_type)
        request.body = body.content.encode("utf-8")
        sent_id = request.call_id or ""
        ua.send(request, TransactionOutcome(lambda response: self._delivered(sent_id, response)))
        ua.emit(UaEvent({"event": "messagesent", "call_id": sent_id}, call_id=sent_id))
        return sent_id

    def _delivered(self, call_id: str, response: Response) -> None:
        if response.status < 200:
            return
        if response.status >= 300:
            log.info("non-SIP UA: MESSAGE {call_id} not delivered: {status}", call_id=call_id, status=response.status)
        self._ua.emit(UaEvent({"event": "messagedelivery", "code": response.status, "reason": response.reason}, call_id=call_id))

    def send_info(self, body: TextBody) -> bool:
        """An INFO in the confirmed call's dialog; False without one."""
        ua = self._ua
        request = ua.in_dialog_request("INFO")
        if request is None:
            return False
        request.headers.add("Content-Type", body.content_type)
        request.body = body.content.encode("utf-8")
        call_id = request.call_id
        ua.send(request, TransactionOutcome(lambda response: self._info_answered(call_id, response)))
        ua.emit(UaEvent({"event": "infosent"}, call_id=call_id))
        return True

    def send_trickle(self, fragment: str) -> bool:
        """RFC 8840 §5 (Info-Package ``trickle-ice``): candidates the browser found after its
        description went out, in the confirmed call's dialog; the P-CSCF hands them to the
        media engine and sends nothing on to the core.  False without a confirmed call."""
        ua = self._ua
        request = ua.in_dialog_request("INFO")
        if request is None:
            return False
        request.headers.add("Info-Package", "trickle-ice")
        request.headers.add("Content-Type", TRICKLE_SDPFRAG)
        request.headers.add("Content-Disposition", "info")  # RFC 8840 §5.2
        request.body = fragment.encode("utf-8")
        call_id = request.call_id
        ua.send(request, TransactionOutcome(lambda response: self._info_answered(call_id, response)))
        return True

    @staticmethod
    def _info_answered(call_id: str | None, response: Response) -> None:
        if response.status >= 300:
            # RFC 6086 §4.2.2: a failed INFO leaves the dialog and session as they were
            log.info("non-SIP UA: INFO in {call_id} refused: {status}", call_id=call_id, status=response.status)

    # --- what the network sends ------------------------------------------------------------------

    def message_received(self, request: Request, transaction: ServerTransaction) -> None:
        """RFC 3428 §7: a 200 once the message is handed to the WIC (the ``message`` event)."""
        if self._refused_without_body(request, transaction):
            return
        result = {"event": "message", **sender_fields(request.headers.get("From") or "")}
        result["content_type"] = request.headers.get("Content-Type") or DEFAULT_MESSAGE_TYPE
        result["content"] = body_text(request.body)
        self._ua.respond(transaction, make_response(request, 200, to_tag=new_tag()))
        self._ua.emit(UaEvent(result, call_id=request.call_id))

    def info_received(self, request: Request, transaction: ServerTransaction) -> None:
        """RFC 6086 §4.2.2: INFO only in our confirmed dialog (else 481), answered 200."""
        if request.call_id is None or request.call_id != self._ua.dialog_call_id() or not to_tag(request):
            self._ua.respond(transaction, make_response(request, 481, to_tag=new_tag()))
            return
        if self._refused_without_body(request, transaction):
            return
        result = {"event": "info", **sender_fields(request.headers.get("From") or "")}
        result["type"] = request.headers.get("Content-Type") or ""
        result["content"] = body_text(request.body)
        self._ua.respond(transaction, make_response(request, 200))
        self._ua.emit(UaEvent(result, call_id=request.call_id))

    def _refused_without_body(self, request: Request, transaction: ServerTransaction) -> bool:
        if request.body and request.headers.get("Content-Type"):
            return False
        log.info("non-SIP UA: {method} {call_id} without a body refused", method=request.method, call_id=request.call_id)
        answer = make_response(request, 400, "Bad Request (no body to deliver)", to_tag=new_tag())
        self._ua.respond(transaction, answer)
        return True


def sender_fields(name_addr: str, key: str = "sender") -> dict[str, str]:
    """janus_sip.c's ``sender`` (or ``username``: the URI of a From) and ``displayname``
    (its display name, when there is one)."""
    fields = {key: name_addr_uri(name_addr) if name_addr else ""}
    display = name_addr.split("<")[0].strip().strip('"') if "<" in name_addr else ""
    if display:
        fields["displayname"] = display
    return fields


def body_text(body: bytes) -> str:
    return body.decode("utf-8", errors="replace")


#: RFC 3261 §25.1 callid = word [ "@" word ] (what a WIC may choose as its MESSAGE's Call-ID)
CALL_ID_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]{1,64}(@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]{1,64})?", re.ASCII)


def is_sip_uri(text: str, needs_user: bool) -> bool:
    """Whether ``text`` is a sip:/sips: URI (with a user part if ``needs_user``), as the Janus
    SIP plugin requires of ``username`` and ``uri``."""
    try:
        uri = parse_uri(text)
    except UriError:
        return False
    return isinstance(uri, SipUri) and (bool(uri.user) or not needs_user)
