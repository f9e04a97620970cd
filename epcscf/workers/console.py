"""The operator's console in the supervisor: the same commands, over every worker.

Each command asks the workers over AMP (``epcscf.workers.control``) and so returns a
Deferred; the manhole shows it as ``Deferred #N called back:`` followed by the table (a
``Table``'s repr is the table, with a ``WORKER`` column).  Scripts get the rows::

    >>> registrations()
    >>> d = flows(); d.addCallback(lambda rows: [r["peer"] for r in rows])
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from twisted.internet import defer

from epcscf.ops.console import OPERATOR_CLOSE, call_row, render_table
from epcscf.workers import control


class Table(list):
    """Rows (dicts) whose repr is the rendered table: what the manhole prints for a Deferred's result."""

    def __init__(self, rows: Sequence[dict[str, Any]] = (), columns: Sequence[str] | None = None, text: str = "") -> None:
        super().__init__(rows)
        self.text = text or render_table(list(rows), columns)

    def __repr__(self) -> str:
        return "\n" + self.text


class SupervisorConsole:
    """Commands over all workers of a ``WorkerPool``."""

    def __init__(self, pool: Any, clock: Any, scrape: Callable[[], defer.Deferred] | None = None) -> None:
        self.pool = pool
        self.clock = clock
        self._scrape = scrape

    def _rows(self, what: str, argument: str | None = None) -> defer.Deferred:
        """[(worker, row)] of ``Query(what)`` over every worker."""
        asking = self.pool.ask(control.Query, what=what, argument=argument)
        return asking.addCallback(
            lambda answers: [(index, row) for index, answer in answers if answer is not None for row in answer["rows"]]
        )

    def workers(self) -> defer.Deferred:
        """Worker processes: index, pid, state, restarts, listeners."""
        rows = []
        for plan in self.pool.plans:
            process = self.pool.processes.get(plan.index)
            rows.append(
                {
                    "worker": plan.index,
                    "pid": process.pid if process is not None else None,
                    "state": "ready" if process is not None and process.ready else ("starting" if process is not None else "down"),
                    "restarts": self.pool.restarts.get(plan.index, 0),
                    "sip": plan.sip_listen,
                }
            )
        return defer.succeed(Table(rows))

    def registrations(self) -> defer.Deferred:
        """Registered contacts of every worker: worker, AOR, flow, origin, seconds until expiry."""
        now = self.clock.seconds()

        def table(pairs: list[tuple[int, dict]]) -> Table:
            rows = [
                {
                    "worker": index,
                    "aor": binding["aor"],
                    "flow": binding["flow"],
                    "origin": binding["origin"] or "(none)",
                    "expires_in": int(binding["expires_at"] - now),
                }
                for index, binding in pairs
            ]
            return Table(rows, ["worker", "aor", "flow", "origin", "expires_in"])

        return self._rows("registrations").addCallback(table)

    def flows(self) -> defer.Deferred:
        """Open WebSocket flows of every worker."""
        now = self.clock.seconds()

        def table(pairs: list[tuple[int, dict]]) -> Table:
            rows = [
                {
                    "worker": index,
                    "flow": flow["flow"],
                    "peer": flow["peer"],
                    "origin": flow["origin"] or "(none)",
                    "age": round(now - flow["opened"], 1),
                    "registrations": flow["registrations"],
                }
                for index, flow in pairs
            ]
            return Table(rows)

        return self._rows("flows").addCallback(table)

    def calls(self) -> defer.Deferred:
        """Live and recently ended calls of every worker."""
        now = self.clock.seconds()

        def table(pairs: list[tuple[int, dict]]) -> Table:
            rows = [{"worker": index, **call_row(call, now)} for index, call in pairs]
            return Table(rows, ["worker", "call_id", "direction", "state", "age", "ice", "dtls", "packets", "cause"])

        return self._rows("calls").addCallback(table)

    def call(self, call_id: str) -> defer.Deferred:
        """The timeline of one call (its Call-ID), from the worker that has it."""
        return self._rows("call_timeline", str(call_id)).addCallback(
            lambda pairs: Table([{"worker": index, **entry} for index, entry in pairs], ["worker", "t", "kind", "event"])
            if pairs
            else Table(text=f"no call {call_id!r} (see calls())")
        )

    def release(self, call_id: str, reason: str = "released by the operator") -> defer.Deferred:
        """End a call in whichever worker has it: BYE both sides (CANCEL/480 if not answered yet)."""

        def table(answers: list[tuple[int, Any]]) -> Table:
            rows = [
                {"worker": index, "call_id": call_id, "released": answer["released"], "reason": reason}
                for index, answer in answers
                if answer is not None and answer["released"] >= 0
            ]
            return Table(rows) if rows else Table(text=f"no live call {call_id!r} (see calls())")

        return self.pool.ask(control.ReleaseCall, call_id=str(call_id), reason=str(reason)).addCallback(table)

    def disconnect(self, flow: Any) -> defer.Deferred:
        """Close a WIC's WebSocket (a flow id or its first characters) in whichever worker has it."""
        wanted = getattr(flow, "id", flow)
        if not isinstance(wanted, str) or not wanted:
            return defer.succeed(Table(text="disconnect() takes a flow id (see flows())"))

        def close(pairs: list[tuple[int, dict]]) -> Any:
            matches = [(i, f) for i, f in pairs if f["flow"] == wanted] or [(i, f) for i, f in pairs if f["flow"].startswith(wanted)]
            if not matches:
                return Table(text=f"no open flow {wanted!r} (see flows())")
            if len(matches) > 1:
                return Table(text=f"{wanted!r} matches {len(matches)} flows: {', '.join(f['flow'] for _, f in matches)}")
            index, target = matches[0]
            closing = self.pool.ask_one(index, control.DisconnectFlow, flow=target["flow"], code=OPERATOR_CLOSE[0], reason=OPERATOR_CLOSE[1])
            return closing.addCallback(
                lambda answer: Table([{"worker": index, "flow": target["flow"], "peer": target["peer"], "action": "closing" if answer["closed"] else "gone"}])
            )

        return self._rows("flows").addCallback(close)

    def stats(self) -> defer.Deferred:
        """One line per worker: connections, flows, registrations, calls, transactions, draining."""

        def table(pairs: list[tuple[int, dict]]) -> Table:
            rows = [
                {
                    "worker": index,
                    "ws_connections": node["ws_connections"],
                    "registrations": node["registrations"],
                    "calls": node["calls_originating"] + node["calls_terminating"],
                    "transactions": node["server_transactions"] + node["client_transactions"],
                    "draining": "yes" if node["draining"] else "no",
                }
                for index, node in pairs
            ]
            return Table(rows)

        asking = self.pool.ask(control.Query, what="stats")
        return asking.addCallback(lambda answers: [(i, a["rows"]) for i, a in answers if a is not None]).addCallback(table)

    def reload(self) -> defer.Deferred:
        """Every worker re-reads the ini files; what changed, or the one-line error."""

        def table(answers: list[tuple[int, Any]]) -> Table:
            errors = {answer["error"] for _, answer in answers if answer is not None and answer["error"]}
            if errors:
                return Table(text="reload refused, running configuration kept: " + "; ".join(sorted(errors)))
            rows = [{"worker": index, **change} for index, answer in answers if answer is not None for change in answer["changes"]]
            return Table(rows) if rows else Table(text="reload: nothing changed")

        return self.pool.ask(control.Reload).addCallback(table)

    def metrics(self) -> defer.Deferred:
        """The merged Prometheus exposition, as /metrics serves it."""
        if self._scrape is None:
            return defer.succeed(Table(text="metrics are not enabled"))
        return self._scrape().addCallback(lambda text: Table(text=text))

    def help(self) -> Table:
        """This list."""
        return Table(
            [{"command": name + "()", "what": (getattr(self, name).__doc__ or "").strip().splitlines()[0]} for name in COMMANDS]
        )

    def namespace(self) -> dict[str, Callable[..., Any]]:
        return {name: getattr(self, name) for name in COMMANDS}


COMMANDS = ("workers", "registrations", "flows", "calls", "call", "release", "disconnect", "stats", "reload", "metrics", "help")
