"""Location service of the embedded core: address-of-record → contact bindings.

RFC 3261 §10.3 calls the registrar's store the *location service*: for every
address-of-record (AOR) it holds the contact addresses a user agent registered,
each with its own expiry.  The store here also keeps what later RFCs attach to a
binding: the Path the REGISTER carried (RFC 3327 §5.3, used as the Route set of
terminating requests, §5.4), the RFC 5626 instance-id and reg-id that identify a
flow independent of its contact URI (§6), and the Call-ID/CSeq of the REGISTER
that last touched the binding (RFC 3261 §10.3 step 7 ordering).

Expiry is evaluated against an injected ``IReactorTime`` (``task.Clock`` in
tests): a binding whose ``expires_at`` is not in the future no longer exists for
any reader.  Expired bindings are removed lazily whenever their AOR is read or
written, and ``purge_expired`` sweeps everything (the core calls it
periodically so idle AORs do not accumulate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from twisted.internet.interfaces import IReactorTime

from epcscf.sip.uri import SipUri, TelUri, Uri, UriError, parse_uri, uris_equal


@dataclass(frozen=True)
class Binding:
    """One registered contact of one AOR (RFC 3261 §10.3 step 7)."""

    aor: str
    #: the Contact URI as registered (the target of terminating requests)
    contact: str
    #: Contact header parameters other than ``expires`` and ``q`` as written
    #: (``;+sip.instance="<urn:...>";reg-id=1``), echoed back in the 200 OK
    contact_params: str
    #: RFC 3327: Path header values of the REGISTER, in order (the Route set toward the UA)
    path: tuple[str, ...]
    #: RFC 5626 §4.1 ``+sip.instance`` value (without quotes), if any
    instance: str | None
    #: RFC 5626 §4.2 ``reg-id``; meaningful only together with ``instance``
    reg_id: int | None
    call_id: str
    cseq: int
    #: absolute time (clock seconds) at which the binding ceases to exist
    expires_at: float
    #: clock seconds of the REGISTER that created or last refreshed the binding
    registered_at: float
    #: RFC 3261 §20.10 q-value (preference among contacts), 1.0 unless given
    q: float = 1.0

    def remaining(self, now: float) -> int:
        """Seconds left, rounded up, as written in the 200 OK ``expires`` parameter."""
        left = self.expires_at - now
        return max(0, int(left) if left == int(left) else int(left) + 1)

    @property
    def flow_key(self) -> tuple[str, int] | None:
        """RFC 5626 §6: (instance-id, reg-id) identifies the flow a binding is on."""
        if self.instance is not None and self.reg_id is not None:
            return (self.instance, self.reg_id)
        return None


@dataclass
class LocationService:
    """AOR → bindings, with expiry on an injected clock."""

    clock: IReactorTime
    _bindings: dict[str, list[Binding]] = field(default_factory=dict)
    #: called with the AOR whenever its set of bindings changes (added, refreshed,
    #: removed or found expired); the reg event notifier (RFC 3680) listens here
    observers: list[Callable[[str], None]] = field(default_factory=list)

    def now(self) -> float:
        return self.clock.seconds()

    # --- reading ---

    def bindings(self, aor: str) -> list[Binding]:
        """The live bindings of ``aor``, most recently registered first (serial forking order)."""
        live = self._live(aor)
        return sorted(live, key=lambda b: (-b.q, -b.registered_at))

    def aors(self) -> Iterator[str]:
        """Every AOR that has at least one live binding."""
        for aor in list(self._bindings):
            if self._live(aor):
                yield aor

    def find(self, aor: str, contact: str) -> Binding | None:
        """The binding of ``aor`` whose contact equals ``contact`` (RFC 3261 §19.1.4 comparison)."""
        return next((b for b in self._live(aor) if same_contact(b.contact, contact)), None)

    def find_flow(self, aor: str, instance: str, reg_id: int) -> Binding | None:
        """RFC 5626 §6: the binding of ``aor`` on the flow (instance, reg-id), whatever its contact."""
        return next((b for b in self._live(aor) if b.flow_key == (instance, reg_id)), None)

    # --- writing ---

    def put(self, binding: Binding) -> None:
        """Add ``binding``, replacing one with the same contact or the same RFC 5626 flow."""
        live = [
            b
            for b in self._live(binding.aor)
            if not same_contact(b.contact, binding.contact)
            and (binding.flow_key is None or b.flow_key != binding.flow_key)
        ]
        live.append(binding)
        self._bindings[binding.aor] = live
        self._changed(binding.aor)

    def remove(self, binding: Binding) -> None:
        before = self._live(binding.aor)
        live = [b for b in before if b is not binding and b != binding]
        self._store(binding.aor, live)
        if len(live) != len(before):
            self._changed(binding.aor)

    def remove_all(self, aor: str) -> None:
        """RFC 3261 §10.3 step 6: ``Contact: *`` with ``Expires: 0`` removes every binding."""
        if self._bindings.pop(aor, None):
            self._changed(aor)

    def purge_expired(self) -> int:
        """Drop every expired binding; returns how many were dropped."""
        dropped = 0
        for aor in list(self._bindings):
            before = len(self._bindings[aor])
            dropped += before - len(self._live(aor))
        return dropped

    # --- internals ---

    def _live(self, aor: str) -> list[Binding]:
        """The unexpired bindings of ``aor``: the stored list itself when none expired
        (callers only read it; every change stores a new list)."""
        now = self.now()
        current = self._bindings.get(aor)
        if current is None:
            return []
        for binding in current:
            if binding.expires_at <= now:
                break
        else:
            return current
        live = [b for b in current if b.expires_at > now]
        if len(live) != len(current):
            self._store(aor, live)
            self._changed(aor)
        return live

    def _changed(self, aor: str) -> None:
        for observer in list(self.observers):
            observer(aor)

    def _store(self, aor: str, bindings: list[Binding]) -> None:
        if bindings:
            self._bindings[aor] = bindings
        else:
            self._bindings.pop(aor, None)


def same_contact(a: str, b: str) -> bool:
    """RFC 3261 §10.3 step 7: contacts are compared with the URI rules of §19.1.4."""
    if a == b:
        # The same text: equal whatever it is (§19.1.4 equality is reflexive, and text that
        # is no URI is compared as text below).
        return True
    try:
        return uris_equal(parse_uri(a), parse_uri(b))
    except UriError:
        return a == b


def aor_of(uri: Uri) -> str:
    """The canonical address-of-record of a SIP/SIPS/tel URI (RFC 3261 §10.3 step 5).

    ``sip:Alice@Example.COM:5060;transport=tcp`` → ``sip:Alice@example.com``: scheme
    and host lower-cased, port and parameters dropped, user kept as written
    (user parts are case-sensitive, §19.1.4).  A tel URI keeps its number.
    """
    if isinstance(uri, SipUri):
        user = f"{uri.user}@" if uri.user is not None else ""
        return f"{uri.scheme}:{user}{uri.host.lower()}"
    if isinstance(uri, TelUri):
        return f"tel:{uri.number}"
    return str(uri)
