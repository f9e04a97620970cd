"""`IceAgent`: one ICE agent per media stream toward the WIC, for the call state machine.

Theory of operation.  The agent is a Twisted object: its methods return Deferreds and its
decisions (connect timeout, consent expiry RFC 7675) run on the injected `IReactorTime`,
so tests drive them with `task.Clock`.  Socket work runs on the asyncio loop under the asyncio
reactor (aioice, our lite responder), bridged with `Deferred.fromFuture(ensure_future(...))`;
asyncio never leaks out of this package.

    agent = IceAgent(config, controlling=False, clock=reactor, pool=pool)
    agent.datagram_received = media.on_datagram          # every non-STUN datagram on the pair
    yield agent.gather()                                  # sockets bound, candidates known
    sdp: agent.local_credentials, agent.local_candidates(), agent.default_address
    agent.set_remote(ufrag, pwd, candidates, end_of_candidates=True, remote_is_lite=False)
    yield agent.start()                                   # fires when a pair is selected
    agent.send(dtls_record)
    ...
    yield agent.close()                                   # sockets, ports, tasks freed

The mode comes from `config.mode`: "full" (aioice; controlling when we offer, controlled when
the WIC offers, RFC 8445 §6.1.1) or "lite" (our responder, always controlled).

States (`IceState`, transitions in `types.ICE_TRANSITIONS`):
NEW →gather→ GATHERED →start→ CHECKING →pair selected→ CONNECTED; checks failing, the connect
timeout or lost consent → FAILED; close() → CLOSED from anywhere.  `on_consent_lost(reason)`
fires once when a CONNECTED agent loses consent (RFC 7675 §5.1: the call then sends BYE both ways).
"""

from __future__ import annotations

import functools
import ipaddress
import types

import asyncio
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, TypeVar

from aioice.candidate import Candidate
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from epcscf.ice.consent import ConsentFreshness
from epcscf.ice.full import FullBackend
from epcscf.ice.lite import LiteBackend
from epcscf.ice.ports import UdpPortPool
from epcscf.ice.shelf import SocketShelf
from epcscf.ice.types import (
    ICE_TRANSITIONS,
    Address,
    IceAgentConfig,
    IceCandidateError,
    IceClosed,
    IceCredentials,
    IceError,
    IceFailed,
    IceState,
    IceStateError,
    IceStats,
    SelectedPair,
)
from epcscf.logging import info_logged

log = Logger()

T = TypeVar("T")


def as_deferred(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run an asyncio coroutine on the reactor's loop.

    Not ``defer.ensureDeferred``: Twisted's coroutine driver cannot await asyncio futures
    ("await wasn't used with future").
    """
    return Deferred.fromFuture(asyncio.ensure_future(coroutine))


def eager_deferred(coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
    """`as_deferred`, with the coroutine run here and now up to its first wait (what Python
    3.12's eager tasks do): a coroutine that never waits costs no task, no loop turn and no
    future-to-Deferred bridge.  Outside a running loop (a test's first step), as `as_deferred`."""
    if asyncio._get_running_loop() is None:
        return as_deferred(coroutine)
    try:
        waiting_on = coroutine.send(None)
    except StopIteration as done:
        return succeed(done.value)
    except BaseException:
        return fail()
    task = asyncio.ensure_future(_resumed(coroutine, waiting_on))
    task.add_done_callback(functools.partial(_cancel_unresumed, coroutine))
    return Deferred.fromFuture(task)


def _cancel_unresumed(coroutine: Coroutine[Any, Any, Any], task: asyncio.Future[Any]) -> None:
    """A task cancelled before its first step never ran `_resumed`, so the coroutine still
    waits: it gets the cancellation the task would have thrown into it."""
    if not task.cancelled() or getattr(coroutine, "cr_frame", None) is None:
        return  # finished, however it ended
    try:
        coroutine.throw(asyncio.CancelledError())
    except BaseException:
        return
    coroutine.close()  # it waited again, and nothing drives it any more


@types.coroutine
def _resumed(coroutine: Coroutine[Any, Any, T], waiting_on: Any) -> Generator[Any, Any, T]:
    """The rest of a coroutine already started, for a task to drive: what it waits on goes to
    the task, and what the task sends or throws back (a result, a cancellation) goes to it."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = coroutine.send(sent)
            except StopIteration as done:
                return done.value


def parse_candidate(line: str) -> Candidate:
    """An SDP candidate attribute value (with or without `a=candidate:`) → aioice Candidate."""
    text = line.strip()
    for prefix in ("a=", "candidate:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    try:
        candidate = Candidate.from_sdp(text)
        if candidate.port <= 0 or candidate.port > 65535 or candidate.component < 1:
            raise ValueError("port or component out of range")
    except (ValueError, IndexError) as exc:
        raise IceCandidateError(f"malformed ICE candidate {line!r}: {exc}") from None
    return candidate


@functools.lru_cache(maxsize=1024)  # bounded: candidate addresses come from peers
def _scope(address: str) -> tuple[int, bool] | None:
    """(IP version, is loopback) of a literal address; None for a name."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    return parsed.version, parsed.is_loopback


def _usable(candidate: Candidate, local_scopes: frozenset[tuple[int, bool]]) -> str | None:
    """Why a remote candidate is skipped, or None when we can pair with it."""
    scope = _scope(candidate.host)
    if scope is None:
        if candidate.host.endswith(".local"):
            return "an mDNS name (a server cannot resolve it; the peer's checks reveal its address)"
        # RFC 8839 §5.1 allows a name here; we resolve none (and pairing needs an address).
        return "not an IP address"
    if local_scopes and scope not in local_scopes:
        # RFC 8445 §6.1.2.2 pairs only candidates of the same address family; a loopback
        # address and a routable one cannot reach each other either, and checks toward
        # such a pair would only send packets where no answer can come from.
        return "not reachable from our candidates' addresses (address family or loopback scope)"
    if candidate.component != 1:
        return "component 2 (we use rtcp-mux)"
    if candidate.transport.lower() != "udp":
        return "not UDP (ICE-TCP, RFC 6544, is not supported)"
    if candidate.type not in ("host", "srflx", "prflx", "relay"):
        return f"unknown type {candidate.type!r}"
    return None


class IceAgent:
    #: called with every non-STUN datagram received on the selected pair (DTLS/SRTP demux is the media layer's)
    datagram_received: Callable[[bytes], None] | None
    #: called with the new state after each transition
    on_state_change: Callable[[IceState], None] | None
    #: called once with a reason when consent to send is lost (RFC 7675); the state is then FAILED
    on_consent_lost: Callable[[str], None] | None

    def __init__(
        self,
        config: IceAgentConfig,
        controlling: bool,
        clock: IReactorTime,
        pool: UdpPortPool | None = None,
        *,
        shelf: SocketShelf | None = None,
        datagram_received: Callable[[bytes], None] | None = None,
        on_state_change: Callable[[IceState], None] | None = None,
        on_consent_lost: Callable[[str], None] | None = None,
    ) -> None:
        if config.port_range is not None and pool is None:
            raise ValueError("IceAgentConfig.port_range is set but no UdpPortPool was given")
        self.config = config
        self._local_scopes = frozenset(scope for a in config.bind_addresses if (scope := _scope(a)) is not None)
        # A lite agent is always controlled (RFC 8445 §6.1.1).
        controlling = controlling if config.mode == "full" else False
        self._clock = clock
        self.stats = IceStats()
        self.datagram_received = datagram_received
        self.on_state_change = on_state_change
        self.on_consent_lost = on_consent_lost
        self._state = IceState.NEW
        credentials = IceCredentials.generate()
        if config.mode == "full":
            self._backend: FullBackend | LiteBackend = FullBackend(config, credentials, controlling, pool, self, self.stats, shelf if pool is not None else None)
        else:
            self._backend = LiteBackend(config, credentials, pool, self, self.stats)
        self._remote: IceCredentials | None = None
        self._waiting: list[Deferred[SelectedPair]] = []
        self._connect_timer: IDelayedCall | None = None
        self._checks_started_at: float | None = None
        self._restarting = False
        self._consent = ConsentFreshness(
            clock,
            timeout=config.consent_timeout,
            interval=config.consent_interval,
            min_interval=config.consent_min_interval,
            on_lost=self._consent_lost,
            send_check=self._backend.send_consent_check if config.mode == "full" else None,
        )
        self._gathering = False
        self._closing: Deferred[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<IceAgent {self.config.mode} {self.local_credentials.ufrag} {self._state.name}>"

    # --- read-only views ---

    @property
    def controlling(self) -> bool:
        """Our current role (aioice may switch it on a role conflict, RFC 8445 §7.3.1.1)."""
        return self._backend.controlling

    @property
    def state(self) -> IceState:
        return self._state

    @property
    def local_credentials(self) -> IceCredentials:
        return self._backend.credentials

    def local_candidates(self) -> list[str]:
        """SDP `a=candidate` values (without the `candidate:` prefix), component 1 only."""
        return [c.to_sdp() for c in self._backend.candidates]

    @property
    def default_address(self) -> Address | None:
        """The first (highest-priority) candidate's address: the RFC 8839 default for c= and m=."""
        candidates = self._backend.candidates
        return (candidates[0].host, candidates[0].port) if candidates else None

    @property
    def selected_pair(self) -> tuple[Address, Address] | None:
        pair = self._backend.selected
        return (pair.local, pair.remote) if pair is not None else None

    # --- operations ---

    def gather(self) -> Deferred[None]:
        """Bind the host sockets on the configured addresses and ports; fires when done.

        Errbacks with `PortsExhausted` when the port range is used up (the call answers 503).
        """
        if self._state is not IceState.NEW or self._gathering:
            return fail(IceStateError(f"gather() runs once, in state NEW; the agent is {self._state.name}"))
        self._gathering = True

        def gathered(_: None) -> None:
            if self._state is IceState.NEW:
                self._transition(IceState.GATHERED)

        def failed(failure: Failure) -> Failure:
            if self._state is IceState.NEW:
                self._transition(IceState.FAILED)
            return failure

        if self._backend.gather_now():
            # From parked sockets (`epcscf.ice.shelf`): no socket to bind, nothing to wait for.
            gathered(None)
            return succeed(None)
        return as_deferred(self._backend.gather()).addCallbacks(gathered, failed)

    def set_remote(
        self,
        ufrag: str,
        pwd: str,
        candidates: Iterable[str] = (),
        end_of_candidates: bool = True,
        remote_is_lite: bool = False,
    ) -> None:
        """The WIC's ice-ufrag/ice-pwd/candidates from its SDP.

        Raises `IceCandidateError` (a clear message, nothing applied) for malformed input.
        """
        if self._state in (IceState.CLOSED, IceState.FAILED):
            raise IceStateError(f"set_remote() on a {self._state.name} agent")
        credentials = IceCredentials(ufrag, pwd)
        credentials.validate_remote()
        if self._remote is not None and self._remote != credentials:
            raise IceStateError("the remote ICE credentials changed: that is an ICE restart, call restart() (RFC 8445 §9)")
        parsed = [parse_candidate(line) for line in candidates]
        self._remote = credentials
        self._backend.set_remote(credentials, remote_is_lite)
        for candidate in parsed:
            self._add_candidate(candidate)
        if end_of_candidates:
            self._backend.add_remote_candidate(None)
        self._maybe_begin_checks()

    def add_remote_candidate(self, line: str | None) -> None:
        """A trickled candidate (RFC 8840), or None for end-of-candidates."""
        if self._state in (IceState.CLOSED, IceState.FAILED):
            return
        if line is None:
            self._backend.add_remote_candidate(None)
            return
        self._add_candidate(parse_candidate(line))

    def _add_candidate(self, candidate: Candidate) -> None:
        reason = _usable(candidate, self._local_scopes)
        if reason is not None:
            log.debug("ICE: remote candidate {candidate} ignored: {reason}", candidate=candidate.to_sdp(), reason=reason)
            return
        self._backend.add_remote_candidate(candidate)

    def start(self) -> Deferred[SelectedPair]:
        """Start (or allow) connectivity checks; fires with the selected pair.

        Checks begin as soon as local candidates are gathered and the remote description is set
        (whichever comes last).  Errbacks with `IceFailed` when the checks fail or no pair is
        selected within `connect_timeout`, and with `IceClosed` on close().
        """
        if self._state in (IceState.CLOSED, IceState.FAILED):
            return fail(IceStateError(f"start() on a {self._state.name} agent"))
        if self._state is IceState.NEW:
            return fail(IceStateError("start() before gather() completed"))
        selected = self._backend.selected
        if selected is not None and not self._restarting:
            return succeed(selected)
        waiter: Deferred[SelectedPair] = Deferred()
        self._waiting.append(waiter)
        if self._connect_timer is None:
            self._checks_started_at = self._clock.seconds()
            self._connect_timer = self._clock.callLater(self.config.connect_timeout, self._connect_timed_out)
        if self._state is IceState.GATHERED:
            self._transition(IceState.CHECKING)
        self._maybe_begin_checks()
        return waiter

    def restart(
        self,
        ufrag: str | None = None,
        pwd: str | None = None,
        candidates: Iterable[str] = (),
        end_of_candidates: bool = True,
        remote_is_lite: bool = False,
    ) -> Deferred[None]:
        """ICE restart (RFC 8445 §9): new local credentials (and, in full mode, new sockets).

        With the WIC's new ufrag/pwd (a re-offer that restarts ICE) they are applied as by
        set_remote() once the new local side is ready; without them (we restart in our own
        offer) call set_remote() when the answer arrives.  Fires when `local_credentials` and
        `local_candidates()` hold the new values for the SDP.  The old pair keeps carrying media
        and consent until the new generation selects a pair; start() fires on that selection.
        """
        if self._state not in (IceState.GATHERED, IceState.CHECKING, IceState.CONNECTED):
            return fail(IceStateError(f"restart() on a {self._state.name} agent"))
        if (ufrag is None) != (pwd is None):
            return fail(IceCandidateError("restart() needs both the remote ufrag and pwd, or neither"))
        if ufrag is not None and pwd is not None:
            try:
                IceCredentials(ufrag, pwd).validate_remote()
                for line in candidates:
                    parse_candidate(line)
            except IceCandidateError as exc:
                return fail(exc)
        self.stats.restarts += 1
        self._restarting = True
        self._remote = None
        self._cancel_connect_timer()
        d = as_deferred(self._backend.restart(IceCredentials.generate()))
        if ufrag is not None and pwd is not None:
            remote_candidates = list(candidates)
            d.addCallback(lambda _: self.set_remote(ufrag, pwd, remote_candidates, end_of_candidates, remote_is_lite))
        return d

    @property
    def remote_credentials(self) -> IceCredentials | None:
        """The WIC's current ufrag/pwd; a re-offer with other values is an ICE restart (RFC 8445 §9)."""
        return self._remote

    def send(self, data: bytes) -> bool:
        """Send one datagram on the selected pair; False (dropped) when there is none or no consent."""
        if self._state is not IceState.CONNECTED:
            self.stats.datagrams_dropped += 1
            return False
        if self._backend.send(data):
            self.stats.datagrams_sent += 1
            return True
        self.stats.datagrams_dropped += 1
        return False

    def revoke_consent(self, reason: str) -> None:
        """RFC 7675 §5.2: a DTLS fatal alert (seen by the media layer) ends consent at once."""
        if self._state is IceState.CONNECTED:
            self._consent.revoke(reason)

    def close(self) -> Deferred[None]:
        """Free sockets, ports, asyncio tasks and timers; idempotent (every call fires once done)."""
        if self._closing is None:
            if self._state is not IceState.CLOSED:
                self._transition(IceState.CLOSED)
            self._cancel_connect_timer()
            self._consent.stop()
            self._fail_waiters(IceClosed("the ICE agent was closed"))
            # Closing usually never waits (sockets parked, no check in flight): no task for it.
            self._closing = eager_deferred(self._backend.close())
            self._closing.addBoth(self._closed_now)
        if self._closed:
            return succeed(None)  # the usual close: it never waited (sockets parked)
        done: Deferred[None] = Deferred()
        self._closing.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    def _closed_now(self, result: object) -> None:
        self._closed = True
        self._consent.release()
        if isinstance(result, Failure):
            log.failure("ICE: error while closing {agent}", result, agent=self)

    # --- BackendListener: what the back-end reports ---

    def pair_selected(self, pair: SelectedPair) -> None:
        if self._state in (IceState.CLOSED, IceState.FAILED):
            return
        if self._state is IceState.NEW:
            # A lite check raced the gather() callback: the sockets are bound, so we are gathered.
            self._transition(IceState.GATHERED)
        self._cancel_connect_timer()
        if self._state is not IceState.CONNECTED:
            if self._checks_started_at is not None:
                self.stats.connect_time = self._clock.seconds() - self._checks_started_at
            self._transition(IceState.CONNECTED)
            self._consent.start()
        else:
            # Renomination or the end of an ICE restart: a fresh check just succeeded on it.
            self.stats.pair_changes += 1
            self._consent.refreshed()
        self._restarting = False
        if info_logged(log.namespace):  # one line per call: not built when [log] level drops it
            log.info("ICE: {agent} selected {local} -> {remote}", agent=self, local=pair.local, remote=pair.remote)
        waiters, self._waiting = self._waiting, []
        for waiter in waiters:
            waiter.callback(pair)

    def checks_failed(self, reason: str) -> None:
        self._fail(reason)

    def datagram(self, data: bytes) -> None:
        if self._state is not IceState.CONNECTED or self.datagram_received is None:
            return
        try:
            self.datagram_received(data)
        except Exception:
            log.failure("ICE: datagram_received callback of {agent} raised", agent=self)

    def consent_evidence(self) -> None:
        if self._state is IceState.CONNECTED:
            self._consent.refreshed()

    def consent_revoked(self, reason: str) -> None:
        self._consent.revoke(reason)

    # --- internals ---

    def _maybe_begin_checks(self) -> None:
        if self._waiting and self._remote is not None and self._state in (IceState.CHECKING, IceState.CONNECTED):
            self._backend.begin_checks()

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        self._fail(f"no ICE candidate pair selected within {self.config.connect_timeout:g} s")

    def _consent_lost(self, reason: str) -> None:
        if self._state is not IceState.CONNECTED:
            return
        self.stats.consent_failures += 1
        if isinstance(self._backend, FullBackend):
            self._backend.discard_consent_checks()
        self._transition(IceState.FAILED)
        self._fail_waiters(IceFailed(reason))
        log.info("ICE: {agent} lost consent: {reason}", agent=self, reason=reason)
        if self.on_consent_lost is not None:
            try:
                self.on_consent_lost(reason)
            except Exception:
                log.failure("ICE: on_consent_lost callback of {agent} raised", agent=self)

    def _fail(self, reason: str) -> None:
        if self._state in (IceState.CLOSED, IceState.FAILED):
            return
        self._cancel_connect_timer()
        self._consent.stop()
        self._transition(IceState.FAILED)
        log.info("ICE: {agent} failed: {reason}", agent=self, reason=reason)
        self._fail_waiters(IceFailed(reason))

    def _fail_waiters(self, error: IceError) -> None:
        waiters, self._waiting = self._waiting, []
        for waiter in waiters:
            waiter.errback(Failure(error))

    def _cancel_connect_timer(self) -> None:
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None

    def _transition(self, new: IceState) -> None:
        if new not in ICE_TRANSITIONS[self._state]:
            raise IceStateError(f"ICE agent cannot go from {self._state.name} to {new.name}")
        self._state = new
        if self.on_state_change is not None:
            try:
                self.on_state_change(new)
            except Exception:
                log.failure("ICE: on_state_change callback of {agent} raised", agent=self)
