"""What a call's refused INVITE is answered with (TS 24.371 §7.4, split from ``calls``).

The call manager refuses an initial INVITE (or an in-dialog offer) it cannot serve; these
build the answer: 415 with Accept for a body that is not SDP (RFC 3261 §21.4.13), 488 with a
Warning naming what the SDP lacks (RFC 3261 §20.43, RFC 5763 §5, RFC 8839), 400 for a
malformed body, 503 with Retry-After when no media resources are left (RFC 3261 §21.5.4,
TS 24.229 §5.2.7.2), 500 for anything else.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure

from epcscf.pcscf.call_model import SDP, CallSettings, MediaRejected, content_type
from epcscf.sip.message import REASON_PHRASES, Request, Response
from epcscf.sip.proxy_rules import make_local_response

# The call manager's log namespace: these lines read as they did before the split.
log = Logger(namespace="epcscf.pcscf.calls")


def rejection(request: Request, failure: Failure, settings: CallSettings) -> Response:
    """The answer to ``request`` whose SDP (or media) failed with ``failure``."""
    error = failure.value
    if isinstance(error, MediaRejected):
        if error.status == 503:
            return overloaded(request, error.reason, settings)
        response = make_local_response(request, error.status, _reason_phrase(error.status, error.reason))
        if error.status == 488:
            text = error.reason.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'{error.warn_code} {settings.warning_agent} "{text}"')
        return response
    log.failure("SDP handling failed", failure)
    return make_local_response(request, 500, "Server Internal Error (media)")


def overloaded(request: Request, why: str, settings: CallSettings) -> Response:
    """503 with Retry-After: no media resources (or too many calls) for ``request``."""
    response = make_local_response(request, 503, "Service Unavailable (no media resources)")
    response.headers.add("Retry-After", str(settings.retry_after))  # RFC 3261 §21.5.4
    log.info("503 for {call_id}: {why}", call_id=request.headers.get("Call-ID"), why=why)
    return response


def unusable_body(request: Request) -> Response | None:
    """415 with Accept for a body we must read but cannot (RFC 3261 §21.4.13); None if usable."""
    if request.body.strip() and content_type(request) != SDP:
        response = make_local_response(request, 415)
        response.headers.add("Accept", SDP)
        return response
    return None


def _reason_phrase(status: int, detail: str) -> str:
    base = REASON_PHRASES.get(status, "")
    if status == 400:
        return f"{base} ({detail[:80]})"
    return base
