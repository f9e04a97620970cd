"""The worker processes: spawned, watched, restarted, signalled, asked (``WorkerPool``).

Each worker is ``python -m epcscf.workers.worker`` started with ``reactor.spawnProcess``;
its stdout carries JSON log events (re-published here, namespace ``workerN/…``), its
stderr whatever Python prints when it dies, and descriptors 3/4 the AMP control channel.

A worker that exits while the pool runs is logged once with its exit reason, counted
(``restarts``) and started again with the *same* SIP sockets (the supervisor's, handed
down: ``WorkerPlan.sip_fds``), so that the core's next in-dialog request for one of its
flows — even one sent while no worker ran — reaches the new worker, which knows no such
flow and answers 430 Flow Failed (RFC 5626 §5.3), instead of the core's transaction
timing out.  Restarts that follow quick crashes back off up to ``MAX_BACKOFF``.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from dataclasses import replace
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from epcscf.workers import control
from epcscf.workers.plan import WorkerPlan

log = Logger(namespace="epcscf.workers")

QUICK_CRASH = 10.0  # seconds: a worker dying sooner than this after its start is restarted later
FIRST_BACKOFF = 0.25
MAX_BACKOFF = 10.0
ASK_TIMEOUT = 5.0  # seconds a worker has to answer a console or metrics command
STOP_GRACE = 10.0  # seconds beyond [service] drain_timeout before a stopping worker gets SIGKILL


class _ChildPipe:
    """The AMP link's transport: writes go to the worker's ``COMMANDS_FD``."""

    disconnecting = False

    def __init__(self, process: Any) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.writeToChild(control.COMMANDS_FD, data)

    def writeSequence(self, data: list[bytes]) -> None:  # noqa: N802
        self.write(b"".join(data))

    def loseConnection(self) -> None:  # noqa: N802
        self.disconnecting = True
        self.process.closeChildFD(control.COMMANDS_FD)

    def getPeer(self) -> str:  # noqa: N802
        return f"worker pid {self.process.pid}"

    getHost = getPeer


class WorkerLink(control.QuietAMP):
    """The supervisor's end of one worker's control channel."""

    def __init__(self, ready: Callable[[int, int, list[str]], None]) -> None:
        super().__init__()
        self._ready = ready

    @control.WorkerReady.responder
    def worker_ready(self, index: int, pid: int, listeners: list[str]) -> dict[str, Any]:
        self._ready(index, pid, listeners)
        return {}


def exit_reason(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, error.ProcessTerminated) and value.signal is not None:
        try:
            name = signal.Signals(value.signal).name
        except ValueError:
            name = str(value.signal)
        return f"killed by {name}"
    if isinstance(value, (error.ProcessTerminated, error.ProcessDone)):
        return f"exit code {value.exitCode}"
    return str(value)


class WorkerProcess(protocol.ProcessProtocol):
    """One running worker: its log, its control link and its end."""

    def __init__(self, pool: "WorkerPool", plan: WorkerPlan, started: float) -> None:
        self.pool = pool
        self.plan = plan
        self.started = started
        self.pid: int | None = None
        self.ready = False
        self.link = WorkerLink(pool.worker_ready)
        self._log_buffer = b""
        self._stderr_buffer = b""
        self._stderr_tail: list[str] = []
        self._namespace = f"worker{plan.index}"

    def connectionMade(self) -> None:  # noqa: N802
        self.pid = self.transport.pid
        self.link.makeConnection(_ChildPipe(self.transport))  # type: ignore[arg-type]

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        if fd == control.ANSWERS_FD:
            self.link.dataReceived(data)
        elif fd == 1:
            self._log_buffer += data
            *lines, self._log_buffer = self._log_buffer.split(b"\n")
            for line in lines:
                self._republish(line)
        elif fd == 2:
            self._stderr_buffer += data
            *lines, self._stderr_buffer = self._stderr_buffer.split(b"\n")
            for line in lines:
                self._stderr_line(line)

    def _stderr_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line.strip():
            self._stderr_tail = (self._stderr_tail + [line])[-20:]
            log.warn("worker {index} stderr: {line}", index=self.plan.index, line=line)

    def _republish(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            log.info("worker {index}: {line}", index=self.plan.index, line=line.decode("utf-8", "replace"))
            return
        event["log_namespace"] = f"{self._namespace}/{event.get('log_namespace', '?')}"
        event["worker"] = self.plan.index
        globalLogPublisher(event)

    def childConnectionLost(self, fd: int) -> None:  # noqa: N802
        if fd == control.ANSWERS_FD:
            self.link.connectionLost(Failure(error.ConnectionDone("worker closed its control channel")))

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        if self._log_buffer:
            self._republish(self._log_buffer)
        if self._stderr_buffer:
            self._stderr_line(self._stderr_buffer)
        self.pool.worker_exited(self, reason)

    def last_error(self) -> str:
        return self._stderr_tail[-1] if self._stderr_tail else ""


class WorkerPool(Service):
    """N worker processes kept alive; the console, metrics and signals reach them here."""

    name = "workers"

    def __init__(
        self,
        plans: list[WorkerPlan],
        config_files: tuple[str, ...],
        reactor: Any,
        drain_timeout: Callable[[], float],
        inherited_fds: tuple[int, ...] = (),
        on_restart: Callable[[int, str], None] | None = None,
        on_startup_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.plans = list(plans)
        self.config_files = tuple(os.path.abspath(path) for path in config_files)
        self.reactor = reactor
        self.drain_timeout = drain_timeout
        self.inherited_fds = inherited_fds
        self.on_restart = on_restart
        self.on_startup_failure = on_startup_failure
        self.processes: dict[int, WorkerProcess] = {}
        #: one RFC 5626 §5.2 flow-token key for every worker and every restart: a restarted
        #: worker still recognises the tokens its predecessor issued and answers 430 for them
        #: (their flows are gone), not 403 as for a forged token
        self.flow_key = secrets.token_bytes(32)
        self.restarts: dict[int, int] = {plan.index: 0 for plan in plans}
        self._backoff: dict[int, float] = {}
        self._pending_restarts: dict[int, Any] = {}
        self._ever_ready: set[int] = set()
        self._all_ready: defer.Deferred = defer.Deferred()
        self._stopped: defer.Deferred | None = None

    # --- life --------------------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        super().startService()
        for plan in self.plans:
            self._spawn(plan)

    def _spawn(self, plan: WorkerPlan) -> None:
        self._pending_restarts.pop(plan.index, None)
        process = WorkerProcess(self, plan, self.reactor.seconds())
        argv = [sys.executable, "-m", "epcscf.workers.run", "--plan", plan.to_json()]
        for path in self.config_files:
            argv += ["--config", path]
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", control.COMMANDS_FD: "w", control.ANSWERS_FD: "r"}
        child_fds.update({fd: fd for fd in self.inherited_fds + plan.sip_fds})
        transport = self.reactor.spawnProcess(process, sys.executable, argv, env=dict(os.environ), childFDs=child_fds)
        # The flow-token key on stdin (not in argv, which every local user can read).
        transport.writeToChild(0, self.flow_key.hex().encode("ascii") + b"\n")
        transport.closeChildFD(0)
        self.processes[plan.index] = process

    def worker_ready(self, index: int, pid: int, listeners: list[str]) -> None:
        process = self.processes.get(index)
        if process is None:
            return
        process.ready = True
        if not self.plans[index].sip_fds:
            # The SIP ports it bound (port 0 in the ini: any) are the ones it gets again after a restart.
            sip = tuple(text for text in listeners if text.split(":", 1)[0] in ("udp", "tcp", "tls"))
            self.plans[index] = replace(self.plans[index], sip_listen=sip)
        first = index not in self._ever_ready
        self._ever_ready.add(index)
        log.info(
            "worker {index} (pid {pid}) {how} on {listeners}",
            index=index, pid=pid, how="ready" if first else "restarted and ready", listeners=", ".join(listeners),
        )
        if len(self._ever_ready) == len(self.plans) and not self._all_ready.called:
            self._all_ready.callback(None)

    def when_ready(self) -> defer.Deferred:
        """Fires once every worker has reported ready at least once."""
        result: defer.Deferred = defer.Deferred()
        self._all_ready.addCallback(lambda value: (result.callback(None), value)[1])
        return result

    def worker_exited(self, process: WorkerProcess, reason: Failure) -> None:
        index = process.plan.index
        if self.processes.get(index) is process:
            del self.processes[index]
        why = exit_reason(reason)
        if self._stopped is not None or not self.running:
            log.info("worker {index} (pid {pid}) stopped: {why}", index=index, pid=process.pid, why=why)
            self._check_stopped()
            return
        detail = process.last_error()
        if index not in self._ever_ready:
            # It never listened: a port in use, an unreadable file.  Restarting would not help.
            message = f"worker {index} could not start: {detail or why}"
            log.critical("{message}", message=message)
            if self.on_startup_failure is not None:
                self.on_startup_failure(message)
            return
        self.restarts[index] += 1
        quick = self.reactor.seconds() - process.started < QUICK_CRASH
        delay = min(MAX_BACKOFF, self._backoff.get(index, FIRST_BACKOFF / 2) * 2) if quick else 0.0
        self._backoff[index] = delay if quick else FIRST_BACKOFF / 2
        log.error(
            "worker {index} (pid {pid}) died: {why}{detail}; restarting it in {delay:.2f} s (restart {count})",
            index=index, pid=process.pid, why=why, detail=f" ({detail})" if detail else "", delay=delay,
            count=self.restarts[index],
        )
        if self.on_restart is not None:
            self.on_restart(index, why)
        self._pending_restarts[index] = self.reactor.callLater(delay, self._spawn, self.plans[index])

    def stopService(self) -> defer.Deferred:  # noqa: N802
        """SIGTERM to every worker (each drains as the one-process service does), then wait."""
        super().stopService()
        for call in self._pending_restarts.values():
            if call.active():
                call.cancel()
        self._pending_restarts.clear()
        self._stopped = defer.Deferred()
        self.signal_all("TERM")
        killer = self.reactor.callLater(self.drain_timeout() + STOP_GRACE, self.signal_all, "KILL")
        self._stopped.addBoth(lambda result: (killer.cancel() if killer.active() else None, result)[1])
        self._check_stopped()
        return self._stopped

    def _check_stopped(self) -> None:
        if self._stopped is not None and not self.processes and not self._stopped.called:
            self._stopped.callback(None)

    # --- reaching the workers -------------------------------------------------------------------

    def signal_all(self, name: str) -> None:
        for process in list(self.processes.values()):
            try:
                process.transport.signalProcess(name)
            except error.ProcessExitedAlready:
                pass

    def live(self) -> list[WorkerProcess]:
        return [self.processes[index] for index in sorted(self.processes) if self.processes[index].ready]

    def ask(self, command: type[amp.Command], **arguments: Any) -> defer.Deferred:
        """``command`` to every ready worker: fires with [(index, answer dict or None on failure)]."""
        workers = self.live()
        # A worker stuck in a long computation must not hang the console or the scrape.
        asking = [worker.link.callRemote(command, **arguments).addTimeout(ASK_TIMEOUT, self.reactor) for worker in workers]

        def pair(results: list[tuple[bool, Any]]) -> list[tuple[int, Any]]:
            answers = []
            for worker, (ok, value) in zip(workers, results):
                if not ok:
                    log.warn("worker {index} did not answer {command}: {why}", index=worker.plan.index, command=command.__name__, why=value.value)
                answers.append((worker.plan.index, value if ok else None))
            return answers

        return defer.DeferredList(asking, consumeErrors=True).addCallback(pair)

    def ask_one(self, index: int, command: type[amp.Command], **arguments: Any) -> defer.Deferred:
        worker = self.processes.get(index)
        if worker is None or not worker.ready:
            return defer.fail(KeyError(f"worker {index} is not running"))
        return worker.link.callRemote(command, **arguments).addTimeout(ASK_TIMEOUT, self.reactor)
