"""RFC 5626 flows and flow tokens: which WebSocket a request toward a WIC must take.

Theory of operation
-------------------
Every WebSocket connection from a WIC is one *flow* (RFC 5626 §3.2).  The
``FlowTable`` holds the open ones, keyed by the connection id, together with what the
P-CSCF later binds to them (registrations, dialogs).  When the connection closes the flow
is removed and every observer is told, so that registrations and dialogs on it fail
(RFC 5626 §5.3.1, TS 23.228 §5.10).

The P-CSCF names a flow in the URIs it puts in ``Path`` and ``Record-Route`` by a *flow
token* (RFC 5626 §5.2): the user part of ``sip:<token>@pcscf;lr;ob``.  Requests
from the core come back with that URI as top Route (RFC 5626 §5.3.1) and the token alone
says which connection to send them on.  Following the algorithm suggested in RFC 5626
§5.2, a token is ``base64url(HMAC-SHA256-80(key, flow id) || flow id)``: decodable without
state, unique per flow (ids are never reused, see ``epcscf.ws.connection``), and
unforgeable without the key.  The key is random per boot unless configured.

Decisions (RFC 5626 §5.3.1):

* a token that does not decode or whose HMAC is wrong → ``TamperedToken`` → 403;
* a good token whose flow is no longer open → ``FlowGone`` → 430 (Flow Failed).  No
  tombstones are needed: the HMAC proves we issued the token, so a missing flow has gone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterator

from twisted.internet.interfaces import IReactorTime

from epcscf.sip.connection import Connection

__all__ = ["Flow", "FlowTable", "FlowTokenCodec", "FlowError", "TamperedToken", "FlowGone"]

# RFC 5626 §5.2 suggests HMAC-SHA1-80; we use SHA-256 truncated to the same 80 bits.
TAG_LENGTH = 10
KEY_LENGTH = 32
MIN_KEY_LENGTH = 16
# Longest token we try to decode: a connection id is short; anything longer is not ours.
MAX_TOKEN_LENGTH = 256
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\Z")


class FlowError(Exception):
    """A request cannot be delivered on the flow its URI names; ``status`` is the SIP answer."""

    status = 500
    reason = "Server Internal Error"


class TamperedToken(FlowError):
    """The flow token was not issued by us (altered, truncated, foreign): RFC 5626 §5.3.1 → 403."""

    status = 403
    reason = "Forbidden (invalid flow token)"


class FlowGone(FlowError):
    """The flow named by a valid token has closed: RFC 5626 §5.3.1 → 430 Flow Failed."""

    status = 430
    reason = "Flow Failed"


class FlowTokenCodec:
    """Turns a connection id into a flow token and back (RFC 5626 §5.2)."""

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = secrets.token_bytes(KEY_LENGTH)
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(f"flow token key must be at least {MIN_KEY_LENGTH} bytes, got {len(key)}")
        self._key = key

    def _tag(self, flow_id: bytes) -> bytes:
        return hmac.new(self._key, flow_id, hashlib.sha256).digest()[:TAG_LENGTH]

    def encode(self, connection_id: str) -> str:
        """A token made only of unreserved characters (``A-Z a-z 0-9 - _``), usable as a URI user part."""
        if not connection_id:
            raise ValueError("cannot make a flow token for an empty connection id")
        flow_id = connection_id.encode("utf-8")
        return base64.urlsafe_b64encode(self._tag(flow_id) + flow_id).rstrip(b"=").decode("ascii")

    def decode(self, token: str) -> str:
        """The connection id inside ``token``; raises ``TamperedToken`` unless we issued it."""
        if not token or len(token) > MAX_TOKEN_LENGTH or not _TOKEN_RE.match(token):
            raise TamperedToken(f"flow token {token[:40]!r} is not one of ours (bad characters or length)")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TamperedToken(f"flow token {token[:40]!r} is not valid base64url") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            # unused low bits of the last character set: not a token we wrote (one token per flow)
            raise TamperedToken(f"flow token {token[:40]!r} is not in canonical form")
        tag, flow_id = raw[:TAG_LENGTH], raw[TAG_LENGTH:]
        if not flow_id or not hmac.compare_digest(tag, self._tag(flow_id)):
            raise TamperedToken(f"flow token {token[:40]!r} fails its HMAC check")
        try:
            return flow_id.decode("utf-8")
        except UnicodeDecodeError:  # pragma: no cover - an HMAC-valid id is always ours
            raise TamperedToken(f"flow token {token[:40]!r} holds no connection id") from None


@dataclass(eq=False)
class Flow:
    """One open connection from a WIC and what is bound to it."""

    connection: Connection
    #: reactor time the flow was opened
    opened: float
    #: the browser Origin of the WebSocket handshake, None for non-browser clients
    origin: str | None
    #: the flow token naming this flow in Path / Record-Route user parts
    token: str
    #: registrations (or any keys the P-CSCF chooses) that fail with this flow
    registrations: set[Hashable] = field(default_factory=set)
    closed_at: float | None = None
    close_reason: str = ""

    @property
    def id(self) -> str:
        return self.connection.id

    @property
    def open(self) -> bool:
        return self.closed_at is None and self.connection.connected


FlowObserver = Callable[[Flow], None]


class FlowTable:
    """The open flows, by connection id."""

    def __init__(self, clock: IReactorTime, codec: FlowTokenCodec | None = None) -> None:
        self.clock = clock
        self.codec = codec if codec is not None else FlowTokenCodec()
        self._flows: dict[str, Flow] = {}
        self._observers: list[FlowObserver] = []

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._flows

    def on_close(self, observer: FlowObserver) -> None:
        """Call ``observer(flow)`` whenever a flow closes (after it left the table)."""
        self._observers.append(observer)

    # --- lifecycle ---

    def open(self, connection: Connection, origin: str | None = None) -> Flow:
        """Start tracking ``connection`` as a flow (idempotent for the same connection)."""
        existing = self._flows.get(connection.id)
        if existing is not None:
            if existing.connection is not connection:
                raise ValueError(f"connection id {connection.id} is already used by another connection")
            return existing
        if origin is None:
            origin = getattr(connection, "origin", None)
        flow = Flow(
            connection=connection,
            opened=self.clock.seconds(),
            origin=origin,
            token=self.codec.encode(connection.id),
        )
        self._flows[connection.id] = flow
        return flow

    def close(self, connection_id: str, reason: str = "") -> Flow | None:
        """Forget the flow and tell the observers (RFC 5626 §5.3.1: its bindings fail)."""
        flow = self._flows.pop(connection_id, None)
        if flow is None:
            return None
        flow.closed_at = self.clock.seconds()
        flow.close_reason = reason
        for observer in list(self._observers):
            observer(flow)
        return flow

    # --- lookups ---

    def find(self, connection_id: str) -> Flow | None:
        flow = self._flows.get(connection_id)
        # ``flow.open``, inlined: read for every response to a REGISTER
        return flow if flow is not None and flow.closed_at is None and flow.connection.connected else None

    def get(self, connection_id: str) -> Flow:
        """The open flow for ``connection_id``; ``FlowGone`` if it has closed."""
        flow = self.find(connection_id)
        if flow is None:
            raise FlowGone(f"flow {connection_id} has closed")
        return flow

    def token_for(self, connection: Connection | str) -> str:
        """The flow token for a connection (open or not: a token never changes)."""
        connection_id = connection if isinstance(connection, str) else connection.id
        flow = self._flows.get(connection_id)
        return flow.token if flow is not None else self.codec.encode(connection_id)

    def flow_for_token(self, token: str) -> Flow:
        """The open flow a token names: ``TamperedToken`` (403) or ``FlowGone`` (430) otherwise."""
        return self.get(self.codec.decode(token))

    # --- bindings ---

    def bind(self, connection_id: str, key: Hashable) -> Flow:
        """Bind a registration (or dialog) to an open flow, so it fails with the flow."""
        flow = self.get(connection_id)
        flow.registrations.add(key)
        return flow

    def unbind(self, connection_id: str, key: Hashable) -> None:
        flow = self._flows.get(connection_id)
        if flow is not None:
            flow.registrations.discard(key)
