"""One worker process: a whole eP-CSCF (``EpcscfService``) run by the supervisor.

    python -m epcscf.workers.run --plan '<WorkerPlan JSON>' --config a.ini [--config b.ini]

It reads the same ini files as the supervisor and derives its own configuration from them
(``epcscf.workers.plan``), logs JSON lines on stdout (the supervisor writes them into its
log, marked with the worker), answers the supervisor's AMP commands on descriptors 3/4
(``epcscf.workers.control``), drains on SIGTERM and re-reads its files on SIGHUP like the
single-process service.  When the supervisor goes away (its end of the pipes closes) the
worker stops: a worker never runs unsupervised.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from epcscf.config import Config, ConfigError, load
from epcscf.memory import tune_collector
from epcscf.ops.lifecycle import ConfigChange, apply_config
from epcscf.ops.metrics import EventLoopLag
from epcscf.pcscf.flows import FlowTokenCodec
from epcscf.service import EpcscfService, StartupError
from epcscf.workers import control
from epcscf.workers.plan import WorkerPlan, inherited_sip_fds, worker_config
from epcscf.workers.sockets import WsPortOpener, inherited_opener, reuseport_opener

log = Logger(namespace="epcscf.workers.worker")


class WorkerService(EpcscfService):
    """``EpcscfService`` whose configuration is the worker's share of the ini files."""

    def __init__(
        self, config: Config, plan: WorkerPlan, reactor: Any, ws_port_opener: WsPortOpener, flow_key: bytes | None = None
    ) -> None:
        self.plan = plan
        super().__init__(worker_config(config, plan), reactor, ws_port_opener=ws_port_opener, sip_fds=inherited_sip_fds(plan))
        if flow_key is not None:
            # The supervisor's key (see epcscf.workers.pool): set before any token is issued.
            self.pcscf.flows.codec = FlowTokenCodec(flow_key)
        # [metrics] is off in a worker (the supervisor serves /metrics): its lag probe runs here.
        self.lag = EventLoopLag(reactor, self.metrics.loop_lag_histogram)

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.lag.start()

    def stopService(self) -> Any:  # noqa: N802
        self.lag.stop()
        return super().stopService()

    def reload(self) -> None:
        try:
            self.reload_changes()
        except ConfigError as error:
            log.error("reload refused, running configuration kept: {error}", error=str(error))

    def reload_changes(self) -> list[ConfigChange]:
        """Re-read the ini files; ``ConfigError`` when one is bad (nothing changes then)."""
        return apply_config(self, worker_config(load(self.config.files), self.plan))


class WorkerControl(control.QuietAMP):
    """The worker's end of the control channel: answers with its ``NodeOperations``."""

    def __init__(self, service: WorkerService, on_lost: Any) -> None:
        super().__init__()
        self.service = service
        self._on_lost = on_lost

    @control.Query.responder
    def query(self, what: str, argument: str | None = None) -> dict[str, Any]:
        operations = self.service.operations
        if what == "call_timeline":
            return {"rows": operations.call_timeline(argument or "")}
        if what not in control.QUERIES:
            raise KeyError(what)
        if what == "calls" and not operations.handles_calls():
            return {"rows": []}
        return {"rows": getattr(operations, what)()}

    @control.ReleaseCall.responder
    def release_call(self, call_id: str, reason: str) -> dict[str, Any]:
        released = self.service.operations.release_call(call_id, reason)
        return {"released": -1 if released is None else released}

    @control.DisconnectFlow.responder
    def disconnect_flow(self, flow: str, code: int, reason: str) -> dict[str, Any]:
        return {"closed": self.service.operations.disconnect_flow(flow, code, reason)}

    @control.Scrape.responder
    def scrape(self) -> dict[str, Any]:
        body, _ = self.service.metrics.render()
        return {"exposition": body.decode("utf-8")}

    @control.Reload.responder
    def reload(self) -> dict[str, Any]:
        try:
            changes = self.service.reload_changes()
        except ConfigError as error:
            return {"changes": [], "error": str(error)}
        return {"changes": [change.row() for change in changes], "error": ""}

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        super().connectionLost(reason)
        self._on_lost()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="epcscf-worker")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--config", action="append", required=True)
    args = parser.parse_args(argv)
    plan = WorkerPlan.from_json(args.plan)
    key_line = sys.stdin.readline().strip()  # the supervisor writes the flow-token key, then closes
    flow_key = bytes.fromhex(key_line) if key_line else None

    from twisted.internet import reactor  # the asyncio reactor: epcscf.workers.run installed it
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner

    from epcscf.logging import make_observer

    try:
        config = load(args.config)
    except ConfigError as error:
        sys.stderr.write(f"worker {plan.index}: configuration error: {error}\n")
        raise SystemExit(2) from None
    # JSON lines: the supervisor re-publishes each event in its own log, in its own format.
    globalLogBeginner.beginLoggingTo(
        [make_observer(type(config.log)(level=config.log.level, format="json"), sys.stdout)],
        redirectStandardIO=False,
    )
    if plan.ws_socket_sharing == "inherit":
        opener = inherited_opener(reactor, dict(zip(plan.ws_ports + plan.nonsip_ports, plan.ws_fds)))
    else:
        opener = reuseport_opener(reactor)
    service = WorkerService(config, plan, reactor, opener, flow_key)

    def supervisor_gone() -> None:
        log.warn("worker {index}: the supervisor is gone; stopping", index=plan.index)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping (SIGTERM came first)

    link = WorkerControl(service, supervisor_gone)
    StandardIO(link, stdin=control.COMMANDS_FD, stdout=control.ANSWERS_FD, reactor=reactor)

    def start() -> None:
        try:
            service.startService()
        except Exception as error:  # StartupError and friends: one line, then a non-zero exit
            if not isinstance(error, StartupError):
                traceback.print_exc()  # a defect: the supervisor logs the traceback's lines
            sys.stderr.write(f"{error}\n")  # the supervisor names the worker
            sys.stderr.flush()
            os._exit(3)
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        listeners = [str(listener) for listener in service.pcscf.listeners]
        link.callRemote(control.WorkerReady, index=plan.index, pid=os.getpid(), listeners=listeners).addErrback(
            lambda failure: None
        )

    reactor.callWhenRunning(start)
    # As in epcscf.tap (epcscf.memory): the collector's thresholds; what start made is frozen too.
    tune_collector(reactor)
    reactor.run()

