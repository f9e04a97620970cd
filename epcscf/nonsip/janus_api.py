"""The Janus WebRTC server's JSON API (its WebSocket transport, ``janus-protocol``), sans-IO.

Only the shapes: what a frame must hold, the error codes of Janus's ``apierror.h`` and of its
SIP plugin (``janus_sip.c``), and the replies and events the real ``janus.js`` expects.  Which
requests exist and what they do is the adapter's business (``epcscf.pcscf.nonsip_gateway``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["JanusError", "JanusRequest", "parse_frame", "SIP_PLUGIN", "SUBPROTOCOL"]

SUBPROTOCOL = "janus-protocol"
SIP_PLUGIN = "janus.plugin.sip"

# Janus core errors (apierror.h)
UNKNOWN = 490
MISSING_REQUEST = 452
UNKNOWN_REQUEST = 453
INVALID_JSON = 454
INVALID_JSON_OBJECT = 455
MISSING_MANDATORY_ELEMENT = 456
SESSION_NOT_FOUND = 458
HANDLE_NOT_FOUND = 459
PLUGIN_NOT_FOUND = 460
PLUGIN_ATTACH = 461
JSEP_UNKNOWN_TYPE = 464
JSEP_INVALID_SDP = 465
INVALID_ELEMENT_TYPE = 467
NOT_ACCEPTING_SESSIONS = 472

# SIP plugin errors (janus_sip.c), sent as plugin events
SIP_INVALID_REQUEST = 442
SIP_MISSING_ELEMENT = 443
SIP_INVALID_ELEMENT = 444
SIP_ALREADY_REGISTERED = 445
SIP_INVALID_ADDRESS = 446
SIP_WRONG_STATE = 447
SIP_MISSING_SDP = 448
SIP_NO_SUCH_CALLID = 454


class JanusError(Exception):
    """A request answered with ``{"janus": "error", "error": {"code", "reason"}}``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class JanusRequest:
    verb: str  # the "janus" member: create, attach, message, trickle, keepalive, …
    transaction: str | None
    session_id: int | None
    handle_id: int | None
    body: dict[str, Any]  # the whole frame


def _identifier(frame: dict[str, Any], name: str) -> int | None:
    value = frame.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise JanusError(INVALID_ELEMENT_TYPE, f"Invalid element type ({name} should be a positive integer)")
    return value


def parse_frame(payload: bytes | str) -> JanusRequest:
    """One WebSocket message → a request; ``JanusError`` 454/455/452/456/467 otherwise."""
    try:
        frame = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise JanusError(INVALID_JSON, "JSON error: invalid JSON") from None
    if not isinstance(frame, dict):
        raise JanusError(INVALID_JSON_OBJECT, "JSON error: not an object")
    transaction = frame.get("transaction")
    verb = frame.get("janus")
    if verb is None:
        raise JanusError(MISSING_REQUEST, "Missing mandatory element (janus)")
    if not isinstance(verb, str):
        raise JanusError(INVALID_ELEMENT_TYPE, "Invalid element type (janus should be a string)")
    if transaction is None:
        raise JanusError(MISSING_MANDATORY_ELEMENT, "Missing mandatory element (transaction)")
    if not isinstance(transaction, str):
        raise JanusError(INVALID_ELEMENT_TYPE, "Invalid element type (transaction should be a string)")
    return JanusRequest(verb, transaction, _identifier(frame, "session_id"), _identifier(frame, "handle_id"), frame)


def transaction_of(payload: bytes | str) -> str | None:
    """The transaction of a frame that failed to parse as a request, when one can be read."""
    try:
        frame = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = frame.get("transaction") if isinstance(frame, dict) else None
    return value if isinstance(value, str) else None


def reply(kind: str, transaction: str | None, session_id: int | None = None, **members: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"janus": kind}
    if session_id is not None:
        message["session_id"] = session_id
    if transaction is not None:
        message["transaction"] = transaction
    message.update(members)
    return message


def error(transaction: str | None, session_id: int | None, code: int, reason: str) -> dict[str, Any]:
    return reply("error", transaction, session_id, error={"code": code, "reason": reason})


def plugin_event(
    session_id: int, handle_id: int, transaction: str | None, data: dict[str, Any], jsep: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``{"janus": "event", "sender": handle, "plugindata": {"plugin", "data"}}`` (+ jsep)."""
    message = reply("event", transaction, session_id, sender=handle_id, plugindata={"plugin": SIP_PLUGIN, "data": data})
    if jsep is not None:
        message["jsep"] = jsep
    return message


def sip_result(result: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"sip": "event", "result": result}
    if call_id is not None:
        data["call_id"] = call_id
    return data


def sip_error(code: int, reason: str) -> dict[str, Any]:
    return {"sip": "event", "error_code": code, "error": reason}


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("utf-8")
