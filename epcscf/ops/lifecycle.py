"""Stopping gracefully (drain) and re-reading the configuration while running (reload).

Drain (SIGTERM → twistd → ``EpcscfService.stopService``)
--------------------------------------------------------
1. New work is refused: the WebSocket listeners stop accepting (a load balancer sends new
   WICs elsewhere) and a new INVITE, from either side, is answered ``503 Service
   Unavailable`` with ``Retry-After`` (RFC 3261 §21.5.4).  REGISTERs and requests inside
   existing dialogs still go through, so registered WICs stay reachable while calls finish.
2. The service waits until no call is alive and no server transaction is still waiting
   for its final response, or until ``[service] drain_timeout`` has passed.
3. Calls still up then are released by the call manager (BYE with a Reason header); their
   BYEs get up to ``RELEASE_GRACE`` seconds to be answered, then the normal stop follows
   (WebSockets closed with 1001 "going away", RFC 6455 §7.4.1).

When nothing is in progress the drain ends at once, so stopping an idle service (and every
test's clean-up) costs nothing.

Reload (SIGHUP, ``reload()`` in the console)
--------------------------------------------
The ini files named at start are read again with ``epcscf.config.load``: a bad file
raises the same one-line ``ConfigError`` and the running configuration stays untouched.
Otherwise every changed key is listed; the keys in ``LIVE_KEYS`` take effect at once, the
others are reported as needing a restart and are *not* taken into the running
configuration (so no code reading the config later sees half a change).
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from epcscf.config import Config, load
from epcscf.logging import set_log_level
from epcscf.pcscf.admission import Refusal
from epcscf.sip.headers import to_tag
from epcscf.sip.parser import ParserLimits
from epcscf.sip.proxy_policy import Reject
from epcscf.sip.proxy_rules import make_local_response

log = Logger(namespace="epcscf.ops.lifecycle")

#: (section, key) of the settings a reload applies to the running service
LIVE_KEYS = frozenset(
    {
        ("log", "level"),
        ("ws", "allowed_origins"),
        ("ws", "allow_any_origin"),
        ("ws", "allow_missing_origin"),
        ("ws", "max_message_size"),
        ("ws", "ping_interval"),
        ("ws", "ping_timeout"),
        ("sip", "max_message_size"),
        ("sip", "max_headers"),
        ("sip", "max_line_length"),
        ("core", "next_hop"),
        ("service", "drain_timeout"),
    }
)

DRAIN_POLL_INTERVAL = 0.5  # seconds between "is everything finished?" checks
RELEASE_GRACE = 2.0  # seconds the BYEs of released calls get to be answered


@dataclass(frozen=True)
class ConfigChange:
    section: str
    key: str
    old: Any
    new: Any
    applied: bool

    def row(self) -> dict[str, Any]:
        return {
            "setting": f"[{self.section}] {self.key}",
            "old": _show(self.old),
            "new": _show(self.new),
            "applied": "yes" if self.applied else "restart needed",
        }


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value) or "(none)"
    return str(value)


def config_changes(old: Config, new: Config) -> list[ConfigChange]:
    """Every key whose value differs, in section order."""
    changes = []
    for section_field in fields(Config):
        if section_field.name == "files":
            continue
        before, after = getattr(old, section_field.name), getattr(new, section_field.name)
        for key_field in fields(before):
            old_value, new_value = getattr(before, key_field.name), getattr(after, key_field.name)
            if old_value != new_value:
                live = (section_field.name, key_field.name) in LIVE_KEYS
                changes.append(ConfigChange(section_field.name, key_field.name, old_value, new_value, live))
    return changes


def effective_config(old: Config, new: Config, changes: list[ConfigChange]) -> Config:
    """``old`` with only the applied changes taken from ``new``."""
    sections: dict[str, Any] = {}
    for change in changes:
        if change.applied:
            section = sections.get(change.section, getattr(old, change.section))
            sections[change.section] = replace(section, **{change.key: change.new})
    return replace(old, files=new.files, **sections)


def apply_config(service: Any, new: Config) -> list[ConfigChange]:
    """Apply what can change live; returns every change (applied or not)."""
    old: Config = service.config
    changes = config_changes(old, new)
    if not changes:
        return changes
    config = effective_config(old, new, changes)
    touched = {(change.section, change.key) for change in changes if change.applied}
    if ("log", "level") in touched:
        set_log_level("", config.log.level)
    pcscf = service.pcscf
    if any(section == "ws" for section, _ in touched) and pcscf.ws_factory is not None:
        _apply_ws(pcscf.ws_factory, config)
    if any(section == "sip" for section, _ in touched):
        _apply_sip_limits(pcscf.transports, config)
    # [core] next_hop is read from the node's config at each resolution (external mode).
    service.config = config
    pcscf.config = config
    for change in changes:
        log.info(
            "reload: [{section}] {key} {old} → {new} ({how})",
            section=change.section,
            key=change.key,
            old=_show(change.old),
            new=_show(change.new),
            how="applied" if change.applied else "restart needed",
        )
    return changes


def _apply_ws(factory: Any, config: Config) -> None:
    """New handshakes see the new Origin policy; new connections the new limits and pings."""
    from epcscf.pcscf.node import ws_settings

    settings = ws_settings(config)  # frozen: replaced whole, never mutated
    factory.settings = settings
    factory.limits = ParserLimits(max_message_size=settings.max_message_size)
    factory.setProtocolOptions(
        maxMessagePayloadSize=settings.max_message_size,
        maxFramePayloadSize=settings.max_message_size,
        autoPingInterval=settings.ping_interval,
        autoPingTimeout=settings.ping_timeout if settings.ping_interval > 0 else 0,
    )


def _apply_sip_limits(transports: Any, config: Config) -> None:
    limits = ParserLimits(
        max_message_size=config.sip.max_message_size,
        max_headers=config.sip.max_headers,
        max_line_length=config.sip.max_line_length,
    )
    transports.settings = replace(transports.settings, limits=limits)  # new TCP/TLS connections
    # UDP sockets keep the settings they were started with; TransportManager has no public
    # setter yet (asked for), so the running UDP listeners are updated here.
    for udp in getattr(transports, "_udp", ()):
        udp._settings = transports.settings


def reload_config(service: Any) -> list[ConfigChange]:
    """Re-read the service's ini files and apply them; ``ConfigError`` leaves everything as it was."""
    new = load(service.config.files)
    return apply_config(service, new)


# --- SIGHUP ---------------------------------------------------------------------------------


def install_sighup(reactor: Any, callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` in the reactor on SIGHUP; returns a function that restores the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals can only be handled in the main thread

    def handler(signum: int, frame: Any) -> None:
        # Runs between two bytecodes of whatever the main thread does: hand over to the reactor.
        reactor.callFromThread(callback)

    previous = signal.signal(signal.SIGHUP, handler)

    def restore() -> None:
        if signal.getsignal(signal.SIGHUP) is handler:
            signal.signal(signal.SIGHUP, previous)

    return restore


# --- drain ----------------------------------------------------------------------------------


def refuse_while_draining(request: Any, retry_after: int) -> Reject | None:
    """The 503 for a dialog-creating INVITE (no To tag); None for everything else."""
    if request.method != "INVITE" or to_tag(request) is not None:
        return None
    # RFC 3261 §21.5.4: 503 with Retry-After; the WIC's next attempt finds another eP-CSCF.
    response = make_local_response(request, 503, "Service Unavailable (shutting down)")
    response.headers.add("Retry-After", str(retry_after))
    return Reject(response)


def draining_check(retry_after: int) -> Callable[[Any], Refusal | None]:
    """``refuse_while_draining`` as a check of the node's admission chain."""

    def check(context: Any) -> Refusal | None:
        refused = refuse_while_draining(context.request, retry_after)
        return None if refused is None else Refusal("draining", refused.response)

    return check


@dataclass(frozen=True)
class DrainReport:
    waited: float  # seconds
    calls_released: int
    timed_out: bool


def pending_server_transactions(pcscf: Any) -> int:
    """Server transactions that have not sent their final response yet."""
    from epcscf.sip.transaction_machine import State
    from epcscf.sip.transaction_server import ServerTransaction

    return sum(
        1
        for transaction in pcscf.transactions.transactions()
        if isinstance(transaction, ServerTransaction) and transaction.state in (State.TRYING, State.PROCEEDING)
    )


def pending_client_transactions(pcscf: Any) -> int:
    """Client transactions still waiting for a final response (our BYEs among them)."""
    from epcscf.sip.transaction_client import ClientTransaction
    from epcscf.sip.transaction_machine import State

    return sum(
        1
        for transaction in pcscf.transactions.transactions()
        if isinstance(transaction, ClientTransaction) and transaction.state in (State.CALLING, State.TRYING, State.PROCEEDING)
    )


def live_call_ids(pcscf: Any) -> list[str]:
    manager = getattr(pcscf, "calls", None)
    return [call.call_id for call in manager.calls()] if manager is not None else []


class Drainer:
    """Drains one service before it stops (see the module docstring)."""

    def __init__(self, service: Any, clock: IReactorTime) -> None:
        self.service = service
        self.clock = clock
        self.draining = False
        self._done: defer.Deferred[DrainReport] | None = None

    def drain(self) -> defer.Deferred[DrainReport]:
        """Refuse new work, wait for work in progress (bounded), release what is left."""
        if self._done is not None:
            return _chain(self._done)
        self.draining = True
        pcscf = self.service.pcscf
        timeout = self.service.config.service.drain_timeout
        started = self.clock.seconds()
        stopping = pcscf.stop_accepting()
        if pcscf.policy is not None:
            # One admission chain (epcscf.pcscf.admission): the drain's check goes first, the
            # overload and per-source checks stay behind it.
            pcscf.admission.add_first("draining", draining_check(math.ceil(timeout)))
        done: defer.Deferred[DrainReport] = defer.Deferred()
        self._done = done
        log.info(
            "draining: {calls} calls and {transactions} transactions in progress; waiting up to {timeout} s",
            calls=len(live_call_ids(pcscf)),
            transactions=pending_server_transactions(pcscf),
            timeout=timeout,
        )

        released: list[int] = []  # set once the calls left at the deadline were released

        def check() -> None:
            if done.called:
                return
            now = self.clock.seconds()
            waited = now - started
            if released:
                # Give the BYEs just sent a moment to be answered before the WebSockets close.
                if not pending_client_transactions(pcscf) or now - released[1] >= RELEASE_GRACE:
                    finish(DrainReport(waited, released[0], True))
                    return
                self.clock.callLater(DRAIN_POLL_INTERVAL, check)
            elif not live_call_ids(pcscf) and not pending_server_transactions(pcscf):
                finish(DrainReport(waited, 0, False))
            elif waited >= timeout:
                released.extend((self._release_calls(pcscf), now))
                check()
            else:
                self.clock.callLater(min(DRAIN_POLL_INTERVAL, timeout - waited), check)

        def finish(report: DrainReport) -> None:
            log.info(
                "drained after {waited:.1f} s ({released} calls released{late})",
                waited=report.waited,
                released=report.calls_released,
                late=", timed out" if report.timed_out else "",
            )
            stopping.addBoth(lambda _: done.callback(report))

        check()
        return _chain(done)

    @staticmethod
    def _release_calls(pcscf: Any) -> int:
        manager = getattr(pcscf, "calls", None)
        released = 0
        for call_id in live_call_ids(pcscf):
            released += manager.release(call_id, "service shutting down") or 0
        return released


def _chain(source: defer.Deferred) -> defer.Deferred:
    """A new Deferred firing with ``source``'s result (several waiters, one source)."""
    copy: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        copy.callback(result)
        return result

    source.addCallback(relay)
    return copy
