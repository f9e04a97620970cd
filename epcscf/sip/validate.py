"""Request validation a proxy performs before forwarding (RFC 3261 §16.3 steps 1-5).

``validate_request`` is pure: it returns the response to send (or a marker for the
OPTIONS-with-Max-Forwards-0 case the caller may answer itself), or None when the
request may be forwarded.  Step 4 (loop detection) needs the proxy's own Via and is
the caller's; step 6 (Proxy-Authorization) is policy and not done here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from epcscf.sip.headers import HeaderError, cached_view, cseq, from_tag, option_tags, parse_max_forwards, to_tag, via_line_view
from epcscf.sip.message import Request, Response, display_name, make_response
from epcscf.sip.uri import SipUri, TelUri, UriError, shared_uri

# RFC 3261 §16.3 step 2: the schemes this proxy can route; anything else gets 416.
SUPPORTED_SCHEMES = frozenset({"sip", "sips", "tel"})
_MANDATORY = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq"))
_MANDATORY_KEYS = frozenset(key for key, _ in _MANDATORY)
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-length", "content-type")


@dataclass(frozen=True)
class AnswerOptionsLocally:
    """RFC 3261 §16.3 step 3: Max-Forwards is 0 on an OPTIONS; the proxy MAY answer it itself."""

    request: Request


def _bad_request(request: Request, detail: str) -> Response:
    return make_response(request, 400, f"Bad Request ({detail})")


def validate_request(
    request: Request,
    supported_option_tags: Iterable[str] = (),
) -> Response | AnswerOptionsLocally | None:
    # Step 1: reasonable syntax - the fields the proxy needs are present, single and parse.
    headers = request.headers
    # Read through the index by canonical name (the keys below are canonical): one dict
    # look-up per field, on every request proxied.
    index = headers.lookup_index()
    if not headers._as_parsed:
        # Lines made or changed since the parser accepted them: checked here.  Otherwise the
        # parser checked all of step 1 but the CSeq method against the Request-Line (below).
        problem = _check_fields(request, index)
        if problem is not None:
            return problem
    max_forwards_lines = index.get("max-forwards")
    max_forwards = parse_max_forwards(max_forwards_lines[0]) if max_forwards_lines else None
    cseq_value = cseq(request)
    assert cseq_value is not None  # present: checked by the parser or _check_fields
    if cseq_value.method != request.method:
        return _bad_request(request, "CSeq method does not match the request method")
    # Step 2: URI scheme (RFC 4475 §3.3.2 unkscm, §3.3.3 novelsc).
    try:
        uri = cached_view(headers, "uri", request.uri, shared_uri)  # read only
    except UriError as error:
        return _bad_request(request, f"malformed Request-URI: {error}")
    if not isinstance(uri, (SipUri, TelUri)) or uri.scheme.lower() not in SUPPORTED_SCHEMES:
        return make_response(request, 416)
    # Step 3: Max-Forwards (RFC 4475 §3.3.11 zeromf).
    if max_forwards == 0:
        if request.method == "OPTIONS":
            return AnswerOptionsLocally(request)
        return make_response(request, 483)
    # Step 5: Proxy-Require (RFC 4475 §3.3.5 bext01); Require is for the UAS, not us.
    required = option_tags(request, "proxy-require") if "proxy-require" in index else ()
    if not required:
        return None
    supported = {tag.lower() for tag in supported_option_tags}
    unsupported = [tag for tag in required if tag.lower() not in supported]
    if unsupported:
        response = make_response(request, 420)
        response.headers.add("Unsupported", ", ".join(unsupported))
        return response
    return None


def _check_fields(request: Request, index: Mapping[str, Sequence[str]]) -> Response | None:
    """Step 1 for lines the parser did not check as they are: a 400 naming the problem, or None."""
    headers = request.headers
    if not index.keys() >= _MANDATORY_KEYS:
        missing = [spelling for key, spelling in _MANDATORY if key not in index]
        return _bad_request(request, "missing " + ", ".join(missing))
    for key in _SINGLE:
        found = index.get(key)
        if found is not None and len(found) > 1:
            return _bad_request(request, f"duplicate {display_name(key)}")
    # The parses are the message's shared views: what the parser and the transaction layer
    # already read is not parsed again.
    try:
        for line in index["via"]:
            via_line_view(headers, line)
        cseq(request)
        from_tag(request)  # raises HeaderError for a malformed From, like parse_address
        to_tag(request)
        max_forwards_lines = index.get("max-forwards")
        if max_forwards_lines:
            parse_max_forwards(max_forwards_lines[0])
    except HeaderError as error:
        return _bad_request(request, f"malformed {error.header}: {error.reason}"[:200])
    return None


def too_many_hops(request: Request) -> Response:
    """The 483 the caller sends when it does not answer an OPTIONS with Max-Forwards 0 itself."""
    return make_response(request, 483)
