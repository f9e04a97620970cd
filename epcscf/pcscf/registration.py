"""What the eP-CSCF remembers of each registration (TS 24.229 §5.2.2, RFC 3327, RFC 3608, RFC 5626).

The registrar is the core's; the eP-CSCF only watches REGISTER transactions
pass.  On a 2xx it keeps, per registered contact: the public identities the core
associated with it (P-Associated-URI, first = default), the Service-Route to use
for the WIC's originating requests, the flow (WebSocket connection) it came on,
the RFC 5626 instance and reg-id, and the expiry.  Bindings go away on
de-registration, on expiry (a clock timer) or when the same instance/reg-id
registers again (then the binding moves to the new flow, RFC 5626 §6).

Most registrations are refreshes that change nothing but the expiry: the same WIC on
the same flow sends the same Contact and the core answers with the same P-Associated-URI,
Service-Route and granted expiry.  Every text the bindings are made from is therefore
kept (``RegisterSource``) with the bindings it made; a 2xx whose texts are all equal
only moves the expiry of those bindings (and its timer, without re-arming it), which is
exactly what parsing it again would have produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from epcscf.sip.headers import split_header_list, to_aor
from epcscf.sip.message import Request, Response
from epcscf.sip.uri import NameAddr, UriError, parse_name_addr, parse_name_addr_list, uris_equal

DEFAULT_EXPIRES = 3600  # RFC 3261 §10.2.1.1 when neither Expires nor expires= is given


@dataclass
class RegistrationBinding:
    aor: str  # the public user identity in the REGISTER's To
    contact: str  # the WIC's Contact value
    flow_id: str
    instance_id: str | None
    reg_id: str | None
    associated_uris: tuple[str, ...]  # P-Associated-URI values, first = default identity
    service_route: tuple[str, ...]  # Route values for originating requests, in order (RFC 3608 §6)
    registered_at: float
    expires_at: float
    origin: str | None = None  # the WebSocket Origin of the flow (for the console)
    outbound: bool = False  # the WIC asked for RFC 5626 outbound (;ob in Path)
    _timer: IDelayedCall | None = field(default=None, repr=False, compare=False)
    _key: tuple[str, str] | None = field(default=None, repr=False, compare=False)
    #: what this binding was made from (a refresh with the same texts reuses it)
    _recorded: _Recorded | None = field(default=None, repr=False, compare=False)

    @property
    def default_identity(self) -> str:
        return self.associated_uris[0] if self.associated_uris else f"<{self.aor}>"

    def key(self) -> tuple[str, str]:
        """Bindings of one AOR are told apart by instance/reg-id, else by contact URI (RFC 5626 §6)."""
        key = self._key
        if key is None:
            if self.instance_id is not None:
                key = (self.aor, f"{self.instance_id}/{self.reg_id}")
            else:
                key = (self.aor, _contact_uri_text(self.contact))
            self._key = key
        return key


@dataclass(frozen=True, slots=True)  # one per registration, kept as long as it lives
class RegisterSource:
    """Every input of ``Registrations.record`` but the time, as the texts that arrived."""

    flow_id: str
    origin: str | None
    outbound: bool
    to: str | None  # the REGISTER's To (the AOR)
    contacts: list[str]  # the REGISTER's Contact lines
    expires: str | None  # the REGISTER's Expires
    granted_contacts: list[str]  # the 2xx's Contact lines (their expires=)
    granted_expires: str | None  # the 2xx's Expires
    associated_uris: list[str]  # the 2xx's P-Associated-URI lines
    service_route: list[str]  # the 2xx's Service-Route lines

    @classmethod
    def of(cls, request: Request, response: Response, flow_id: str, origin: str | None, outbound: bool) -> "RegisterSource":
        asked, granted = request.headers, response.headers
        contacts = asked.get_all("contact")
        granted_contacts = granted.get_all("contact")
        if granted_contacts == contacts:
            granted_contacts = contacts  # the usual echo: keep one copy of the texts
        return cls(
            flow_id,
            origin,
            outbound,
            asked.get("to"),
            contacts,
            asked.get("expires"),
            granted_contacts,
            granted.get("expires"),
            granted.get_all("p-associated-uri"),
            granted.get_all("service-route"),
        )

    def made(self, request: Request, response: Response, origin: str | None, outbound: bool) -> bool:
        """Whether this REGISTER and 2xx (on the same flow) are made of these very texts.

        Compared one by one, cheapest and likeliest to differ first, so that a refresh costs
        no parse and no copy; a REGISTER/2xx that differs usually stops at the first test."""
        # Each header index read once, by canonical name (a refresh on every flow comes here).
        asked, granted = request.headers.lookup_index(), response.headers.lookup_index()
        # Each index list (or None for none) against what ``get_all`` gave when the bindings
        # were made, and each first line against what ``get`` gave: no helper call per field.
        for kept, lines in (
            (self.granted_contacts, granted.get("contact")),
            (self.contacts, asked.get("contact")),
            (self.service_route, granted.get("service-route")),
            (self.associated_uris, granted.get("p-associated-uri")),
        ):
            if not (kept == lines if lines else not kept):
                return False
        for first, lines in ((self.to, asked.get("to")), (self.granted_expires, granted.get("expires")),
                             (self.expires, asked.get("expires"))):
            if first != (lines[0] if lines else None):
                return False
        return self.outbound == outbound and self.origin == origin


@dataclass(eq=False, slots=True)
class _Recorded:
    """The bindings one ``RegisterSource`` made, each with the expiry it was granted."""

    source: RegisterSource
    bindings: tuple[RegistrationBinding, ...]
    expires: tuple[int, ...]


def _contact_uri_text(value: str) -> str:
    try:
        return str(parse_name_addr(value).uri)
    except (UriError, ValueError):
        return value.strip()


def _contacts(message: Request | Response) -> list[NameAddr]:
    result: list[NameAddr] = []
    for value in message.headers.get_all("Contact"):
        if value.strip() == "*":
            continue
        try:
            result.extend(parse_name_addr_list(value))
        except (UriError, ValueError):
            continue
    return result


def _expires_header(message: Request | Response) -> int | None:
    value = message.headers.get("Expires")
    if value is None:
        return None
    try:
        return max(0, int(value.strip()))
    except ValueError:
        return None


def _contact_expires(contact: NameAddr, message: Request | Response) -> int | None:
    value = contact.params.get("expires")
    if value is not None:
        try:
            return max(0, int(value))
        except ValueError:
            pass
    return _expires_header(message)


def _same_contact(a: NameAddr, b: NameAddr) -> bool:
    instance_a, instance_b = a.params.get("+sip.instance"), b.params.get("+sip.instance")
    if instance_a is not None and instance_b is not None:
        return instance_a == instance_b and a.params.get("reg-id") == b.params.get("reg-id")
    return uris_equal(a.uri, b.uri)


class Registrations:
    """All registration bindings of the eP-CSCF, indexed by flow and by AOR."""

    def __init__(
        self,
        clock: IReactorTime,
        on_removed: Callable[[RegistrationBinding, str], None] | None = None,
    ) -> None:
        self.clock = clock
        self.on_removed = on_removed
        self._bindings: dict[tuple[str, str], RegistrationBinding] = {}
        #: the same bindings by flow id: every request from a WIC asks for its flow's binding,
        #: which must not cost a scan of every registration of the eP-CSCF
        self._by_flow: dict[str, dict[tuple[str, str], RegistrationBinding]] = {}

    def all(self) -> list[RegistrationBinding]:
        return list(self._bindings.values())

    def for_flow(self, flow_id: str) -> list[RegistrationBinding]:
        on_flow = self._by_flow.get(flow_id)
        return list(on_flow.values()) if on_flow else []

    def has_aor_on_flow(self, flow_id: str, aor: str | None) -> bool:
        """Whether a binding of ``aor`` lives on the flow (``for_flow`` without the list)."""
        on_flow = self._by_flow.get(flow_id)
        if on_flow:
            for binding in on_flow.values():  # one binding per flow, usually: no generator
                if binding.aor == aor:
                    return True
        return False

    def for_aor(self, aor: str) -> list[RegistrationBinding]:
        return [binding for binding in self._bindings.values() if binding.aor == aor]

    def registration_for_request(self, flow_id: str) -> RegistrationBinding | None:
        """The newest live binding on a flow: whose identities and Service-Route a request uses."""
        on_flow = self._by_flow.get(flow_id)
        if not on_flow:
            return None
        if len(on_flow) == 1:  # the usual case: one WIC, one registration per flow
            for binding in on_flow.values():
                return binding
        return max(on_flow.values(), key=_registered_at)

    def record(
        self, request: Request, response: Response, flow_id: str, origin: str | None = None, outbound: bool = False
    ) -> list[RegistrationBinding]:
        """Update from a 2xx to a REGISTER that came from the WIC on ``flow_id``.

        Returns the bindings now live for the contacts the REGISTER carried.  A refresh
        made of the same texts as the one that made the live bindings updates those
        bindings in place (new registration time and expiry); anything else replaces them.
        """
        on_flow = self._by_flow.get(flow_id)
        if on_flow:
            # A refresh comes on the flow of the bindings it refreshes (else it moves them).
            for binding in on_flow.values():
                recorded = binding._recorded
                if recorded is not None and recorded.source.made(request, response, origin, outbound) and self._refresh(recorded):
                    return list(recorded.bindings)
        return self._record(RegisterSource.of(request, response, flow_id, origin, outbound), request, response)

    def _refresh(self, recorded: _Recorded) -> bool:
        """Restart the expiry of bindings made from the same texts; False if one has gone."""
        live = self._bindings
        for binding in recorded.bindings:
            if live.get(binding._key) is not binding:  # type: ignore[arg-type]
                return False
        now = self.clock.seconds()
        for binding, expires in zip(recorded.bindings, recorded.expires):
            binding.registered_at = now
            binding.expires_at = deadline = now + expires
            timer = binding._timer
            if timer is not None and timer.active() and timer.getTime() <= deadline:
                # Later than armed: twisted moves the call lazily, no heap work (RFC 3261 §10.3
                # step 7: the binding now lasts the granted time from this refresh).
                timer.reset(expires)
            else:
                self._cancel_timer(binding)
                binding._timer = self.clock.callLater(expires, self._expire, binding)
            self._touch(binding)
        return True

    def _record(self, source: RegisterSource, request: Request, response: Response) -> list[RegistrationBinding]:
        aor = to_aor(request)  # worked out once per message (admission asked already)
        if aor is None:
            return []
        flow_id = source.flow_id
        associated = tuple(value for header in source.associated_uris for value in split_header_list(header))
        service_route = tuple(value for header in source.service_route for value in split_header_list(header))
        now = self.clock.seconds()
        if any(value.strip() == "*" for value in source.contacts):
            # RFC 3261 §10.2.2: "Contact: *" with Expires: 0 removes every binding of the AOR.
            for binding in [b for b in self.for_aor(aor) if b.flow_id == flow_id]:
                self._remove(binding, "deregistered")
            return []
        contacts = _contacts(request)
        # The registrar usually echoes the Contact lines as they came: then they parse alike.
        granted = contacts if source.granted_contacts == source.contacts else _contacts(response)
        live: list[RegistrationBinding] = []
        granted_expires: list[int] = []
        # A Contact line of one contact already written as we write it: its text is kept as is
        # (the same string as in RegisterSource: one copy per registration).
        written = {text: text for text in source.contacts}
        for contact in contacts:
            match = next((c for c in granted if _same_contact(c, contact)), None)
            expires = _contact_expires(match, response) if match is not None else 0
            if expires is None:
                expires = _contact_expires(contact, request)
            if expires is None:
                expires = DEFAULT_EXPIRES
            instance_id = contact.params.get("+sip.instance")
            reg_id = contact.params.get("reg-id")
            binding = RegistrationBinding(
                aor=aor,
                contact=written.get(text := str(contact), text),
                flow_id=flow_id,
                instance_id=instance_id,
                reg_id=reg_id,
                associated_uris=associated or (f"<{aor}>",),
                service_route=service_route,
                registered_at=now,
                expires_at=now + expires,
                origin=source.origin,
                outbound=source.outbound,
            )
            # RFC 5626 §6: instance/reg-id, else the contact URI (already parsed here).
            key = binding._key = (aor, f"{instance_id}/{reg_id}") if instance_id is not None else (aor, str(contact.uri))
            previous = self._bindings.get(key)
            if previous is not None:
                self._cancel_timer(previous)
                self._forget(key, previous)
            if expires == 0:
                if previous is not None:
                    self._notify(previous, "deregistered")
                continue
            self._store(key, binding)
            binding._timer = self.clock.callLater(expires, self._expire, binding)
            live.append(binding)
            granted_expires.append(expires)
        if live and len(live) == len(contacts):
            # Every contact is bound: the same texts again will be a refresh of these.
            recorded = _Recorded(source, tuple(live), tuple(granted_expires))
            for binding in live:
                binding._recorded = recorded
        return live

    def _touch(self, binding: RegistrationBinding) -> None:
        """Move a refreshed binding last in both indexes, where a replacing one would go."""
        key = binding.key()
        del self._bindings[key]
        self._bindings[key] = binding
        on_flow = self._by_flow[binding.flow_id]
        del on_flow[key]
        on_flow[key] = binding

    def _expire(self, binding: RegistrationBinding) -> None:
        binding._timer = None
        if self._bindings.get(binding.key()) is binding:
            self._remove(binding, "expired")

    def _remove(self, binding: RegistrationBinding, reason: str) -> None:
        self._cancel_timer(binding)
        key = binding.key()
        if self._bindings.get(key) is binding:
            self._forget(key, binding)
            self._notify(binding, reason)

    def _store(self, key: tuple[str, str], binding: RegistrationBinding) -> None:
        self._bindings[key] = binding
        self._by_flow.setdefault(binding.flow_id, {})[key] = binding

    def _forget(self, key: tuple[str, str], binding: RegistrationBinding) -> None:
        del self._bindings[key]
        on_flow = self._by_flow.get(binding.flow_id)
        if on_flow is not None:
            on_flow.pop(key, None)
            if not on_flow:
                del self._by_flow[binding.flow_id]
        # Its texts no longer make only live bindings: the next such 2xx is parsed again.
        binding._recorded = None

    def _notify(self, binding: RegistrationBinding, reason: str) -> None:
        if self.on_removed is not None:
            self.on_removed(binding, reason)

    @staticmethod
    def _cancel_timer(binding: RegistrationBinding) -> None:
        if binding._timer is not None and binding._timer.active():
            binding._timer.cancel()
        binding._timer = None

    def remove(self, binding: RegistrationBinding, reason: str = "removed") -> None:
        self._remove(binding, reason)

    def reschedule(self, binding: RegistrationBinding, expires: int) -> None:
        """The network moved the binding's expiry to ``expires`` seconds from now (TS 24.229
        §5.2.5.2, reg-event ``shortened``); the next refresh with the same texts re-arms it."""
        if self._bindings.get(binding.key()) is not binding:
            return
        self._cancel_timer(binding)
        binding.expires_at = self.clock.seconds() + expires
        binding._timer = self.clock.callLater(expires, self._expire, binding)

    def close(self) -> None:
        """Cancel every expiry timer (service stop)."""
        for binding in self._bindings.values():
            self._cancel_timer(binding)
        self._bindings.clear()
        self._by_flow.clear()


def _registered_at(binding: RegistrationBinding) -> float:
    return binding.registered_at
