"""ICE-lite toward the WIC (RFC 8445 §2.5; TS 24.371 allows an ICE-lite eP-CSCF).

Theory of operation.  A lite agent sends no checks.  It answers the full peer's Binding requests
on its host sockets and selects the pair on which a request carrying USE-CANDIDATE arrives
(RFC 8445 §7.3.1.5, §8.2); a later USE-CANDIDATE on another pair moves the selection (the
controlling side renominated).  Consent (RFC 7675 §5.1, mirrored: we only listen): authenticated
requests keep arriving on the selected pair; the agent's `ConsentFreshness` expires when they stop.

`LiteResponder` is the sans-IO STUN part (message in → response out + what it meant);
`LiteBackend` binds the sockets and routes datagrams.  STUN parsing, MESSAGE-INTEGRITY and
FINGERPRINT come from `aioice.stun`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aioice import stun
from aioice.candidate import Candidate
from twisted.logger import Logger

from epcscf.ice.ports import UdpPortPool
from epcscf.ice.sockets import BackendListener, EarlyDatagrams, bind_udp, host_candidate, is_stun
from epcscf.ice.types import Address, IceAgentConfig, IceClosed, IceCredentials, IceError, IceStats, SelectedPair

log = Logger()


@dataclass
class _CredentialGeneration:
    local: IceCredentials
    remote_ufrag: str | None = None


@dataclass(frozen=True)
class LiteOutcome:
    """What an incoming STUN message meant; `response` is None when nothing is sent back."""

    response: stun.Message | None
    authenticated: bool = False
    use_candidate: bool = False
    current_generation: bool = False


class LiteResponder:
    """Answers Binding requests with short-term credentials (RFC 8445 §7.3)."""

    def __init__(self, credentials: IceCredentials) -> None:
        self.current = _CredentialGeneration(credentials)
        # During an ICE restart the old credentials stay valid on the old pair (RFC 8445 §9).
        self.previous: _CredentialGeneration | None = None

    def set_remote_ufrag(self, ufrag: str) -> None:
        self.current.remote_ufrag = ufrag

    def restart(self, credentials: IceCredentials) -> None:
        self.previous = self.current
        self.current = _CredentialGeneration(credentials)

    def restart_complete(self) -> None:
        self.previous = None

    def answer(self, message: stun.Message, source: Address) -> LiteOutcome:
        if message.message_class != stun.Class.REQUEST:
            # Indications (keepalives) and stray responses need no answer: a lite agent sends no requests.
            return LiteOutcome(None)
        if message.message_method != stun.Method.BINDING:
            return LiteOutcome(_error(message, 400, "Bad Request"))
        # RFC 8489 §9.1.3: without USERNAME and MESSAGE-INTEGRITY the request is a 400.
        if "USERNAME" not in message.attributes or "MESSAGE-INTEGRITY" not in message.attributes:
            return LiteOutcome(_error(message, 400, "Bad Request"))
        generation = self._authenticate(message)
        if generation is None:
            return LiteOutcome(_error(message, 401, "Unauthenticated"))
        # A lite agent is always controlled (RFC 8445 §6.1.1), yet it answers success even to a
        # peer that also claims ICE-CONTROLLED (Chrome, webrtc bug 7478; mediasoup does the same)
        # instead of 487 (RFC 8445 §7.3.1.1).
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
        )
        # RFC 8445 §7.3.1.2: XOR-MAPPED-ADDRESS is the source of the request.
        response.attributes["XOR-MAPPED-ADDRESS"] = source
        # RFC 8445 §7.3: signed with our password, then FINGERPRINT (add_message_integrity adds both).
        response.add_message_integrity(generation.local.pwd.encode("utf8"))
        return LiteOutcome(
            response,
            authenticated=True,
            use_candidate="USE-CANDIDATE" in message.attributes,
            current_generation=generation is self.current,
        )

    def _authenticate(self, message: stun.Message) -> _CredentialGeneration | None:
        # RFC 8445 §7.3: USERNAME is "our ufrag:their ufrag"; their ufrag is checked once known.
        local_ufrag, colon, remote_ufrag = str(message.attributes["USERNAME"]).partition(":")
        for generation in (self.current, self.previous):
            if generation is None or colon != ":" or local_ufrag != generation.local.ufrag:
                continue
            if generation.remote_ufrag not in (None, remote_ufrag):
                continue
            if message.check_message_integrity(generation.local.pwd.encode("utf8")):
                return generation
        return None


def _error(request: stun.Message, code: int, reason: str) -> stun.Message:
    response = stun.Message(
        message_method=request.message_method,
        message_class=stun.Class.ERROR,
        transaction_id=request.transaction_id,
    )
    response.attributes["ERROR-CODE"] = (code, reason)
    # RFC 8489 §9.1.3: a 400/401 answers an unauthenticated request, so it is not signed;
    # RFC 8445 §7.3: FINGERPRINT is always added.
    response.add_fingerprint()
    return response


class _LiteSocket(asyncio.DatagramProtocol):
    def __init__(self, backend: LiteBackend) -> None:
        self.backend = backend
        self.transport: asyncio.DatagramTransport | None = None
        self.candidate: Candidate | None = None
        self.pool_port: int | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.backend.received(self, data, (addr[0], addr[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def local_address(self) -> Address:
        assert self.candidate is not None
        return (self.candidate.host, self.candidate.port)


class LiteBackend:
    """Host sockets + `LiteResponder` + pair selection for one media stream."""

    def __init__(
        self,
        config: IceAgentConfig,
        credentials: IceCredentials,
        pool: UdpPortPool | None,
        listener: BackendListener,
        stats: IceStats,
    ) -> None:
        self._config = config
        self._pool = pool
        self._listener = listener
        self._stats = stats
        self.responder = LiteResponder(credentials)
        self._sockets: list[_LiteSocket] = []
        self._selected: tuple[_LiteSocket, Address] | None = None
        self._early = EarlyDatagrams()
        self._closing = False

    @property
    def credentials(self) -> IceCredentials:
        return self.responder.current.local

    @property
    def controlling(self) -> bool:
        # RFC 8445 §6.1.1: a lite agent is always controlled.
        return False

    @property
    def candidates(self) -> list[Candidate]:
        return [s.candidate for s in self._sockets if s.candidate is not None]

    @property
    def selected(self) -> SelectedPair | None:
        if self._selected is None:
            return None
        sock, remote = self._selected
        return SelectedPair(sock.local_address, remote)

    def gather_now(self) -> bool:
        return False  # the lite responder binds its sockets (no parking, see epcscf.ice.shelf)

    async def gather(self) -> None:
        try:
            for index, address in enumerate(self._config.bind_addresses):
                transport, sock, port = await bind_udp(lambda: _LiteSocket(self), address, self._pool)
                sock.pool_port = port
                if self._closing:
                    # close() ran while we were binding: this socket must not outlive it.
                    transport.close()
                    await sock.closed
                    if port is not None and self._pool is not None:
                        self._pool.release(port)
                    raise IceClosed("the ICE agent was closed while gathering")
                sock.candidate = host_candidate(transport.get_extra_info("sockname"), self._config.advertised_address, index)
                self._sockets.append(sock)
        except BaseException:
            if not self._closing:
                await self.close()
            raise

    def set_remote(self, credentials: IceCredentials, remote_is_lite: bool) -> None:
        if remote_is_lite:
            # RFC 8445 §6.1.1: two lite agents cannot run checks; there is no controlling side.
            raise IceError("the peer is ICE-lite too: a lite agent needs a full peer (set [media] ice_mode = full)")
        self.responder.set_remote_ufrag(credentials.ufrag)

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        # A lite agent learns the peer's address from its checks; candidates are not needed.
        pass

    def begin_checks(self) -> None:
        # RFC 8445 §2.5: a lite agent sends no checks; it waits for the peer's.
        pass

    async def restart(self, credentials: IceCredentials) -> None:
        # Same sockets, new credentials; the old ones stay valid until the peer nominates anew.
        self.responder.restart(credentials)

    def send(self, data: bytes) -> bool:
        if self._selected is None or self._closing:
            return False
        sock, remote = self._selected
        assert sock.transport is not None
        sock.transport.sendto(data, remote)
        return True

    def send_consent_check(self) -> None:
        # RFC 7675 §5.1 mirrored: lite only monitors the peer's checks.
        pass

    def received(self, sock: _LiteSocket, data: bytes, source: Address) -> None:
        if self._closing:
            return
        if not is_stun(data):
            self._data(sock, data, source)
            return
        try:
            message = stun.parse_message(data)
        except ValueError as exc:
            # No trustworthy transaction id to answer on (bad length or FINGERPRINT): drop.
            self._stats.checks_rejected += 1
            log.debug("ICE-lite: dropped malformed STUN from {source}: {error}", source=source, error=str(exc))
            return
        outcome = self.responder.answer(message, source)
        if outcome.response is None:
            return
        self._stats.checks_received += 1
        assert sock.transport is not None
        sock.transport.sendto(bytes(outcome.response), source)
        if not outcome.authenticated:
            self._stats.checks_rejected += 1
            return
        if outcome.use_candidate and outcome.current_generation:
            self._select(sock, source)
        if self._selected == (sock, source):
            self._listener.consent_evidence()

    def _select(self, sock: _LiteSocket, source: Address) -> None:
        if self._selected == (sock, source) and self.responder.previous is None:
            return
        self._selected = (sock, source)
        self.responder.restart_complete()
        self._listener.pair_selected(SelectedPair(sock.local_address, source))
        for data in self._early.take_matching(sock, source):
            self._deliver(data)
        self._stats.datagrams_dropped += self._early.dropped
        self._early.dropped = 0

    def _data(self, sock: _LiteSocket, data: bytes, source: Address) -> None:
        if self._selected is None:
            self._early.keep(data, sock, source)
        elif self._selected == (sock, source):
            self._deliver(data)
        else:
            # RFC 7675 §5.1: media only on the selected pair.
            self._stats.datagrams_dropped += 1

    def _deliver(self, data: bytes) -> None:
        self._stats.datagrams_received += 1
        self._listener.datagram(data)

    async def close(self) -> None:
        self._closing = True
        self._early.clear()
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            if sock.transport is not None:
                sock.transport.close()
        for sock in sockets:
            if sock.transport is not None:
                await sock.closed
            if self._pool is not None and sock.pool_port is not None:
                self._pool.release(sock.pool_port)
        self._selected = None
