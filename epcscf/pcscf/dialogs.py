"""What the eP-CSCF remembers of an INVITE dialog it proxies, so it can end it from the middle.

Theory of operation
-------------------
We are a proxy, not a UA: normally both ends send their own BYE.  But when the WebSocket
flow dies (RFC 5626 §5.3.1, TS 23.228 §5.10), ICE consent is lost (RFC 7675 §5.1) or the
operator releases a call, the eP-CSCF must end the dialog itself and send a BYE toward one
or both parties *as if it came from the other party*.  For that it needs,
per party:

* the party's From/To header value (with its tag) — a request from party X carries
  ``From: <X>`` and ``To: <Y>`` (RFC 3261 §12.2.1.1);
* the party's remote target (the Contact it sent, RFC 3261 §12.1.1/§12.1.2);
* the highest CSeq number the party has sent in the dialog: our BYE on its behalf uses
  one more (RFC 3261 §12.2.1.1: CSeq numbers of a UA's requests increase);
* the route set from us toward the party, read from the Record-Route list of the
  dialog-forming response (RFC 3261 §12.1.1, §16.12.1): our own two entries (double
  Record-Route, RFC 5658 §4) split the list; the entries above ours were added by
  proxies on the callee's side (nearest to us is the lowest one), the entries below
  ours by proxies on the caller's side (nearest first, as listed).

``Dialog`` only builds messages; sending them (and absorbing the responses) is the call
manager's job.  The WIC side is reached directly on its flow, so its route set is
normally empty.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from typing import Callable

from epcscf.sip.headers import HeaderError, address_facts, cseq
from epcscf.sip.message import Request, Response
from epcscf.sip.params import memoised_by_text
from epcscf.sip.proxy_rules import BRANCH_PREFIX, DEFAULT_MAX_FORWARDS, add_via, apply_strict_route, list_values, name_addr_uri
from epcscf.sip.uri import SipUri, UriError, parse_name_addr, shared_uri


class Side(enum.Enum):
    """The two parties of a call as the eP-CSCF sees them."""

    __hash__ = object.__hash__  # identity: members are singletons (Enum's hash is Python code)

    WIC = "wic"
    CORE = "core"

    @property
    def other(self) -> "Side":
        return SIDE_CORE if self is SIDE_WIC else SIDE_WIC


# Members read on every call, as module constants: in Python 3.11 every attribute read on an
# Enum class goes through ``EnumType.__getattr__``'s slow hook (``transaction_machine.TERMINATED``).
SIDE_WIC, SIDE_CORE = Side.WIC, Side.CORE


class DialogError(Exception):
    """Not enough is known of the dialog to build the request (e.g. no remote target yet)."""


@dataclass
class Party:
    """One end of the dialog."""

    address: str  # the From/To header value naming this party, tag included once known
    tag: str | None = None
    target: str | None = None  # Contact URI (remote target, RFC 3261 §12.1)
    cseq: int = 0  # highest CSeq number this party has sent in the dialog
    route: list[str] = field(default_factory=list)  # Route values from us toward this party, nearest first


def _contact_uri(message: Request | Response) -> str | None:
    values = list_values(message.headers, "Contact")
    if not values:
        return None
    return name_addr_uri(values[0])  # the URI text, or the text between < > when it does not parse


def _tag_of(value: str) -> str | None:
    """The tag of a From/To text, None when it has none or does not parse.

    Read through the SIP layer's ``address_facts``, which the transaction layer has already
    memoised for this very text (its from-tag/to-tag views of the same message), rather than by
    a parse and copy of the whole name-addr per new dialog.  Its tag is the parser's (the same
    "last tag counts" reading) and its problem is set exactly when ``parse_name_addr`` raises;
    an address without a tag (or with an empty one) is left to the parser's own reading."""
    problem, tag = address_facts(value)
    if problem is not None:
        return None
    return tag if tag is not None else _parsed_tag_of(value)


@memoised_by_text  # text → text: each party's From/To recur in every message of the dialog
def _parsed_tag_of(value: str) -> str | None:
    try:
        return parse_name_addr(value).tag
    except UriError:
        return None


def new_branch(kind: str) -> str:
    """RFC 3261 §8.1.1.7: a fresh branch with the magic cookie; our prefix marks it as ours."""
    return f"{BRANCH_PREFIX}{kind}.{secrets.token_hex(8)}"


@dataclass
class Dialog:
    """Both parties of one INVITE dialog (see module docstring)."""

    call_id: str
    caller: Side  # who sent the initial INVITE
    wic: Party
    core: Party
    invite_cseq: int = 1
    confirmed: bool = False
    #: what the WIC's subsequent requests carry in Route behind our own leading entries
    #: (RFC 3261 §12.1.1/§12.1.2 route set, TS 24.229 §5.2.6.3: checked against it)
    wic_route_behind_us: list[str] = field(default_factory=list)

    @classmethod
    def from_invite(cls, invite: Request, caller: Side) -> "Dialog":
        """The caller's half from the initial INVITE (as received, before we rewrote it)."""
        from_value = invite.headers.get("From") or ""
        to_value = invite.headers.get("To") or ""
        sequence = _cseq_number(invite)
        calling = Party(from_value, _tag_of(from_value), _contact_uri(invite), sequence)
        called = Party(to_value, None)
        wic, core = (calling, called) if caller is SIDE_WIC else (called, calling)
        return cls(invite.headers.get("Call-ID") or "", caller, wic, core, sequence)

    def party(self, side: Side) -> Party:
        return self.wic if side is SIDE_WIC else self.core

    @property
    def callee(self) -> Side:
        return self.caller.other

    def matches(self, message: Request | Response) -> bool:
        """True when the message's tags are this dialog's (another fork's 2xx/BYE is not)."""
        if not self.confirmed:
            return True
        tags = {_tag_of(message.headers.get("From") or ""), _tag_of(message.headers.get("To") or "")}
        return tags == {self.wic.tag, self.core.tag}

    def confirm(self, response: Response, is_own_uri: Callable[[str], bool]) -> None:
        """The callee's half and both route sets from the dialog-forming 2xx (RFC 3261 §12.1)."""
        callee = self.party(self.callee)
        to_value = response.headers.get("To") or callee.address
        callee.address = to_value
        callee.tag = _tag_of(to_value)
        callee.target = _contact_uri(response) or callee.target
        record_route = list_values(response.headers, "Record-Route")
        self.set_routes(record_route, is_own_uri)
        # RFC 3261 §12.1.2: the caller's route set is the Record-Route list reversed; §12.1.1:
        # the callee's is the list as is.  The proxy removes our leading entries (§16.4) before
        # the check, so they go here too.  When both parties are WICs of this eP-CSCF (a
        # spiral through the core), our entries of the other party's flow stay behind the
        # core's: only the leading ones are removed.
        seen_by_wic = list(reversed(record_route)) if self.caller is SIDE_WIC else list(record_route)
        while seen_by_wic and is_own_uri(name_addr_uri(seen_by_wic[0])):
            seen_by_wic.pop(0)
        self.wic_route_behind_us = seen_by_wic
        self.confirmed = True

    def set_routes(self, record_route: list[str], is_own_uri: Callable[[str], bool]) -> None:
        own = [index for index, value in enumerate(record_route) if is_own_uri(name_addr_uri(value))]
        if not own:
            return
        first, last = own[0], own[-1]
        # Above our entries: proxies on the callee's side, the nearest to us just above ours.
        self.party(self.callee).route = list(reversed(record_route[:first]))
        # Below our entries: proxies on the caller's side, the nearest to us first.
        self.party(self.caller).route = list(record_route[last + 1 :])

    def wic_route_matches(self, request: Request) -> bool:
        """TS 24.229 §5.2.6.3: the Route set of the WIC's subsequent request, behind our own
        entries (already removed), is the one saved from the dialog-forming response; without
        one the next hop is the Request-URI (RFC 3261 §16.12), which must be the core party's
        remote target.  Before the dialog is confirmed no route set is saved: nothing to check."""
        if not self.confirmed:
            return True
        routes = [name_addr_uri(value) for value in list_values(request.headers, "Route")]
        if routes != [name_addr_uri(value) for value in self.wic_route_behind_us]:
            return False
        return bool(routes) or _same_target(request.uri, self.core.target)

    def request_seen(self, request: Request, sender: Side) -> None:
        """Track the sender's CSeq and a refreshed remote target (RFC 3261 §12.2.2)."""
        if request.method in ("ACK", "CANCEL"):
            return
        party = self.party(sender)
        party.cseq = max(party.cseq, _cseq_number(request))
        if request.method in ("INVITE", "UPDATE"):
            target = _contact_uri(request)
            if target is not None:
                party.target = target

    def response_seen(self, response: Response, sender: Side) -> None:
        """A 2xx to a re-INVITE/UPDATE may refresh the responder's remote target."""
        if 200 <= response.status < 300 and self.confirmed:
            target = _contact_uri(response)
            if target is not None:
                self.party(sender).target = target

    # --- requests we originate on a party's behalf ------------------------------------------

    def build_bye(self, toward: Side, reason: str, via_transport: str, via_sent_by: str) -> Request:
        """A BYE to ``toward`` as if sent by the other party, with a ``Reason`` (RFC 3326)."""
        sender = self.party(toward.other)
        sender.cseq += 1
        bye = self._in_dialog_request("BYE", toward, sender.cseq, via_transport, via_sent_by, "bye")
        bye.headers.add("Reason", reason)
        return bye

    def build_ack(self, toward: Side, via_transport: str, via_sent_by: str) -> Request:
        """The ACK for a 2xx the other party can no longer acknowledge (RFC 3261 §13.2.2.4):
        same CSeq number as the INVITE."""
        return self._in_dialog_request("ACK", toward, self.invite_cseq, via_transport, via_sent_by, "ack")

    def _in_dialog_request(
        self, method: str, toward: Side, number: int, via_transport: str, via_sent_by: str, kind: str
    ) -> Request:
        receiver = self.party(toward)
        sender = self.party(toward.other)
        if receiver.target is None:
            raise DialogError(f"no remote target known for the {toward.value} side of call {self.call_id}")
        # RFC 3261 §12.2.1.1: R-URI = remote target, Route = route set, From/To = local/remote.
        request = Request(method, receiver.target)
        if receiver.route:
            request.headers.replace_all("Route", list(receiver.route))
        request.headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
        request.headers.add("From", sender.address)
        request.headers.add("To", receiver.address)
        request.headers.add("Call-ID", self.call_id)
        request.headers.add("CSeq", f"{number} {method}")
        request.headers.add("Content-Length", "0")
        apply_strict_route(request)  # RFC 3261 §12.2.1.1: a strict first hop
        add_via(request, via_transport, via_sent_by, new_branch(kind))
        return request


def _same_target(uri: str, target: str | None) -> bool:
    """The same next hop (RFC 3261 §19.1.4 comparison of the parts that choose it: user, host,
    port, transport, maddr), so that a WIC cannot send a dialog's request elsewhere."""
    if target is None:
        return False
    try:
        given, saved = shared_uri(uri), shared_uri(target)  # read only: the memo's objects, no copies
    except UriError:
        return uri.strip() == target.strip()
    if not isinstance(given, SipUri) or not isinstance(saved, SipUri):
        return uri.strip() == target.strip()

    def where(parsed: SipUri) -> tuple[str, str | None, str, int | None, str, str]:
        transport, maddr = parsed.params.get("transport") or "", parsed.params.get("maddr") or ""
        return parsed.scheme.lower(), parsed.user, parsed.host_without_brackets.lower(), parsed.port, transport.lower(), maddr.lower()

    return where(given) == where(saved)


def _cseq_number(message: Request | Response) -> int:
    try:
        sequence = cseq(message)
    except HeaderError:
        return 0
    return sequence.number if sequence is not None else 0
