"""Full ICE toward the WIC on aioice (RFC 8445, RFC 7675 consent).

Theory of operation.  aioice runs the checks, pacing, role conflicts and nomination.  We extend
`aioice.Connection` per instance (no fork, no import-time monkeypatching) where it does not fit
a media gateway:

- binding: `get_component_candidates` binds only the configured addresses, on ports from the
  shared `UdpPortPool`, and writes the advertised (1:1 NAT) address into the candidates; aioice's
  interface enumeration is skipped (`gather_candidates`).  With a `SocketShelf`, a socket parked
  by an earlier call is taken instead of binding, and a closing socket is parked instead of
  closed (`_StunSocket.close`); the new call puts a new protocol on it, so nothing but the bound
  socket crosses calls;
- consent: aioice's own `query_consent` (module-global timing, close as the only signal) is
  replaced by the agent's clock-driven `ConsentFreshness`, which sends its checks through
  `send_consent_check` below;
- data: non-STUN datagrams (RFC 7983) go straight to the agent for the selected pair only,
  instead of aioice's unbounded queue;
- selection: `check_complete` reports every change of the nominated pair (renomination);
- nomination: regular only (RFC 8445 §8.1.1 — aggressive nomination is gone from
  RFC 8445).  aioice 0.13 reads `remote_is_lite` in one place, `check_start`, to choose
  aggressive nomination when controlling a full peer; pinning it to True selects aioice's
  regular nomination path.  Nothing else in aioice 0.13 reads it.

An ICE restart (RFC 8445 §9) is a new `FullGeneration` (new credentials, sockets and Connection);
`FullBackend` keeps the old one sending until the new one selects a pair.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aioice.ice
from aioice import mdns, stun
from aioice.candidate import Candidate
from twisted.logger import Logger

from epcscf.ice.connect import ConnectWithoutTask
from epcscf.ice.host_socket import SHELF_KIND, _ParkedHostSocket, _StunSocket
from epcscf.ice.ports import UdpPortPool
from epcscf.ice.shelf import SocketShelf
from epcscf.ice.sockets import BackendListener, EarlyDatagrams, bind_udp, host_candidate
from epcscf.ice.stun_wire import sign
from epcscf.ice.types import Address, IceAgentConfig, IceClosed, IceCredentials, IceStats, SelectedPair

log = Logger()

# Outstanding consent transactions kept per generation; older ones are forgotten (they only
# matter until the next response or the 30 s expiry, RFC 7675 §5.1).
CONSENT_OUTSTANDING = 16

class _AgentConnection(ConnectWithoutTask):
    """One aioice Connection, bound and reporting the way `FullGeneration` needs.

    It overrides and calls aioice 0.13's own methods (`_check_periodic`, `_valid_username`,
    `_add_remote_candidate`, `_end_remote_candidates`), which older releases lack: hence
    ``aioice >= 0.13, < 0.14`` in setup.cfg."""

    def __init__(self, generation: FullGeneration, controlling: bool, credentials: IceCredentials) -> None:
        # Weak: the generation owns this connection, a strong reference back would be a cycle.
        self._generation = weakref.ref(generation)
        super().__init__(
            ice_controlling=controlling,
            components=1,  # rtcp-mux only (RFC 5761; browsers require it)
            use_ipv4=False,  # aioice's interface enumeration is not used, see get_component_candidates
            use_ipv6=False,
            local_username=credentials.ufrag,
            local_password=credentials.pwd,
        )

    # Pinned: see the module docstring (regular nomination).
    @property  # type: ignore[override]
    def remote_is_lite(self) -> bool:
        return True

    @remote_is_lite.setter
    def remote_is_lite(self, value: bool) -> None:
        pass

    async def gather_candidates(self) -> None:
        """aioice's gathering without its interface enumeration (``ifaddr`` lists every
        interface and address of the host, a syscall-heavy walk, on every call): the addresses
        it would hand over are ignored by `get_component_candidates` anyway."""
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        # Awaited in turn rather than through ``asyncio.gather`` (a task and a gathering future
        # per call): there is one component (rtcp-mux, RFC 5761), so nothing runs in parallel.
        for component in sorted(self._components):
            self._local_candidates += await self.get_component_candidates(component=component, addresses=[])
        self._local_candidates_end = True

    def gather_from_shelf(self) -> bool:
        """Gathering at once, without an await, when the shelf holds a socket out of quarantine
        for every bind address (the usual call on a busy node); False: `gather_candidates`."""
        shelf = self.generation.shelf
        addresses = self.generation.config.bind_addresses
        if shelf is None or self._local_candidates_start or not all(shelf.ready((SHELF_KIND, a)) for a in addresses):
            return False
        self._local_candidates_start = True
        for index, address in enumerate(addresses):
            parked = shelf.take((SHELF_KIND, address))
            assert isinstance(parked, _ParkedHostSocket)
            self._local_candidates.append(self._adopt(parked, address, index))
        self._local_candidates_end = True
        return True

    def _adopt(self, parked: _ParkedHostSocket, address: str, index: int) -> Candidate:
        """A parked socket becomes this call's: a new protocol, nothing of the old call's."""
        protocol = _StunSocket(self, address)
        parked.transport.set_protocol(protocol)
        protocol.connection_made(parked.transport)
        protocol.pool_port = parked.port
        return self._host(protocol, index)

    def _host(self, protocol: _StunSocket, index: int) -> Candidate:
        protocol.local_candidate = host_candidate(protocol.transport.get_extra_info("sockname"), self.generation.config.advertised_address, index)
        self._protocols.append(protocol)
        return protocol.local_candidate

    async def get_component_candidates(self, component: int, addresses: list[str], timeout: int = 5) -> list[Candidate]:
        config = self.generation.config
        candidates = []
        shelf = self.generation.shelf
        for index, address in enumerate(config.bind_addresses):
            parked = shelf.take((SHELF_KIND, address)) if shelf is not None else None
            if isinstance(parked, _ParkedHostSocket):
                candidates.append(self._adopt(parked, address, index))
                continue
            transport, protocol, port = await bind_udp(lambda: _StunSocket(self, address), address, self.generation.pool)
            protocol.pool_port = port
            if self.generation.closing:
                # close() ran while we were binding: this socket must not outlive it.
                await protocol.close()
                if port is not None and self.generation.pool is not None and not protocol.parked:
                    self.generation.pool.release(port)
                raise IceClosed("the ICE agent was closed while gathering")
            candidates.append(self._host(protocol, index))
        return candidates

    def _check_periodic(self) -> bool:
        """aioice's Ta tick (RFC 8445 §6.1.4.2: start the next Waiting, else Frozen, pair), which
        asks for another tick 20 ms later whenever it started one.  With no pair left Waiting or
        Frozen and every remote candidate known, that tick has nothing to start (triggered checks
        start on their own, RFC 8445 §7.3.1.4): `start_checks` goes on to wait for the check list
        instead of sleeping once more (a timer and a loop turn per call)."""
        if not super()._check_periodic():
            return False
        # A pair just handed to `check_start_task` is still Waiting until its task runs.
        return self._remote_candidates_expected() or any(
            pair.state in _STARTABLE and pair.task is None for pair in self._check_list)

    def add_remote_now(self, candidate: Candidate | None) -> None:
        """aioice's `add_remote_candidate` for an address or end-of-candidates, which has
        nothing to wait for (only an mDNS name is resolved), run as a plain call and without
        aioice's copy of the candidate: ours was parsed from the WIC's SDP for this agent alone."""
        if self._remote_candidates_end:
            raise ValueError("Cannot add remote candidate after end-of-candidates.")
        if self._closing:
            return
        if candidate is None:
            self._remote_candidates_end = True
            if not self._remote_candidates_resolving:
                self._end_remote_candidates()
            return
        self._add_remote_candidate(candidate, candidate.host)

    async def query_consent(self) -> None:
        # Replaced by the agent's ConsentFreshness (RFC 7675 timing from config, on the clock).
        return None

    def request_received(self, message: stun.Message, addr: tuple[str, int], protocol: aioice.ice.StunProtocol) -> None:
        """aioice's answer to a check, its common case (an authenticated Binding request, no
        role conflict) with the response encoded once (`stun_wire.sign`); anything else goes
        through aioice's own `request_received`."""
        generation = self._generation()  # the property's weak reference, read once
        generation.stats.checks_received += 1
        attributes = message.attributes
        if (
            self._closing
            or message.message_method != stun.Method.BINDING
            or "ICE-CONTROLLING" in attributes and self.ice_controlling
            or "ICE-CONTROLLED" in attributes and not self.ice_controlling
            or "MESSAGE-INTEGRITY" not in attributes
            or "USERNAME" not in attributes
            or not isinstance(protocol, _StunSocket)
        ):
            super().request_received(message, addr, protocol)
            return
        key = generation.local_key
        if not (self._valid_username(attributes["USERNAME"]) and message.check_message_integrity(key)):
            self.respond_error(message, addr, protocol, (401, "Unauthenticated"))  # RFC 8489 §9.1.3
            return
        # RFC 8445 §7.3.1: a Binding response, XOR-MAPPED-ADDRESS the source, signed with our pwd.
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=message.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        protocol.send_stun(response, addr, sign(response, key))
        # As aioice: checks before connect() wait for the remote password (RFC 8445 §7.3).
        if not self._early_checks_done:
            self._early_checks.append((message, addr, protocol))
        else:
            self.check_incoming(message, addr, protocol)

    def respond_error(self, request: stun.Message, addr: tuple[str, int], protocol: aioice.ice.StunProtocol, error_code: tuple[int, str]) -> None:
        self.generation.stats.checks_rejected += 1
        super().respond_error(request, addr, protocol, error_code)

    def data_received(self, data: bytes, component: int) -> None:
        # Only reached for datagrams that look like STUN but do not parse: drop them.
        self.generation.stats.datagrams_dropped += 1

    def check_complete(self, pair: aioice.ice.CandidatePair) -> None:
        super().check_complete(pair)
        nominated = self._nominated.get(1)
        if nominated is not None:
            self.generation.nominated(nominated)

    @property
    def generation(self) -> FullGeneration:
        return self._generation()  # type: ignore[return-value]  # alive while it owns this connection

    async def close(self) -> None:
        sockets = [p for p in self._protocols if isinstance(p, _StunSocket) and p.pool_port is not None]
        await super().close()
        if self.generation.pool is not None:
            # A parked socket's port stays bound (the shelf's now).
            self.generation.pool.release(*(s.pool_port for s in sockets if not s.parked and s.pool_port is not None))
        # aioice keeps its pairs after closing, each with its socket, whose receiver is this
        # connection, and with its cancelled check task, whose exception's frames refer to the
        # pair: cycles per agent that only the collector would free.
        for pair in self._check_list:
            pair.task = None
        self._check_list.clear()


def _ignore(*_: object) -> None:
    """A closed generation's report: nobody listens any more."""


class _ClosedListener:
    """``BackendListener`` of a closed back-end."""

    pair_selected = checks_failed = datagram = consent_evidence = consent_revoked = staticmethod(_ignore)


_CLOSED_LISTENER: BackendListener = _ClosedListener()


# The pair states aioice's Ta tick starts a check from.
_STARTABLE = (aioice.ice.CandidatePair.State.WAITING, aioice.ice.CandidatePair.State.FROZEN)


@functools.lru_cache(maxsize=1024)  # bounded: remote addresses come from peers
def _ip_version(address: str) -> int:
    return ipaddress.ip_address(address).version


def _can_pair(local: Candidate, remote: Candidate) -> bool:
    """aioice's `Candidate.can_pair_with` (RFC 8445 §6.1.2.2: same component, transport and
    address family) with each address's family worked out once, not parsed twice per test."""
    return (local.component == remote.component
            and local.transport.lower() == remote.transport.lower()
            and _ip_version(local._network_host) == _ip_version(remote._network_host))


class _ConsentTransaction:
    """Stands in an aioice `StunProtocol.transactions` slot for one consent check (no retransmission)."""

    def __init__(self, generation: FullGeneration, request: stun.Message) -> None:
        self.generation = generation
        self.request = request

    def response_received(self, message: stun.Message, addr: tuple[str, int]) -> None:
        self.generation.consent_response(self, message, addr)


class FullGeneration:
    """One set of local credentials, sockets and aioice Connection (one ICE 'generation')."""

    def __init__(
        self,
        config: IceAgentConfig,
        credentials: IceCredentials,
        controlling: bool,
        pool: UdpPortPool | None,
        stats: IceStats,
        shelf: SocketShelf | None,
        on_selected: Callable[[FullGeneration, SelectedPair], None],
        on_failed: Callable[[FullGeneration, str], None],
        on_data: Callable[[FullGeneration, bytes], None],
        on_consent: Callable[[FullGeneration, int | None], None],
    ) -> None:
        self.config = config
        self.credentials = credentials
        # Our ice-pwd as the STUN short-term key (RFC 8445 §7.2.2), for every check we answer.
        self.local_key = credentials.pwd.encode("utf8")
        self.pool = pool
        self.shelf = shelf
        self.stats = stats
        self._on_selected = on_selected
        self._on_failed = on_failed
        self._on_data = on_data
        self._on_consent = on_consent
        self.connection = _AgentConnection(self, controlling, credentials)
        self.remote: IceCredentials | None = None
        self._gathered = False
        self._remote_count = 0
        self._end_of_candidates = False
        self._selected: aioice.ice.CandidatePair | None = None
        self._early = EarlyDatagrams()
        self._consent_outstanding: OrderedDict[bytes, tuple[_ConsentTransaction, aioice.ice.StunProtocol]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._checks_begun = False
        self._closing = False

    @property
    def candidates(self) -> list[Candidate]:
        return self.connection.local_candidates

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def selected(self) -> SelectedPair | None:
        pair = self._selected
        if pair is None:
            return None
        return SelectedPair(pair.local_addr, pair.remote_addr)

    async def gather(self) -> None:
        await self.connection.gather_candidates()
        self._gathered = True

    def gather_now(self) -> bool:
        """Gathered at once from parked sockets (True), or `gather` is needed."""
        self._gathered = self.connection.gather_from_shelf()
        return self._gathered

    def set_remote(self, credentials: IceCredentials, remote_is_lite: bool) -> None:
        self.remote = credentials
        self.connection.remote_username = credentials.ufrag
        self.connection.remote_password = credentials.pwd
        if remote_is_lite:
            # RFC 8445 §6.1.1: against a lite peer the full agent is always controlling.
            self.connection.ice_controlling = True

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        if self._closing or self._end_of_candidates:
            return
        if candidate is None:
            self._end_of_candidates = True
        else:
            locals_ = [c for c in self.connection._local_candidates if _can_pair(c, candidate)]
            # Bound the check list (RFC 8445 §6.1.2.5 limit on candidate pairs).
            if (self._remote_count + 1) * max(len(locals_), 1) > self.config.max_pairs:
                log.info("ICE: remote candidate {candidate} ignored: more than {limit} pairs", candidate=candidate.to_sdp(), limit=self.config.max_pairs)
                return
            self._remote_count += 1
        if candidate is None or not mdns.is_mdns_hostname(candidate.host):
            # An address, or end-of-candidates: nothing to wait for, so no task per candidate.
            self.connection.add_remote_now(candidate)
        else:
            self._spawn(self.connection.add_remote_candidate(candidate))

    def begin_checks(self) -> None:
        if not self._checks_begun and self.remote is not None and self._gathered and not self._closing:
            self._checks_begun = True
            # aioice's connect() as calls, without its task (`epcscf.ice.connect`).
            self.connection.start_checks(self._checks_failed)

    def _checks_failed(self, reason: str) -> None:
        if not self._closing:
            self._on_failed(self, f"ICE checks failed: {reason}")

    def nominated(self, pair: aioice.ice.CandidatePair) -> None:
        if self._closing or pair is self._selected:
            return
        self._selected = pair
        for data in self._early.take_matching(pair.protocol, pair.remote_addr):
            self._on_data(self, data)
        self.stats.datagrams_dropped += self._early.dropped
        self._early.dropped = 0
        self._on_selected(self, SelectedPair(pair.local_addr, pair.remote_addr))

    def received_data(self, protocol: aioice.ice.StunProtocol, data: bytes, source: Address) -> None:
        if self._closing:
            return
        pair = self._selected
        if pair is None:
            self._early.keep(data, protocol, source)
        elif pair.protocol is protocol and pair.remote_addr == source:
            self._on_data(self, data)
        else:
            # RFC 7675 §5.1: media only on the selected pair.
            self.stats.datagrams_dropped += 1

    def send(self, data: bytes) -> bool:
        pair = self._selected
        if pair is None or self._closing:
            return False
        pair.protocol.transport.sendto(data, pair.remote_addr)
        return True

    def send_consent_check(self) -> None:
        """RFC 7675 §5.1: one Binding request, new transaction id, no retransmission."""
        pair = self._selected
        if pair is None or self.remote is None or self._closing:
            return
        request = self.connection.build_request(pair, nominate=False)
        wire = sign(request, self.remote.pwd.encode("utf8"))
        transaction = _ConsentTransaction(self, request)
        pair.protocol.transactions[request.transaction_id] = transaction  # type: ignore[assignment]
        self._consent_outstanding[request.transaction_id] = (transaction, pair.protocol)
        while len(self._consent_outstanding) > CONSENT_OUTSTANDING:
            self._forget_consent(next(iter(self._consent_outstanding)))
        self.stats.consent_checks_sent += 1
        pair.protocol.transport.sendto(wire, pair.remote_addr)

    def consent_response(self, transaction: _ConsentTransaction, message: stun.Message, addr: Address) -> None:
        pair = self._selected
        # RFC 7675 §5.1: only an authenticated response from the same 5-tuple counts.
        if (
            pair is None
            or self.remote is None
            or addr != pair.remote_addr
            or not message.check_message_integrity(self.remote.pwd.encode("utf8"))
        ):
            return
        tid = transaction.request.transaction_id
        if message.message_class == stun.Class.RESPONSE:
            # Consent is fresh: earlier outstanding checks are moot.
            for outstanding in list(self._consent_outstanding):
                self._forget_consent(outstanding)
                if outstanding == tid:
                    break
            self.stats.consent_responses += 1
            self._on_consent(self, None)
        else:
            self._forget_consent(tid)
            self._on_consent(self, message.error_code)

    def _forget_consent(self, tid: bytes) -> None:
        _, protocol = self._consent_outstanding.pop(tid)
        protocol.transactions.pop(tid, None)

    def discard_consent_checks(self) -> None:
        # RFC 7675 §5.1: on loss of consent, outstanding consent transactions are discarded.
        for tid in list(self._consent_outstanding):
            self._forget_consent(tid)

    def _spawn(self, coroutine: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        self._closing = True
        self.discard_consent_checks()
        self._early.clear()
        await self.connection.close()
        # Wait for any candidate task (an mDNS name being resolved).
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        self._selected = None
        # Closed: nothing is reported any more, and the back-end's bound methods would make cycles.
        self._on_selected = self._on_failed = self._on_data = self._on_consent = _ignore


class FullBackend:
    """The current generation, plus the previous one while an ICE restart is under way (RFC 8445 §9)."""

    def __init__(
        self,
        config: IceAgentConfig,
        credentials: IceCredentials,
        controlling: bool,
        pool: UdpPortPool | None,
        listener: BackendListener,
        stats: IceStats,
        shelf: SocketShelf | None = None,
    ) -> None:
        self._config = config
        self._shelf = shelf
        self._controlling = controlling
        self._pool = pool
        self._listener = listener
        self._stats = stats
        self._current = self._generation(credentials)
        self._previous: FullGeneration | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    def _generation(self, credentials: IceCredentials) -> FullGeneration:
        return FullGeneration(
            self._config, credentials, self._controlling, self._pool, self._stats, self._shelf,
            on_selected=self._selected, on_failed=self._failed, on_data=self._data, on_consent=self._consent,
        )

    @property
    def credentials(self) -> IceCredentials:
        return self._current.credentials

    @property
    def controlling(self) -> bool:
        return bool(self._current.connection.ice_controlling)

    @property
    def candidates(self) -> list[Candidate]:
        return self._current.candidates

    @property
    def selected(self) -> SelectedPair | None:
        sending = self._sending()
        return sending.selected if sending is not None else None

    def _sending(self) -> FullGeneration | None:
        """Media goes on the current generation's pair, or the old one's until a new pair exists."""
        if self._current.selected is not None:
            return self._current
        if self._previous is not None and self._previous.selected is not None:
            return self._previous
        return None

    async def gather(self) -> None:
        await self._current.gather()

    def gather_now(self) -> bool:
        return self._current.gather_now()

    def set_remote(self, credentials: IceCredentials, remote_is_lite: bool) -> None:
        self._current.set_remote(credentials, remote_is_lite)

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        self._current.add_remote_candidate(candidate)

    def begin_checks(self) -> None:
        self._current.begin_checks()

    async def restart(self, credentials: IceCredentials) -> None:
        # RFC 8445 §9: an ICE restart is a fresh agent state; aioice has none, so a new Connection.
        if self._previous is not None:
            # A second restart before the first completed: the unfinished one is dropped.
            await self._current.close()
        elif self._current.selected is not None:
            self._previous = self._current
        else:
            await self._current.close()
        self._current = self._generation(credentials)
        await self._current.gather()

    def send(self, data: bytes) -> bool:
        sending = self._sending()
        return sending.send(data) if sending is not None else False

    def send_consent_check(self) -> None:
        sending = self._sending()
        if sending is not None:
            sending.send_consent_check()

    def discard_consent_checks(self) -> None:
        for generation in (self._current, self._previous):
            if generation is not None:
                generation.discard_consent_checks()

    def _selected(self, generation: FullGeneration, pair: SelectedPair) -> None:
        if generation is not self._current:
            return
        if self._previous is not None:
            previous, self._previous = self._previous, None
            task = asyncio.ensure_future(previous.close())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._listener.pair_selected(pair)

    def _failed(self, generation: FullGeneration, reason: str) -> None:
        if generation is self._current:
            self._listener.checks_failed(reason)

    def _data(self, generation: FullGeneration, data: bytes) -> None:
        if generation is self._sending():
            self._stats.datagrams_received += 1
            self._listener.datagram(data)
        else:
            self._stats.datagrams_dropped += 1

    def _consent(self, generation: FullGeneration, error_code: int | None) -> None:
        if generation is not self._sending():
            return
        if error_code is None:
            self._listener.consent_evidence()
        elif error_code == 403:
            # RFC 7675 §5.2: an authenticated 403 revokes consent immediately.
            self._listener.consent_revoked("consent revoked by a STUN 403 (RFC 7675 §5.2)")

    async def close(self) -> None:
        for generation in (self._previous, self._current):
            if generation is not None:
                await generation.close()
        self._previous = None
        while self._retiring:
            await asyncio.wait(list(self._retiring))
        self._listener = _CLOSED_LISTENER  # nothing is reported once closed: no cycle with the agent
