"""The service tree: built from a ``Config``; the one place that wires the object graph.

Every service is given what it works with when it is constructed — the eP-CSCF its
next hop toward the embedded core and the metrics' event callbacks (``NodeObservers``),
the console, metrics and drain the node's ``NodeOperations`` — and nothing is attached
after start.  (Inside the eP-CSCF, ``PcscfNode`` builds its own message path.)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from epcscf.config import Config, ConfigError
from epcscf.core.service import EmbeddedCore, EmbeddedCoreSettings
from epcscf.core.users import read_users
from epcscf.ops.console import console_namespace as operator_commands
from epcscf.ops.heap import HeapTrimmer, glibc_heap
from epcscf.ops.lifecycle import Drainer, install_sighup, reload_config
from epcscf.ops.manhole import ManholeService, UsersFileError
from epcscf.ops.metrics import EpcscfMetrics, MetricsService
from epcscf.pcscf.node import PcscfNode
from epcscf.pcscf.operations import NodeOperations
from epcscf.sip.connection import WEBSOCKET_TRANSPORTS
from epcscf.sip.params import clear_memos
from epcscf.sip.resolver import Target
from epcscf.wwsf import DemoUser, WebSocketEndpoint, WwsfService, WwsfSettings
from epcscf.wwsf.bundle import default_bundle_dir
from epcscf.wwsf.login import LoginAccount
from epcscf.wwsf.tokens import TokenIssuer, ensure_signing_key

log = Logger(namespace="epcscf.service")


class StartupError(Exception):
    """The service cannot start (a port in use, an unreadable file); ``str()`` is one line."""


class EpcscfService(MultiService):
    """The whole eP-CSCF: listeners, the proxy, the embedded core and the console."""

    def __init__(
        self, config: Config, reactor: Any = None, ws_port_opener: Any = None, sip_fds: Mapping[str, int] | None = None
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.core: EmbeddedCore | None = None
        core_targets = None
        if config.core.mode == "embedded":
            # Started first: the eP-CSCF needs its address as the next hop toward the core.
            self.core = EmbeddedCore(EmbeddedCoreSettings.from_config(config), reactor)
            self.core.setServiceParent(self)
            core_targets = self._embedded_core_targets
        # Web login: the demo WWSF signs tokens with a key of state_dir, which the eP-CSCF trusts
        # unless [auth] keys names the operator's WWSF keys.
        self.token_key: tuple[str, str] | None = None
        if config.auth.mode != "digest" and (config.wwsf.enabled or not config.auth.keys):
            self.token_key = ensure_signing_key(config.service.state_dir)
        # Before the node: it is given the metrics' event callbacks at construction.
        self.metrics = EpcscfMetrics(lambda: self.operations)
        self.pcscf = PcscfNode(
            config, reactor, core_targets, observers=self.metrics.observers(),
            token_keys=self.token_key[1] if self.token_key is not None else "",
            ws_port_opener=ws_port_opener, sip_fds=sip_fds,
        )
        self.pcscf.setServiceParent(self)
        #: what the console, the metrics and the drain use of the eP-CSCF
        self.operations: NodeOperations = self.pcscf.operations
        self.wwsf: WwsfService | None = None
        if config.wwsf.enabled:
            self.wwsf = WwsfService(self._wwsf_settings(), config.wwsf.listen, reactor, config.ws.certificate, config.ws.private_key)
            self.wwsf.setServiceParent(self)
        self.manhole: ManholeService | None = None
        if config.manhole.enabled:
            host_key = config.manhole.host_key or os.path.join(config.service.state_dir, "manhole_host_key")
            self.manhole = ManholeService(config.manhole.port, config.manhole.users, host_key, self.console_namespace)
            self.manhole.setServiceParent(self)
        self.metrics_service: MetricsService | None = None
        if config.metrics.enabled:
            self.metrics_service = MetricsService(self.metrics, config.metrics.address, config.metrics.port, reactor)
            self.metrics_service.setServiceParent(self)
        self.lifecycle = Drainer(self.operations, lambda: self.config.service.drain_timeout, reactor)
        # After a burst of calls, hand the C heap's free pages back (see epcscf.ops.heap).
        heap = glibc_heap()
        self.heap_trimmer: HeapTrimmer | None = (
            HeapTrimmer(reactor, heap, before_trim=clear_memos) if heap is not None else None
        )
        if self.heap_trimmer is not None:
            self.heap_trimmer.setServiceParent(self)
        self._restore_sighup: Any = None
        self._stopping: defer.Deferred | None = None

    def console_namespace(self) -> dict[str, Any]:
        """What an operator finds in the manhole: the commands and the running objects."""
        namespace: dict[str, Any] = {
            "service": self,
            "config": self.config,
            "reactor": self.reactor,
            "pcscf": self.pcscf,
            "core": self.core,
        }
        namespace.update(operator_commands(self))
        return namespace

    def reload(self) -> None:
        """SIGHUP: re-read the ini files; a bad file is logged in one line and changes nothing."""
        try:
            reload_config(self)
        except ConfigError as error:
            log.error("reload refused, running configuration kept: {error}", error=str(error))

    def _wwsf_settings(self) -> WwsfSettings:
        return demo_wwsf_settings(
            self.config,
            self.core is not None,
            self.token_key,
            lambda: [
                WebSocketEndpoint(l.transport.lower(), l.address.host, l.address.port)
                for l in self.pcscf.listeners
                if l.transport in WEBSOCKET_TRANSPORTS
            ],
        )

    def _embedded_core_targets(self) -> list[Target]:
        assert self.core is not None
        return [Target(transport, address.host, address.port) for transport, address in self.core.addresses]

    def startService(self) -> None:  # noqa: N802
        from twisted.internet import reactor

        log.info(
            "epcscf starting on {reactor} with {files}",
            reactor=f"{type(reactor).__module__}.{type(reactor).__qualname__}",
            files=", ".join(self.config.files),
        )
        try:
            super().startService()
        except CannotListenError as error:
            reason = error.socketError.strerror if hasattr(error.socketError, "strerror") else error.socketError
            message = f"cannot listen on {error.interface or '*'}:{error.port}: {reason}"
            log.critical("{message}", message=message)
            raise StartupError(message) from None
        except (UsersFileError, OSError) as error:
            log.critical("{message}", message=str(error))
            raise StartupError(str(error)) from None
        self._restore_sighup = install_sighup(self.reactor, self.reload)

    def stopService(self) -> defer.Deferred | None:  # noqa: N802
        """Drain (``[service] drain_timeout``, see ``epcscf.ops.lifecycle``), then stop everything."""
        if self._restore_sighup is not None:
            self._restore_sighup()
            self._restore_sighup = None
        if self._stopping is not None:
            return self._stopping.addCallback(lambda _: None)  # a second stop waits for the first
        if not self.running:
            return super().stopService()
        draining = self.lifecycle.drain()
        draining.addErrback(lambda failure: log.failure("drain failed; stopping anyway", failure))
        draining.addCallback(lambda _: super(EpcscfService, self).stopService())
        stopped: defer.Deferred = defer.Deferred()
        draining.addBoth(lambda result: (stopped.callback(None), result)[1])
        self._stopping = stopped
        return draining


def demo_wwsf_settings(
    config: Config,
    embedded_core: bool,
    token_key: tuple[str, str] | None,
    websocket_endpoints: Callable[[], list[WebSocketEndpoint]],
) -> WwsfSettings:
    """The WWSF's settings (one process or the supervisor of workers).  Its demo users, and
    the accounts of its web login ([auth] mode token or both), are the embedded core's users
    — a lab's — never an external core's."""
    wwsf = config.wwsf
    users = read_users(config.core.users, config.core.domain) if embedded_core else []
    login: dict[str, Any] = {}
    if token_key is not None and embedded_core:
        issuer = TokenIssuer(token_key[0], config.auth.audience or config.core.domain, config.auth.token_lifetime)
        accounts = {
            user.name: LoginAccount(user.name, user.password, tuple(user.identities), f"{user.name}@{config.core.domain}")
            for user in users
        }
        login = {"token_issuer": issuer, "login_accounts": accounts.get}
    shown = users if wwsf.demo_users else []
    return WwsfSettings(
        domain=config.core.domain,
        websocket_endpoints=websocket_endpoints,
        bundle_dir=wwsf.bundle_dir or default_bundle_dir(),
        demo_users=tuple(DemoUser(u.name, u.password, u.identities[0], u.identities) for u in shown),
        websocket_url=wwsf.websocket_url,
        **login,
    )
