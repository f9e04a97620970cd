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

Both use only the eP-CSCF's ``NodeOperations`` (``epcscf.pcscf.operations``).
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
from epcscf.pcscf.operations import NodeOperations

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
        # [overload]: thresholds, rates and limits are read at each decision (a restart is needed
        # only to switch control on/off, change the probe's interval, what it watches, or the
        # per-connection and per-flow budgets the listeners were built with)
        *(("overload", key) for key in (
            "lag_high", "lag_low", "high_samples", "recover", "max_new_per_second", "min_new_per_second", "retry_after",
            "auth_failures", "auth_window", "auth_lockout", "setup_target", "min_calls_in_setup", "max_calls_in_setup",
        )),
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
    operations: NodeOperations = service.operations
    if ("log", "level") in touched:
        set_log_level("", config.log.level)
    # The live keys of [ws] and [sip] are exactly the parameters of these two operations.
    if any(section == "ws" for section, _ in touched):
        operations.update_ws_settings(**_live_values(config, "ws"))
    if any(section == "sip" for section, _ in touched):
        operations.update_limits(**_live_values(config, "sip"))
    if any(section == "overload" for section, _ in touched):
        operations.update_overload(**_live_values(config, "overload"))
    # [core] next_hop is read from the node's config at each resolution (external mode).
    service.config = config
    operations.use_config(config)
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


def _live_values(config: Config, section: str) -> dict[str, Any]:
    """The values of ``section``'s keys in ``LIVE_KEYS``, by key."""
    values = getattr(config, section)
    return {key: getattr(values, key) for live_section, key in LIVE_KEYS if live_section == section}


def reload_config(service: Any) -> list[ConfigChange]:
    """Re-read the service's ini files and apply them; ``ConfigError`` leaves everything as it was."""
    new = load(service.config.files)
    changes = apply_config(service, new)
    # The web login's key file is re-read whatever the ini says: that is how keys rotate.
    rotated = service.operations.reload_token_keys()
    if rotated is not None:
        changes.append(ConfigChange("auth", "keys", rotated[0], rotated[1], True))
    return changes


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


@dataclass(frozen=True)
class DrainReport:
    waited: float  # seconds
    calls_released: int
    timed_out: bool


def live_call_ids(operations: NodeOperations) -> list[str]:
    return [call["call_id"] for call in operations.calls() if call["live"]]


class Drainer:
    """Drains one service before it stops (see the module docstring)."""

    def __init__(self, operations: NodeOperations, drain_timeout: Callable[[], float], clock: IReactorTime) -> None:
        self.operations = operations
        #: ``[service] drain_timeout``, read when the drain starts (a reload may change it)
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.draining = False
        self._done: defer.Deferred[DrainReport] | None = None

    def drain(self) -> defer.Deferred[DrainReport]:
        """Refuse new work, wait for work in progress (bounded), release what is left."""
        if self._done is not None:
            return _chain(self._done)
        self.draining = True
        operations = self.operations
        timeout = self.drain_timeout()
        started = self.clock.seconds()
        stopping = operations.stop_accepting()
        operations.set_draining(math.ceil(timeout))
        done: defer.Deferred[DrainReport] = defer.Deferred()
        self._done = done
        log.info(
            "draining: {calls} calls and {transactions} transactions in progress; waiting up to {timeout} s",
            calls=len(live_call_ids(operations)),
            transactions=operations.pending_transactions(),
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
                if not operations.pending_client_transactions() or now - released[1] >= RELEASE_GRACE:
                    finish(DrainReport(waited, released[0], True))
                    return
                self.clock.callLater(DRAIN_POLL_INTERVAL, check)
            elif not live_call_ids(operations) and not operations.pending_transactions():
                finish(DrainReport(waited, 0, False))
            elif waited >= timeout:
                released.extend((self._release_calls(), now))
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

    def _release_calls(self) -> int:
        released = 0
        for call_id in live_call_ids(self.operations):
            released += self.operations.release_call(call_id, "service shutting down") or 0
        return released


def _chain(source: defer.Deferred) -> defer.Deferred:
    """A new Deferred firing with ``source``'s result (several waiters, one source)."""
    copy: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        copy.callback(result)
        return result

    source.addCallback(relay)
    return copy
