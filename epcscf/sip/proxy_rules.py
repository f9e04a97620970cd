"""RFC 3261 §16 proxy rules as pure functions on messages (no I/O, no state).

``epcscf.sip.proxy`` sequences these; each function implements one numbered step and is
unit-tested on its own.
"""

from __future__ import annotations

import hashlib
import re
from functools import partial
from typing import Callable, Iterable, Sequence

from epcscf.sip.headers import HeaderError, Via, cached_view, parse_via, remember_own_via
from epcscf.sip.connection import Connection
from epcscf.sip.message import Headers, Message, Request, Response, canonical_name, make_response, new_tag
from epcscf.sip.params import VALUE_PLACEHOLDER, clear_with_memos, cut_param_value, memoised_by_text, read_by_shape
from epcscf.sip.resolver import DEFAULT_PORTS, Target
from epcscf.sip.uri import Params, UriError, parse_name_addr, shared_uri, split_list

# RFC 3261 §8.1.1.7: the magic cookie; ours adds a marker so we recognise our own branches.
MAGIC_COOKIE = "z9hG4bK"
BRANCH_PREFIX = MAGIC_COOKIE + "-epc-"
# RFC 3261 §16.6 step 3
DEFAULT_MAX_FORWARDS = 70


# --- header lists -----------------------------------------------------------------------------


def list_values(headers: Headers, name: str) -> list[str]:
    """Every value of a list header, all lines split, in order."""
    values: list[str] = []
    for line in headers.get_all(name):
        values.extend(split_list(line))
    return values


def _first_value(headers: Headers, name: str) -> str | None:
    """The first value of a list header (``list_values(...)[0]``), without splitting every
    line when the first line holds one value."""
    first = headers.get(name)
    if first is not None and "," not in first:
        stripped = first.strip(" \t")
        if stripped:
            return stripped
    values = list_values(headers, name)
    return values[0] if values else None


def pop_first_value(headers: Headers, name: str) -> str | None:
    """Remove and return the first value of a list header (the rest stay, one per line)."""
    first = headers.get(name)
    if first is not None and "," not in first and first.strip(" \t"):
        headers.replace_first(name, None)  # the first line is one value: drop just that line
        return first.strip(" \t")
    if first is not None and '"' not in first and "<" not in first:
        # Several plain values on the first line (a response's Via line, RFC 3261 §8.2.6.2,
        # as some UASes write it): cut the first off that line; the rest stay as they are.
        pieces = first.split(",")
        for piece in pieces:  # ``all(...)`` without a generator: every response passes here
            if not piece.strip(" \t"):
                break
        else:
            headers.replace_first(name, ",".join(pieces[1:]).strip(" \t"))
            return pieces[0].strip(" \t")
    values = list_values(headers, name)
    if not values:
        return None
    headers.replace_all(name, values[1:])
    return values[0]


def replace_first_value(headers: Headers, name: str, value: str) -> None:
    first = headers.get(name)
    if first is not None and "," not in first and first.strip(" \t"):
        headers.replace_first(name, value)  # the first line is one value: replace just that line
        return
    values = list_values(headers, name)
    headers.replace_all(name, [value] + values[1:])


@memoised_by_text  # text → text: a dialog's Route, Record-Route and Contact values recur in every message
def name_addr_uri(value: str) -> str:
    """The URI text of a name-addr / addr-spec (``"Bob" <sip:b@x;lr>;p=1`` → ``sip:b@x;lr``)."""
    try:
        return str(parse_name_addr(value).uri)
    except UriError:
        start, end = value.find("<"), value.find(">")
        return value[start + 1 : end].strip() if 0 <= start < end else value.strip()


def uri_param_names(uri_text: str) -> set[str]:
    """Lower-cased parameter names of a URI (empty when it does not parse)."""
    try:
        uri = shared_uri(uri_text)  # read only: the memo's object, no copy
    except UriError:
        return set()
    return {name.lower() for name in getattr(uri, "params", {})}


# --- Via ----------------------------------------------------------------------------------------


_SENT_BY_RE = re.compile(r"\s*SIP\s*/\s*2\.0\s*/\s*[A-Za-z0-9]+\s+(\[[^\]]+\]|[^\s;:]+)")
_RPORT_RE = re.compile(r";\s*rport(?:\s*=\s*([0-9]*))?(?=\s*(?:;|$))", re.I)
_RECEIVED_RE = re.compile(r";\s*received\s*=\s*[^;\s]*", re.I)
_BRANCH_RE = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.I)
_TAG_RE = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.I)


def branch_of(via_text: str) -> str:
    """The branch parameter of one Via value ("" when absent), without a full parse."""
    cut = cut_param_value(via_text, ";branch=")
    if cut is None:
        return _branch_by_pattern(via_text)
    # By the text's shape (a branch is new in every transaction): the pattern finds the same
    # parameter in both, and no value holds ';', ',' or LWS, so it reads a token alike.
    shape, branch = cut
    found = read_by_shape(_branch_by_shape, shape, _branch_by_pattern, SHAPE_ENTRIES)
    return branch if found == VALUE_PLACEHOLDER else found


def _branch_by_pattern(via_text: str) -> str:
    match = _BRANCH_RE.search(via_text)
    return match.group(1) if match else ""


def tag_of(address_value: str | None) -> str:
    """The ``tag`` parameter of a From/To value ("" when absent), without a full parse."""
    return _tag_of_text(address_value) if address_value else ""


SHAPE_ENTRIES = 1024  # each memo below: bounded, cleared with the text memos


# Memoised by text: a dialog's (and a WIC's REGISTERs') From and To repeat in every request.
@partial(memoised_by_text, entries=SHAPE_ENTRIES)
def _tag_of_text(address_value: str) -> str:
    gt = address_value.rfind(">")
    match = _TAG_RE.search(address_value, gt + 1 if gt >= 0 else 0)
    return match.group(1) if match else ""


_branch_by_shape: dict[str, str] = {}
_marked_by_shape: dict[tuple[str, str, int], str] = {}
for _memo in (_branch_by_shape, _marked_by_shape):
    clear_with_memos(_memo.clear)


def via_param(via_text: str, name: str) -> str | None:
    """A Via parameter value (``""`` when present without a value, None when absent or bad)."""
    try:
        params = parse_via(via_text).params
    except HeaderError:
        return None
    if name not in params:
        return None
    value = params[name]
    return "" if value is None else value


def via_sent_by(via_text: str) -> tuple[str, str, int | None]:
    """(transport, host, port) of a Via value: ``SIP/2.0/UDP host:port;…``."""
    via = parse_via(via_text)
    return via.transport, via.host.strip("[]"), via.port


def mark_received(via_text: str, source_host: str, source_port: int) -> str:
    """RFC 3261 §18.2.1 + RFC 3581 §4: ``received`` when sent-by differs from the source;
    with an empty ``rport``, fill in the source port and always add ``received``.

    Edits the text in place (parameter order is not significant) so that the common cases
    need no full Via parse; a Via whose params the quick patterns cannot read is parsed."""
    cut = cut_param_value(via_text, ";branch=")
    if cut is not None:
        # By the text's shape (a branch is new in every transaction): the quick patterns look
        # at the sent-by and at ';'-led parameters only, so they read and edit a text and its
        # shape alike, and the branch goes back in where the placeholder is.
        shape, branch = cut
        key = (shape, source_host, source_port)
        marked = _marked_by_shape.get(key)
        if marked is None:
            marked = _mark_received_quickly(shape, source_host, source_port)
            if marked is not None:
                if len(_marked_by_shape) >= SHAPE_ENTRIES:
                    _marked_by_shape.clear()
                _marked_by_shape[key] = marked
        if marked is not None:
            return marked.replace(VALUE_PLACEHOLDER, branch)
    marked = _mark_received_quickly(via_text, source_host, source_port)
    return marked if marked is not None else _mark_received_parsed(via_text, source_host, source_port)


def _mark_received_quickly(via_text: str, source_host: str, source_port: int) -> str | None:
    """``mark_received`` by the quick patterns; None for a Via they cannot read."""
    quick = _SENT_BY_RE.match(via_text)
    if quick is None or '"' in via_text or "," in via_text:
        return None
    rport = _RPORT_RE.search(via_text)
    if rport is not None and rport.group(1) is None:
        text = f"{via_text[: rport.start()]};rport={source_port}{via_text[rport.end():]}"
        return _set_received(text, source_host)
    if quick.group(1).strip("[]") != source_host:
        return _set_received(via_text, source_host)
    return via_text


def _set_received(via_text: str, host: str) -> str:
    existing = _RECEIVED_RE.search(via_text)
    if existing is not None:
        return f"{via_text[: existing.start()]};received={host}{via_text[existing.end():]}"
    return f"{via_text.rstrip()};received={host}"


def _mark_received_parsed(via_text: str, source_host: str, source_port: int) -> str:
    via = parse_via(via_text)
    changed = False
    if "rport" in via.params and via.params["rport"] is None:
        via.params["rport"] = str(source_port)
        via.params["received"] = source_host
        changed = True
    elif via.host.strip("[]") != source_host:
        via.params["received"] = source_host
        changed = True
    return str(via) if changed else via_text


# --- loop detection and branches (§16.3 step 4, §16.6 step 8) ---------------------------------


def loop_hash(request: Request) -> str:
    """RFC 3261 §16.6 step 8: a hash of the fields that decide routing.  The same request
    coming back unchanged (a loop) hashes the same; a spiral (changed R-URI, …) does not.
    Route is among them: an in-dialog request between two WICs of one eP-CSCF passes it twice
    with the same R-URI, and only its Route set (shorter the second time) tells the spiral."""
    index = request.headers.lookup_index()  # each field read once, no copies: this runs per request
    none: tuple[str, ...] = ()
    to, from_, call_id, sequence = index.get("to"), index.get("from"), index.get("call-id"), index.get("cseq")
    fields = [
        request.uri,
        ",".join(index.get("route", none)),
        tag_of(to[0] if to else None),
        tag_of(from_[0] if from_ else None),
        call_id[0] if call_id else "",
        sequence[0].split()[0] if sequence and sequence[0] else "",
        ",".join(index.get("proxy-require", none)),
        ",".join(index.get("proxy-authorization", none)),
    ]
    return hashlib.blake2s("\x00".join(fields).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def branch_for(request: Request, index: int, secret: bytes = b"", loop: str | None = None) -> str:
    """A new RFC 3261 §8.1.1.7 branch: our prefix, the loop hash, and a part that depends only
    on the incoming top Via (so it is unique per transaction and stateless-computable,
    §16.11) and the branch index (parallel/serial branches of one transaction differ)."""
    top = _first_value(request.headers, "via") or ""
    incoming = branch_of(top) or top
    # RFC 3261 §9.1 / §16.10: a CANCEL carries its INVITE's branch, so it hashes like its INVITE.
    method = "INVITE" if request.method == "CANCEL" else request.method
    digest = hashlib.blake2s(
        f"{incoming}\x00{method}\x00{index}".encode("utf-8", "surrogateescape"), key=secret[:32], digest_size=8
    ).hexdigest()
    return f"{BRANCH_PREFIX}{loop if loop is not None else loop_hash(request)}.{digest}"


def is_loop(request: Request, own_sent_by: Callable[[str, int | None], bool]) -> bool:
    """RFC 3261 §16.3 step 4: a Via of ours whose loop hash equals this request's → a loop."""
    for line in request.headers.lines("via"):
        if BRANCH_PREFIX in line:
            break
    else:
        return False  # none of our branches: no Via of ours (the common case)
    current: str | None = None  # computed only when one of our Vias is present
    for via in list_values(request.headers, "via"):
        branch = branch_of(via)
        if not branch.startswith(BRANCH_PREFIX):
            continue
        try:
            _transport, host, port = via_sent_by(via)
        except HeaderError:
            continue
        if not own_sent_by(host, port):
            continue
        if current is None:
            current = loop_hash(request)
        if branch[len(BRANCH_PREFIX) :].split(".", 1)[0] == current:
            return True
    return False


# --- request forwarding (§16.6) ----------------------------------------------------------------


def decrement_max_forwards(request: Request) -> None:
    """RFC 3261 §16.6 step 3: decrement, or add 70 when absent."""
    headers = request.headers
    lines = headers.lookup_index().get("max-forwards")
    value = lines[0] if lines else None
    if value is None or not value.strip().isdigit():
        new = str(DEFAULT_MAX_FORWARDS)
    else:
        new = str(max(int(value) - 1, 0))
    if lines is not None and len(lines) == 1:
        headers.replace_first("Max-Forwards", new)  # ``set`` for the one line there is: in place
    else:
        headers.set("Max-Forwards", new)


def process_own_routes(request: Request, is_own: Callable[[str], bool]) -> int:
    """RFC 3261 §16.4: undo a strict router's R-URI swap, then remove our own top Route(s).

    * If the R-URI is a URI we put into Record-Route, the previous hop was a strict router:
      the real R-URI is the last Route value (§16.4 ¶2).
    * Remove every leading Route value that is ours (§16.4 ¶3; RFC 5658 §3 for the double
      Record-Route case, where both of our entries come back as Routes).

    Returns how many Route values were ours (0: the request was not loose-routed to us).
    """
    routes = list_values(request.headers, "route")
    if not routes:
        return 0
    removed = 0
    if is_own(request.uri):
        request.uri = name_addr_uri(routes[-1])
        routes = routes[:-1]
        removed += 1
    while routes and is_own(name_addr_uri(routes[0])):
        routes = routes[1:]
        removed += 1
    if removed:
        request.headers.replace_all("Route", routes)
    return removed


def next_hop_uri(request: Request) -> str:
    """RFC 3261 §16.6 step 7 / §16.12: the top Route's URI when present, else the R-URI."""
    routes = list_values(request.headers, "route")
    return name_addr_uri(routes[0]) if routes else request.uri


def apply_strict_route(request: Request) -> None:
    """RFC 3261 §16.6 step 6: a top Route without ``lr`` is a strict router: the R-URI goes
    to the end of Route and the top Route value becomes the R-URI."""
    routes = list_values(request.headers, "route")
    if not routes:
        return
    top = name_addr_uri(routes[0])
    if "lr" in uri_param_names(top):
        return
    request.headers.replace_all("Route", routes[1:] + [f"<{request.uri}>"])
    request.uri = top


def add_record_route(request: Request, uris: Sequence[str]) -> None:
    """RFC 3261 §16.6 step 4 (RFC 5658 §4 for two entries): ``uris`` in top-down order."""
    for uri in reversed(list(uris)):
        request.headers.insert_first("Record-Route", f"<{uri}>")


def add_via(request: Request, transport: str, sent_by: str, branch: str) -> str:
    """RFC 3261 §16.6 step 8: our Via on top."""
    via = f"SIP/2.0/{transport} {sent_by};branch={branch}"
    request.headers.insert_first("Via", via)
    remember_own_via(via, branch)  # its responses bring it back first (§16.7 step 3)
    # The transaction layer reads the top Via's branch of every request it sends: hand it
    # the view of the Via we just wrote instead of having it parse our own text back.
    host, port = sent_by, None
    if not sent_by.endswith("]"):
        name, colon, port_text = sent_by.rpartition(":")
        if colon and port_text.isdigit():
            host, port = name, int(port_text)
    cached_view(request.headers, "top-via", via, lambda _: Via(transport.upper(), host, port, Params([("branch", branch)])))
    return via


# --- responses (§16.7) --------------------------------------------------------------------------


def response_class(status: int) -> int:
    return status // 100


# RFC 3261 §16.7 step 6: within a class, prefer responses that tell the UAC what to fix.
_PREFERRED = (401, 407, 415, 420, 484)


def choose_best_response(responses: Iterable[Response]) -> Response | None:
    """RFC 3261 §16.7 step 6: 6xx first, else the lowest class; within a class the
    informative ones (401, 407, 415, 420, 484), then the first received."""
    finals = [r for r in responses if r.status >= 300]
    if not finals:
        return None
    six = [r for r in finals if r.status >= 600]
    if six:
        return six[0]
    lowest = min(response_class(r.status) for r in finals)
    in_class = [r for r in finals if response_class(r.status) == lowest]
    for status in _PREFERRED:
        for response in in_class:
            if response.status == status:
                return response
    return in_class[0]


def merge_challenges(best: Response, responses: Iterable[Response]) -> Response:
    """RFC 3261 §16.7 step 7: a 401/407 carries every WWW-/Proxy-Authenticate of every
    401/407 received on any branch."""
    if best.status not in (401, 407):
        return best
    responses = list(responses)
    if all(response is best or response.status not in (401, 407) for response in responses):
        return best  # the only challenge: nothing to merge
    merged = best.copy()
    for name in ("WWW-Authenticate", "Proxy-Authenticate"):
        values: list[str] = []
        for response in responses:
            if response.status in (401, 407):
                for value in response.headers.get_all(name):
                    if value not in values:
                        values.append(value)
        if values:
            merged.headers.remove(name)
            for value in values:
                merged.headers.add(name, value)
    return merged


def outgoing_final(best: Response) -> Response:
    """RFC 3261 §16.7 step 6: a selected 503 is forwarded as 500 (the 503 was about the
    downstream element, not us)."""
    if best.status != 503:
        return best
    converted = best.copy()
    converted.status = 500
    converted.reason = "Server Internal Error"
    converted.headers.remove("Retry-After")
    return converted


def make_cancel(invite: Request) -> Request:
    """RFC 3261 §9.1: CANCEL for a forwarded INVITE: same R-URI, Call-ID, To, From, CSeq number
    and the single top Via (same branch), and the same Route header fields."""
    cancel = Request("CANCEL", invite.uri)
    top_via = list_values(invite.headers, "via")[0]
    cancel.headers.add("Via", top_via)
    for name, value in invite.headers:
        key = canonical_name(name)
        if key in ("from", "to", "call-id", "route"):
            cancel.headers.add(name, value)
    number = (invite.headers.get("cseq") or "1").split()[0]
    cancel.headers.add("CSeq", f"{number} CANCEL")
    cancel.headers.add("Max-Forwards", str(DEFAULT_MAX_FORWARDS))
    return cancel


def make_local_response(request: Request, status: int, reason: str | None = None, to_tag: str | None = None) -> Response:
    """A response generated by the proxy itself (RFC 3261 §8.2.6 / §16.2)."""
    return make_response(request, status, reason, to_tag)


def strip_own_via(response: Message) -> str | None:
    """RFC 3261 §16.7 step 3: remove the topmost Via (ours); returns it."""
    return pop_first_value(response.headers, "via")


def via_target(via_text: str) -> Target | None:
    """RFC 3261 §18.2.2 / RFC 3581 §4: where a response to this Via goes."""
    try:
        transport, host, port = via_sent_by(via_text)
    except HeaderError:
        return None
    received = via_param(via_text, "received")
    rport = via_param(via_text, "rport")
    target_port = int(rport) if rport and rport.isdigit() else (port or DEFAULT_PORTS.get(transport, 5060))
    return Target(transport, received or host, target_port, host)


def mark_source(request: Request, connection: Connection) -> None:
    top = _first_value(request.headers, "via")  # a WIC's usual request: one Via, no list split
    if top is None:
        return
    try:
        marked = mark_received(top, connection.remote.host, connection.remote.port)
    except HeaderError:
        return
    if marked != top:
        replace_first_value(request.headers, "Via", marked)


def with_to_tag(response: Response) -> Response:
    """RFC 3261 §8.2.6.2: a response we generate carries a To tag (except 100)."""
    to = response.headers.get("to")
    if response.status > 100 and to is not None and ";tag=" not in to.replace(" ", "").lower():
        response.headers.set("To", f"{to};tag={new_tag()}")
    return response
