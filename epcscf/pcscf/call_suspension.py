"""Calls that outlive their WebSocket: suspended when the flow is lost, adopted by the same
UA instance registering again on a new flow.

Theory of operation
-------------------
A WIC whose WebSocket drops (a network change, a proxy cutting an idle connection) still has
its RTCPeerConnection; RFC 5626 §4.4.1 has it open a new flow and register again with the
same ``+sip.instance`` and ``reg-id``, which name one UA instance (RFC 5626 §4.2, §6).  TS
23.228 §5.10 has the P-CSCF release sessions whose signalling path is lost; with ``[calls]
reconnect_grace`` that release waits for the grace period:

* **suspend** (``suspend``): the flow closed; each confirmed call on it whose flow held an
  outbound registration (instance and reg-id: the only thing a reconnecting WIC can prove it
  is) is held — its media keeps running, ``Call.suspended_since`` is set (the console shows
  ``suspended (flow lost)``) and one timer per lost flow is armed.  Early calls, and calls of
  a WIC that registered without instance and reg-id, are released at once as before.
* **while suspended** (``route_for``): an in-dialog request from the core for such a call has
  nowhere to go: a BYE is answered 200 and ends the call (RFC 3261 §15.1.2: the session ends
  whatever the other side does); anything else gets 500 with Retry-After, the seconds left
  (RFC 3261 §14.2, §21.5.1: the sender may retry then).  An ACK is dropped.
* **adopt** (``registered``): a 2xx to a REGISTER passing through on a new flow — the core
  authenticated it afresh — whose binding has the same AOR, instance and reg-id as a binding
  of the lost flow moves that flow's suspended calls onto the new flow.  The dialog's route
  set, fixed when it was created (RFC 3261 §12.2.1.1), still names the old flow token, so the
  old flow id becomes an *alias* of the call: for that Call-ID and that dialog's tags only,
  a request from the core naming the old token is delivered on the call's current flow
  (``route_for``) and a request from the WIC's current flow naming it is accepted
  (``adopted``).  No other WIC, and no other dialog, can use it: the guarantees of
  ``epcscf.pcscf.guard`` hold for everything else.  The same holds when the instance
  registers on a new flow while its old WebSocket still looks open (a dead network is only
  found at the ping timeout): its fresh registration says that flow is lost to it, and its
  calls are adopted at once.  The WIC then re-INVITEs with an ICE
  restart (RFC 8445 §9), which ``call_media`` already handles.
* **grace over** (``_expired``): no adoption in time → released as before, toward the core
  only, with ``Reason: SIP;cause=480;text="WebSocket closed"`` and how long it waited.  The
  WIC could not be told; if the same instance registers again within ``LATE_WINDOW`` seconds
  its dialogs get that BYE on the new flow, so that its RTCPeerConnection is closed too
  (RFC 3261 §15: the BYE is matched by Call-ID and tags, whatever the transport).  A timer
  forgets them when that window is over: pruned only at the next expiry or registration,
  the calls of a burst's last lost flows stayed whole for good (issue 14).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from epcscf.pcscf.call_model import WS_CLOSED_REASON, Call
from epcscf.pcscf.call_state import CallEvent, CallState
from epcscf.pcscf.dialogs import Side
from epcscf.pcscf.registration import RegistrationBinding
from epcscf.sip.connection import Connection
from epcscf.sip.message import Request, Response
from epcscf.sip.proxy_rules import make_local_response

__all__ = ["CallSuspensions", "InstanceKey", "SUSPENDED_STATE", "instance_keys"]

log = Logger(namespace="epcscf.pcscf.call_suspension")

#: what the console and the timeline show for a suspended call
SUSPENDED_STATE = "suspended (flow lost)"

#: how long a call released for want of a reconnection is remembered, to BYE its WIC should
#: the same instance register again (a WIC's reconnection back-off reaches tens of seconds)
LATE_WINDOW = 300.0

#: (AOR, +sip.instance, reg-id) of one registration: one UA instance's flow (RFC 5626 §4.2)
InstanceKey = tuple[str, str, str]


def instance_keys(bindings: Iterable[RegistrationBinding]) -> frozenset[InstanceKey]:
    """The outbound registrations among ``bindings`` (those with instance and reg-id)."""
    return frozenset(
        (binding.aor, binding.instance_id, binding.reg_id)
        for binding in bindings
        if binding.instance_id is not None and binding.reg_id is not None
    )


@dataclass(eq=False)
class _LostFlow:
    """The suspended calls of one closed flow and the instances that may adopt them."""

    flow_id: str
    instances: frozenset[InstanceKey]
    since: float
    calls: list[Call] = field(default_factory=list)
    timer: IDelayedCall | None = None


class CallSuspensions:
    """Suspended calls and the flow aliases of adopted ones (see module docstring)."""

    def __init__(
        self,
        clock: IReactorTime,
        grace: float,
        move: Callable[[Call, Connection], None],
        release: Callable[[Call, str], None],
        finish: Callable[[Call, str, str | None], None],
        send_bye: Callable[[Call, Side, str], None],
        calls_on: Callable[[str], list[Call]],
    ) -> None:
        self.clock = clock
        self.grace = grace
        self._move = move  # rekeys a live call onto a new flow (the call manager's index)
        self._release = release  # releases toward the core with the WebSocket-closed Reason
        self._finish = finish  # closes a call's media and archives it
        self._send_bye = send_bye  # a BYE of ours in the call's dialog (``call_requests``)
        self._calls_on = calls_on  # the live calls of a flow
        #: the flow each outbound instance last registered on, and the reverse index
        self._instance_flow: dict[InstanceKey, str] = {}
        self._flow_instances: dict[str, set[InstanceKey]] = {}
        #: calls released for want of a reconnection, by the instances that may still come back
        self._late: dict[InstanceKey, tuple[float, list[Call]]] = {}
        #: due when the oldest entry of ``_late`` is over its ``LATE_WINDOW``
        self._late_pruning: IDelayedCall | None = None
        self._lost: dict[str, _LostFlow] = {}
        #: (former flow id, Call-ID) → the call that flow's token still names in its route set
        self._aliases: dict[tuple[str, str], Call] = {}
        self.adopted_total = 0
        self.expired_total = 0

    def __len__(self) -> int:
        return sum(len(lost.calls) for lost in self._lost.values())

    # --- the flow closes ------------------------------------------------------------------------

    def instances_of(self, flow_id: str) -> frozenset[InstanceKey]:
        """The outbound instances that registered on ``flow_id`` (forgotten: the flow closed)."""
        keys = self._flow_instances.pop(flow_id, set())
        for key in keys:
            if self._instance_flow.get(key) == flow_id:
                del self._instance_flow[key]
        return frozenset(keys)

    def suspend(self, flow_id: str, instances: frozenset[InstanceKey], calls: list[Call]) -> list[Call]:
        """Hold the confirmed calls of a closed flow; returns those to release now."""
        instances = instances | self.instances_of(flow_id)
        if not instances:
            return calls
        lost = self._hold(flow_id, instances, calls)
        if lost is None:
            return calls
        lost.timer = self.clock.callLater(self.grace, self._expired, lost)
        log.info("flow {flow} lost: {count} call(s) suspended for {grace} s", flow=flow_id, count=len(lost.calls), grace=self.grace)
        return [call for call in calls if call not in lost.calls]

    def _hold(self, flow_id: str, instances: frozenset[InstanceKey], calls: list[Call]) -> _LostFlow | None:
        held = [call for call in calls if call.state is CallState.CONFIRMED and call.media is not None]
        if not held:
            return None
        lost = _LostFlow(flow_id, instances, self.clock.seconds(), held)
        for call in held:
            call.suspended_since = lost.since
            call.note("state", f"{SUSPENDED_STATE}: waiting {self.grace:g} s for the WIC to register again")
            self._aliases[(flow_id, call.call_id)] = call
        self._lost[flow_id] = lost
        return lost

    def _expired(self, lost: _LostFlow) -> None:
        lost.timer = None
        self._lost.pop(lost.flow_id, None)
        now = self.clock.seconds()
        waited = now - lost.since
        self._prune_late(now)
        for key in lost.instances:
            self._late[key] = (now, [call for call in lost.calls if not call.ended])
        self._arm_late_pruning()
        for call in list(lost.calls):
            if call.ended:
                continue
            self.expired_total += 1
            call.suspended_since = None
            call.note("release", f"no reconnection within {waited:.1f} s")
            log.info("call {call_id}: no reconnection of its WIC within {waited:.1f} s: released",
                     call_id=call.call_id, waited=waited)
            self._release(call, f"WebSocket closed (no reconnection within {waited:.1f} s)")

    # --- the same instance registers again ---------------------------------------------------------

    def registered(self, connection: Connection, bindings: Iterable[RegistrationBinding]) -> int:
        """A 2xx to a REGISTER from ``connection``: its bindings adopt the calls suspended for
        the same AOR, instance and reg-id (RFC 5626 §4.2, §6).  Returns how many were moved."""
        keys = instance_keys(b for b in bindings if b.flow_id == connection.id)
        if not keys:
            return 0
        if self._late:
            # After the 2xx has gone on to the WIC: its registration completes first.
            self.clock.callLater(0, self._bye_released, keys, connection)
        for key in keys:
            previous = self._instance_flow.get(key)
            self._instance_flow[key] = connection.id
            self._flow_instances.setdefault(connection.id, set()).add(key)
            if previous is not None and previous != connection.id:
                self._flow_instances.get(previous, set()).discard(key)
                if previous not in self._lost:
                    # RFC 5626 §4.4.1: the instance is on a new flow while its old one still
                    # looks open (a dead network ends a WebSocket only at the ping timeout):
                    # for this instance, the old flow is lost now.
                    self._hold(previous, frozenset({key}), self._calls_on(previous))
        if not self._lost:
            return 0
        moved = 0
        for lost in [lost for lost in self._lost.values() if lost.instances & keys and lost.flow_id != connection.id]:
            if lost.timer is not None and lost.timer.active():
                lost.timer.cancel()
            lost.timer = None
            del self._lost[lost.flow_id]
            waited = self.clock.seconds() - lost.since
            for call in lost.calls:
                if call.ended:
                    continue
                call.suspended_since = None
                self._move(call, connection)
                call.note("state", f"adopted by flow {connection.id} after {waited:.1f} s (same instance registered again)")
                log.info("call {call_id}: moved from flow {old} to {new} after {waited:.1f} s",
                         call_id=call.call_id, old=lost.flow_id, new=connection.id, waited=waited)
                moved += 1
        self.adopted_total += moved
        return moved

    def _bye_released(self, keys: frozenset[InstanceKey], connection: Connection) -> None:
        """The instance is back, too late: BYE its released dialogs on its new flow."""
        self._prune_late(self.clock.seconds())
        for key in keys & self._late.keys():
            _, calls = self._late.pop(key)
            for call in calls:
                if call.wic_flow.id == connection.id or not connection.connected:
                    continue
                call.wic_flow = connection  # ended: only for this BYE's path
                call.note("release", f"the WIC registered again on flow {connection.id} after the release: BYE to it")
                self._send_bye(call, Side.WIC, WS_CLOSED_REASON)

    def _prune_late(self, now: float) -> None:
        for key in [key for key, (at, _) in self._late.items() if at + LATE_WINDOW <= now]:
            del self._late[key]

    def _arm_late_pruning(self) -> None:
        """One timer for ``_late``: due when its oldest entry is over the window."""
        if self._late_pruning is not None or not self._late:
            return
        due = min(at for at, _ in self._late.values()) + LATE_WINDOW
        self._late_pruning = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._late_due)

    def _late_due(self) -> None:
        self._late_pruning = None
        self._prune_late(self.clock.seconds() + 1e-6)  # the timer's own arithmetic may round a hair early
        self._arm_late_pruning()

    # --- requests naming a lost flow ---------------------------------------------------------------

    def _call_of(self, flow_id: str, request: Request) -> Call | None:
        call = self._aliases.get((flow_id, request.headers.get("Call-ID") or ""))
        if call is None or call.ended or call.dialog is None or not call.dialog.matches(request):
            return None
        return call

    def route_for(self, flow_id: str, request: Request) -> Connection | Response | None:
        """A request from the core whose flow token names ``flow_id``: the connection to deliver
        it on (its dialog was adopted by another flow), the response to answer it with (its
        call is suspended), or None (not such a dialog: the flow itself, or 430 when it has
        closed, RFC 5626 §5.3.1)."""
        call = self._call_of(flow_id, request)
        if call is None:
            return None
        if call.suspended_since is None:
            return call.wic_flow if call.wic_flow.connected else None
        if request.method == "BYE":
            call.note("sip-in", "BYE from the core while suspended: answered here")
            response = make_local_response(request, 200)
            call.fire(CallEvent.BYE)
            self._finish(call, "BYE from the core", None)
            return response
        lost = self._lost.get(call.wic_flow.id)
        left = self.grace if lost is None else max(1.0, lost.since + self.grace - self.clock.seconds())
        call.note("sip-in", f"{request.method} from the core while suspended: 500 Retry-After {left:.0f}")
        # In a dialog: the request carries its To-tag already.
        response = make_local_response(request, 500, "Server Internal Error (WIC reconnecting)")
        response.headers.add("Retry-After", f"{left:.0f}")
        return response

    def adopted(self, flow_id: str, request: Request, connection: Connection) -> bool:
        """Does a request the WIC sent on ``connection`` name, in its route set, the token of a
        former flow of the very call (Call-ID and tags) that ``connection`` now carries?"""
        call = self._call_of(flow_id, request)
        return call is not None and call.suspended_since is None and call.wic_flow.id == connection.id

    # --- bookkeeping ---------------------------------------------------------------------------------

    def forget(self, call: Call) -> None:
        """The call ended: drop its aliases (and its lost flow's timer once no call is left)."""
        call.suspended_since = None
        for key in [key for key, value in self._aliases.items() if value is call]:
            del self._aliases[key]
        for lost in list(self._lost.values()):
            if call in lost.calls:
                lost.calls.remove(call)
                if not lost.calls:
                    if lost.timer is not None and lost.timer.active():
                        lost.timer.cancel()
                    del self._lost[lost.flow_id]

    def close(self) -> None:
        for lost in self._lost.values():
            if lost.timer is not None and lost.timer.active():
                lost.timer.cancel()
        self._lost.clear()
        self._aliases.clear()
        self._late.clear()
        if self._late_pruning is not None and self._late_pruning.active():
            self._late_pruning.cancel()
        self._late_pruning = None
        self._instance_flow.clear()
        self._flow_instances.clear()
