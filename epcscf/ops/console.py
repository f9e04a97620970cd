"""The operator's commands in the SSH console (manhole).

Each command prints a readable table and returns its rows as a list of dicts, so a line
typed at the prompt reads well and a line of script can use the data::

    >>> registrations()
    >>> [r["aor"] for r in registrations() if r["expires_in"] < 60]

The returned list shows as ``(3 rows)`` at the prompt (the table was just printed).
Bad input (an unknown flow, a wrong log level, a broken ini file) prints one line saying
what is wrong and returns an empty list: never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from epcscf.config import ConfigError
from epcscf.logging import LEVELS
from epcscf.logging import set_log_level as _set_log_level
from epcscf.ops.lifecycle import reload_config
from epcscf.pcscf.operations import NodeOperations

#: stats() lines of NodeOperations.resource_counts(): (label, key)
RESOURCE_LINES = (
    ("server transactions", "server_transactions"),
    ("client transactions", "client_transactions"),
    ("sip timers", "sip_timers"),
    ("ice agents", "ice_agents"),
    ("dtls sessions", "dtls_sessions"),
    ("media ports in use", "media_ports_in_use"),
    ("media ports parked", "media_ports_parked"),
    ("reactor delayed calls", "delayed_calls"),
    ("asyncio tasks", "asyncio_tasks"),
)

# RFC 6455 §7.4.1: 1000 is a normal closure; the WIC sees our reason text.
OPERATOR_CLOSE = (1000, "closed by the operator")
NO_CALL_MANAGER = "no call manager in this service"


class Rows(list):
    """A list of dicts that shows as ``(N rows)`` at the prompt: the table was printed already."""

    def __repr__(self) -> str:
        return f"({len(self)} row{'' if len(self) == 1 else 's'})"


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Aligned text columns with a header line; ``(none)`` when there are no rows."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.upper().ljust(width) for column, width in zip(columns, widths)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (tuple, list)):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


def call_row(call: dict[str, Any], now: float) -> dict[str, Any]:
    """One line of ``calls()`` from a ``NodeOperations.calls()`` record."""
    ended = call.get("ended")
    return {
        "call_id": call["call_id"],
        "direction": call["direction"],
        "state": call["state"],
        "age": round((ended if ended is not None else now) - call["created"], 1),
        "flow": call.get("flow"),
        "ice": call["ice"],
        "dtls": call["dtls"],
        "packets": sum(call["packets"].values()),
        "cause": call.get("cause") or "",
        "layer": call.get("layer") or "",
    }


class Console:
    """The commands, bound to one running ``EpcscfService`` (its eP-CSCF's ``NodeOperations``)."""

    def __init__(self, service: Any, clock: Any = None) -> None:
        self.service = service
        self.operations: NodeOperations = service.operations
        self.clock = clock if clock is not None else service.reactor

    # --- output ------------------------------------------------------------------------------

    @staticmethod
    def _say(text: str) -> None:
        # sys.stdout at call time: the manhole swaps it for the SSH terminal while it runs a line.
        sys.stdout.write(text + "\n")

    def _table(self, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> Rows:
        self._say(render_table(rows, columns))
        return Rows(rows)

    def _refuse(self, text: str) -> Rows:
        self._say(text)
        return Rows()

    # --- commands ----------------------------------------------------------------------------

    def registrations(self) -> Rows:
        """Registered contacts: AOR, identities, flow, origin, seconds until expiry."""
        now = self.clock.seconds()
        rows = [
            {
                "aor": binding["aor"],
                "identities": binding["identities"],
                "flow": binding["flow"],
                "origin": binding["origin"] or "(none)",
                "expires_in": int(binding["expires_at"] - now),
                "instance": binding["instance"] or "-",
            }
            for binding in self.operations.registrations()
        ]
        return self._table(rows, ["aor", "identities", "flow", "origin", "expires_in"])

    def flows(self) -> Rows:
        """Open WebSocket flows: connection id, peer, origin, age, state, registrations on it."""
        now = self.clock.seconds()
        rows = [
            {
                "flow": flow["flow"],
                "transport": flow["transport"],
                "peer": flow["peer"],
                "origin": flow["origin"] or "(none)",
                "age": round(now - flow["opened"], 1),
                "state": "open" if flow["open"] else "closing",
                "registrations": flow["registrations"],
            }
            for flow in self.operations.flows()
        ]
        return self._table(rows)

    def calls(self) -> Rows:
        """Live calls, then recently ended ones: id, direction, state, age, ICE/DTLS, packets."""
        if not self.operations.handles_calls():
            return self._refuse(NO_CALL_MANAGER)
        now = self.clock.seconds()
        rows = [call_row(call, now) for call in self.operations.calls()]
        return self._table(rows, ["call_id", "direction", "state", "age", "ice", "dtls", "packets", "cause", "layer"])

    def call(self, call_id: str) -> Rows:
        """The timeline of one call (a Call-ID or its first characters)."""
        if not self.operations.handles_calls():
            return self._refuse(NO_CALL_MANAGER)
        every = self.operations.calls()
        wanted = str(call_id)
        found = [call for call in every if call["call_id"] == wanted] or [c for c in every if c["call_id"].startswith(wanted)]
        if not found:
            return self._refuse(f"no call {call_id!r} (see calls())")
        if len({call["call_id"] for call in found}) > 1:
            return self._refuse(f"{call_id!r} matches several calls: {', '.join(sorted({c['call_id'] for c in found}))}")
        for call in found:
            summary = call_row(call, self.clock.seconds())
            self._say(
                f"call {summary['call_id']} {summary['direction']} {summary['state']}, flow {summary['flow']}, "
                f"ICE {summary['ice']}, DTLS {summary['dtls']}, {summary['packets']} packets"
                + (f", ended: {summary['cause']}" if summary["cause"] else "")
            )
        return self._table(self.operations.call_timeline(found[0]["call_id"]), ["t", "kind", "event"])

    def release(self, call_id: str, reason: str = "released by the operator") -> Rows:
        """End a call from the middle: BYE both sides (CANCEL/480 if not answered yet)."""
        if not self.operations.handles_calls():
            return self._refuse(NO_CALL_MANAGER)
        count = self.operations.release_call(call_id, reason)
        if count is None:
            return self._refuse(f"no live call {call_id!r} (see calls())")
        rows = [{"call_id": call_id, "released": count, "reason": reason}]
        return self._table(rows)

    def disconnect(self, flow: Any) -> Rows:
        """Close a WIC's WebSocket (a flow id, its first characters, or a Flow)."""
        flows = self.operations.flows()
        wanted = getattr(flow, "id", flow)
        if not isinstance(wanted, str) or not wanted:
            return self._refuse("disconnect() takes a flow id (see flows())")
        matches = [f for f in flows if f["flow"] == wanted] or [f for f in flows if f["flow"].startswith(wanted)]
        if not matches:
            return self._refuse(f"no open flow {wanted!r} (see flows())")
        if len(matches) > 1:
            return self._refuse(f"{wanted!r} matches {len(matches)} flows: {', '.join(f['flow'] for f in matches)}")
        target = matches[0]
        self.operations.disconnect_flow(target["flow"], *OPERATOR_CLOSE)
        return self._table([{"flow": target["flow"], "peer": target["peer"], "action": "closing"}])

    def stats(self) -> Rows:
        """One line per figure: connections, registrations, calls, transactions, loop lag."""
        service = self.service
        node = self.operations.stats()
        lag = getattr(getattr(service, "metrics_service", None), "lag", None)
        figures: list[tuple[str, Any]] = [
            ("ws connections", node["ws_connections"]),
            ("flows", node["flows"]),
            ("registrations", node["registrations"]),
            ("calls originating", node["calls_originating"]),
            ("calls terminating", node["calls_terminating"]),
            ("calls ended (kept)", node["calls_ended"]),
            ("calls suspended (flow lost)", node["calls_suspended"]),
            ("sip transactions", node["server_transactions"] + node["client_transactions"]),
            ("sip transactions pending", node["pending_transactions"]),
            *self._resource_figures(),
            ("event loop lag (s)", f"{lag.last:.4f}" if lag is not None and lag.last is not None else "-"),
            ("draining", "yes" if node["draining"] else "no"),
            ("config files", ", ".join(service.config.files)),
        ]
        return self._table([{"name": name, "value": value} for name, value in figures])

    def _resource_figures(self) -> list[tuple[str, Any]]:
        """Leak accounting: what calls and flows hold now (the same figures as ``/metrics``)."""
        counts = self.operations.resource_counts()
        figures: list[tuple[str, Any]] = [(label, counts[key]) for label, key in RESOURCE_LINES]
        metrics = getattr(self.service, "metrics", None)
        process = metrics.process_figures() if metrics is not None else {}
        figures.append(("open fds", int(process["process_open_fds"]) if "process_open_fds" in process else "-"))
        return figures

    def reload(self) -> Rows:
        """Re-read the ini files; apply what can change live, list what needs a restart."""
        try:
            changes = reload_config(self.service)
        except ConfigError as error:
            return self._refuse(f"reload refused, running configuration kept: {error}")
        if not changes:
            return self._refuse("reload: nothing changed")
        return self._table([change.row() for change in changes])

    def set_log_level(self, namespace: str, level: str) -> Rows:
        """Log ``namespace`` (e.g. ``epcscf.pcscf``; ``""`` = everything) at ``level``."""
        if not isinstance(namespace, str) or not isinstance(level, str):
            return self._refuse('usage: set_log_level("epcscf.pcscf", "debug")')
        if level not in LEVELS:
            return self._refuse(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        _set_log_level(namespace, level)
        return self._table([{"namespace": namespace or "(default)", "level": level}])

    def help(self) -> Rows:
        """This list."""
        rows = [{"command": name + "()", "what": (getattr(self, name).__doc__ or "").strip().splitlines()[0]}
                for name in COMMANDS]
        return self._table(rows)

    def namespace(self) -> dict[str, Callable[..., Rows]]:
        return {name: getattr(self, name) for name in COMMANDS}


COMMANDS: tuple[str, ...] = (
    "registrations",
    "flows",
    "calls",
    "call",
    "release",
    "disconnect",
    "stats",
    "reload",
    "set_log_level",
    "help",
)


def console_namespace(service: Any) -> dict[str, Any]:
    """The operator commands for the manhole, bound to ``service``."""
    return Console(service).namespace()
