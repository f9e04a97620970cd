"""Stateless refusals before any transaction: the transaction layer's early-admission hook.

Theory of operation
-------------------
An overloaded element must refuse the excess for much less than it costs to serve it, or the
refusals themselves eat the capacity they protect.  A request refused through the ordinary
path costs a server transaction and its timers, a 100 Trying, validation, a copy, the
routing policy and a log line before the 503 goes out; then the client's ACK is matched to
that transaction.  RFC 3261 lets a proxy answer without any of it: §16.3/§8.2 allow a
stateless final response, and §16.7/§17.2.3 make the ACK of a non-2xx hop-by-hop, ending at
the element that sent the response.

So the transaction layer asks an ``EarlyAdmission`` hook — the policy's, supplied from above
(the eP-CSCF's overload control, ``epcscf.pcscf.early_refusal``) — about every request that
matched no transaction, once its §17.2.3 identity has been read and before a server
transaction exists.  A refusal is answered here by ``StatelessResponder``:

* the response is built from the request alone (RFC 3261 §8.2.6.2), with a To tag that is a
  keyed hash of Call-ID and top Via branch, so a retransmission of the request (UDP) is
  answered with an identical response, as a transaction would have answered it;
* the ACK for that response carries the INVITE's branch (§17.1.1.3) and the response's To
  tag, so it is recognised from those two fields alone and absorbed: never forwarded, no
  transaction looked for further.

Only requests with an RFC 3261 branch are refused this way: the tag needs the branch, and the
rare RFC 2543 peer takes the ordinary path.  The hook never sees ACKs nor requests that
matched a transaction (retransmissions of admitted requests are the transaction's).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Callable

from epcscf.sip.connection import Connection
from epcscf.sip.message import TAG_BYTES, Request, Response, make_response
from epcscf.sip.transaction_server import MAGIC_COOKIE, RequestIdentity

__all__ = ["EarlyAdmission", "EarlyRefusal", "StatelessResponder"]


@dataclass(frozen=True, slots=True)
class EarlyRefusal:
    """The final response a request gets instead of a transaction."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()  # added after those copied from the request


#: (request, its §17.2.3 identity, the connection it came on) → a refusal, or None to go on
EarlyAdmission = Callable[[Request, RequestIdentity, Connection], "EarlyRefusal | None"]


class StatelessResponder:
    """Responses made without a transaction, and recognition of the ACKs they get."""

    def __init__(self, secret: bytes | None = None) -> None:
        # Keyed once: a copy of the keyed state skips hashing the key's block for each tag
        # (two tags per refusal: the 503's and its ACK's check).
        key = secret if secret is not None else secrets.token_bytes(16)
        self._keyed = hashlib.blake2b(digest_size=TAG_BYTES, key=key)
        #: stateless final responses sent, and ACKs for them absorbed, since start
        self.responses = 0
        self.acks_absorbed = 0

    def to_tag(self, call_id: str, branch: str) -> str:
        """Deterministic per (Call-ID, branch) and unguessable without the secret, so no peer
        can make us swallow the ACK of a response it did not get from us (RFC 3261 §19.3
        asks only for global uniqueness, which a keyed hash of both gives)."""
        keyed = self._keyed.copy()
        keyed.update(f"{call_id}\x00{branch}".encode("utf-8", "surrogateescape"))
        return keyed.hexdigest()

    def can_answer(self, identity: RequestIdentity) -> bool:
        """Whether a request with this identity may be refused statelessly (see the docstring)."""
        branch = identity.branch
        return branch is not None and branch.startswith(MAGIC_COOKIE) and identity.call_id is not None

    def response(self, request: Request, identity: RequestIdentity, refusal: EarlyRefusal) -> Response:
        """RFC 3261 §8.2.6.2 response to ``request``, To tag from ``to_tag``."""
        assert identity.branch is not None and identity.call_id is not None
        response = make_response(request, refusal.status, refusal.reason, self.to_tag(identity.call_id, identity.branch))
        for name, value in refusal.headers:
            response.headers.add(name, value)
        return response

    def absorbs_ack(self, identity: RequestIdentity) -> bool:
        """Whether an ACK (matching no transaction) acknowledges one of our stateless responses:
        RFC 3261 §17.1.1.3 gives it the INVITE's branch and the response's To tag."""
        tag, branch, call_id = identity.to_tag, identity.branch, identity.call_id
        if tag is None or branch is None or call_id is None or len(tag) != 2 * TAG_BYTES:
            return False
        if not secrets.compare_digest(tag.encode("utf-8", "surrogateescape"), self.to_tag(call_id, branch).encode()):
            return False
        self.acks_absorbed += 1
        return True
