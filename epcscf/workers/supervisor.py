"""``twistd epcscf`` with ``[service] workers`` > 1: the supervisor.

It runs what must exist once — the embedded core (when ``[core] mode = embedded``), the
WWSF page, the SSH console and ``/metrics`` — holds the shared WebSocket ports and every
worker's own SIP sockets (``epcscf.workers.sockets``: they stay open while a worker is
restarted) and keeps N worker processes running (``WorkerPool``).  It
handles no SIP itself: a WIC's WebSocket is accepted by one worker, which writes its own
core-facing address in Path, Record-Route and Via, so the core sends everything for that
flow straight back to it.  SIGHUP is checked here (a bad file changes nothing anywhere)
and passed on to every worker; SIGTERM (twistd stopping) becomes a SIGTERM to every
worker, each draining as the one-process service does, and the supervisor ends after
the last of them.
"""

from __future__ import annotations

import atexit
import os
import socket
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource

from epcscf.config import Config, ConfigError, Listener, load
from epcscf.core.service import EmbeddedCore, EmbeddedCoreSettings
from epcscf.logging import set_log_level
from epcscf.ops.lifecycle import install_sighup
from epcscf.ops.manhole import ManholeService, UsersFileError
from epcscf.service import demo_wwsf_settings
from epcscf.wwsf import WebSocketEndpoint, WwsfService, WwsfSettings
from epcscf.wwsf.tokens import ensure_signing_key
from epcscf.workers.console import SupervisorConsole
from epcscf.workers.metrics import MergedMetricsPage, QuietSite, SupervisorMetrics, scrape_once
from epcscf.workers.plan import WorkerPlan, worker_sip_listeners
from epcscf.workers.pool import WorkerPool
from epcscf.workers.sockets import listening_socket, reserve_reuseport, sip_socket

log = Logger(namespace="epcscf.workers.supervisor")

STARTUP_FAILED = 3  # exit status when a worker could not start


def _exit_with(line: str, status: int) -> None:
    # To descriptor 2 itself: twistd has replaced sys.stderr by a logger, stopped by now.
    os.write(2, line.encode("utf-8", "replace"))
    os._exit(status)


class SupervisorService(MultiService):
    """The supervisor of ``config.service.workers`` eP-CSCF worker processes."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.count = config.service.workers
        #: the [ws] listeners with their ports resolved (port 0 → the one all workers share)
        self.ws_listeners: list[Listener] = list(config.ws.listen)
        #: the [nonsip] (Janus API) listeners, shared the same way
        self.nonsip_listeners: list[Listener] = list(config.nonsip.listen)
        self._ws_sockets: list[socket.socket] = []
        #: each worker's core-facing [sip] sockets, held here across its restarts (epcscf.workers.sockets)
        self._sip_sockets: list[list[tuple[Listener, socket.socket]]] = []
        self.core: EmbeddedCore | None = None
        if config.core.mode == "embedded":
            self.core = EmbeddedCore(EmbeddedCoreSettings.from_config(config), reactor)
            self.core.setServiceParent(self)
        # Web login: the key the demo WWSF signs with is made here, before any worker starts, so
        # that every worker finds the same file in state_dir (as EpcscfService decides it).
        self.token_key: tuple[str, str] | None = None
        if config.auth.mode != "digest" and (config.wwsf.enabled or not config.auth.keys):
            self.token_key = ensure_signing_key(config.service.state_dir)
        self.wwsf: WwsfService | None = None
        if config.wwsf.enabled:
            self.wwsf = WwsfService(self._wwsf_settings(), config.wwsf.listen, reactor, config.ws.certificate, config.ws.private_key)
            self.wwsf.setServiceParent(self)
        self.pool: WorkerPool | None = None
        self.metrics = SupervisorMetrics(lambda: len(self.pool.live()) if self.pool is not None else 0)
        self.console: SupervisorConsole | None = None
        self.manhole: ManholeService | None = None
        if config.manhole.enabled:
            host_key = config.manhole.host_key or os.path.join(config.service.state_dir, "manhole_host_key")
            self.manhole = ManholeService(config.manhole.port, config.manhole.users, host_key, self.console_namespace)
            self.manhole.setServiceParent(self)
        self._metrics_port: IListeningPort | None = None
        self._restore_sighup: Any = None
        self.startup_failure: str | None = None

    # --- start and stop ----------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802
        from epcscf.service import StartupError

        log.info("epcscf supervisor starting {count} workers with {files}", count=self.count, files=", ".join(self.config.files))
        try:
            self._share_ws_ports()
            self._hold_sip_ports()
            super().startService()
            if self.config.metrics.enabled:
                root = Resource()
                root.putChild(b"metrics", MergedMetricsPage(self, self.metrics, self.reactor))
                self._metrics_port = self.reactor.listenTCP(self.config.metrics.port, QuietSite(root), interface=self.config.metrics.address)
                log.info("Prometheus metrics of all workers on http://{address}:{port}/metrics", address=self.config.metrics.address, port=self.metrics_port)
        except CannotListenError as error:
            reason = error.socketError.strerror if hasattr(error.socketError, "strerror") else error.socketError
            message = f"cannot listen on {error.interface or '*'}:{error.port}: {reason}"
            log.critical("{message}", message=message)
            raise StartupError(message) from None
        except (UsersFileError, OSError) as error:
            message = str(error)
            if isinstance(error, OSError) and error.strerror:
                message = f"cannot listen on the [ws] ports: {error.strerror}"
            log.critical("{message}", message=message)
            raise StartupError(message) from None
        self.pool = WorkerPool(
            self._plans(),
            self.config.files,
            self.reactor,
            lambda: self.config.service.drain_timeout,
            inherited_fds=tuple(sock.fileno() for sock in self._ws_sockets) if self._inherit else (),
            on_restart=self.metrics.restarted,
            on_startup_failure=self._worker_failed_to_start,
        )
        self.console = SupervisorConsole(self.pool, self.reactor, self.scrape)
        self.pool.startService()
        self._restore_sighup = install_sighup(self.reactor, self.reload)

    @property
    def _inherit(self) -> bool:
        return self.config.service.ws_socket_sharing == "inherit"

    def _share_ws_ports(self) -> None:
        """The [ws] ports, then the [nonsip] ones: both are WebSocket listeners of every worker."""
        for listeners in (self.ws_listeners, self.nonsip_listeners):
            for index, listener in enumerate(listeners):
                sock = listening_socket(listener) if self._inherit else reserve_reuseport(listener)
                if self._inherit:
                    os.set_inheritable(sock.fileno(), True)
                self._ws_sockets.append(sock)
                listeners[index] = Listener(listener.transport, listener.address, sock.getsockname()[1])

    def _hold_sip_ports(self) -> None:
        for index in range(self.count):
            held = []
            self._sip_sockets.append(held)
            for listener in worker_sip_listeners(self.config, index):
                sock = sip_socket(listener)
                held.append((Listener(listener.transport, listener.address, sock.getsockname()[1]), sock))

    def _close_held_sockets(self) -> None:
        for sock in self._ws_sockets + [sock for held in self._sip_sockets for _, sock in held]:
            sock.close()
        self._ws_sockets, self._sip_sockets = [], []

    def _plans(self) -> list[WorkerPlan]:
        next_hop = source = ""
        if self.core is not None:
            transport, address = next(((t, a) for t, a in self.core.addresses if t == "TCP"), self.core.addresses[0])
            next_hop = f"sip:{address.host}:{address.port};transport={transport.lower()}"
            source = address.host
        return [
            WorkerPlan(
                index=index,
                count=self.count,
                sip_listen=tuple(str(listener) for listener, _ in self._sip_sockets[index]),
                sip_fds=tuple(sock.fileno() for _, sock in self._sip_sockets[index]),
                core_next_hop=next_hop,
                core_source=source,
                ws_socket_sharing=self.config.service.ws_socket_sharing,
                ws_ports=tuple(listener.port for listener in self.ws_listeners),
                nonsip_ports=tuple(listener.port for listener in self.nonsip_listeners),
                ws_fds=tuple(sock.fileno() for sock in self._ws_sockets) if self._inherit else (),
            )
            for index in range(self.count)
        ]

    def _worker_failed_to_start(self, message: str) -> None:
        """A worker could not start (its SIP port in use…): stop everything and exit non-zero
        with one line, as the one-process service does when its own start fails."""
        self.startup_failure = message
        # twistd has no exit status for a failure after start: set ours once it has cleaned up
        # (pidfile removed) and Python is exiting.
        atexit.register(_exit_with, f"twistd epcscf: {message}\n", STARTUP_FAILED)
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> defer.Deferred:  # noqa: N802
        if self._restore_sighup is not None:
            self._restore_sighup()
            self._restore_sighup = None
        stopping = self.pool.stopService() if self.pool is not None else defer.succeed(None)

        def rest(_: Any) -> defer.Deferred:
            self._close_held_sockets()
            port, self._metrics_port = self._metrics_port, None
            done = [defer.maybeDeferred(super(SupervisorService, self).stopService)]
            if port is not None:
                done.append(defer.maybeDeferred(port.stopListening))
            return defer.DeferredList(done, consumeErrors=True)

        return stopping.addBoth(rest)

    # --- operations --------------------------------------------------------------------------

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_port is None else self._metrics_port.getHost().port

    def live(self) -> list[Any]:
        return self.pool.live() if self.pool is not None else []

    def ask(self, command: Any, **arguments: Any) -> defer.Deferred:
        if self.pool is None:
            return defer.succeed([])
        return self.pool.ask(command, **arguments)

    def scrape(self) -> defer.Deferred:
        return scrape_once(self, self.metrics)

    def console_namespace(self) -> dict[str, Any]:
        namespace: dict[str, Any] = {"service": self, "config": self.config, "reactor": self.reactor, "core": self.core, "pool": self.pool}
        if self.console is not None:
            namespace.update(self.console.namespace())
        return namespace

    def reload(self) -> None:
        """SIGHUP: check the ini files here; if they load, every worker re-reads them."""
        try:
            new = load(self.config.files)
        except ConfigError as error:
            log.error("reload refused, running configuration kept: {error}", error=str(error))
            return
        set_log_level("", new.log.level)
        log.info("reload: passing SIGHUP to {count} workers", count=len(self.live()))
        if self.pool is not None:
            self.pool.signal_all("HUP")

    def _wwsf_settings(self) -> WwsfSettings:
        """The endpoints the page names are the shared [ws] ports."""
        return demo_wwsf_settings(
            self.config,
            self.core is not None,
            self.token_key,
            lambda: [
                WebSocketEndpoint(l.transport, "127.0.0.1" if l.address in ("0.0.0.0", "::") else l.address, l.port)
                for l in self.ws_listeners
            ],
        )
