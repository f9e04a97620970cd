"""The WWSF listener(s): ``[wwsf] listen`` (http/https ``Listener``s) → ``epcscf.wwsf.site``."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

from epcscf.config import Listener
from epcscf.sip.tls import HTTP_PROTOCOLS, server_tls_from_files
from epcscf.wwsf.site import WwsfSettings, WwsfSite

__all__ = ["WwsfService"]

log = Logger(namespace="epcscf.wwsf")


class _TrackedConnections(WrappingFactory):
    """Keeps the open connections, so that stopping can close them and wait until they are gone
    (an idle HTTP/1.1 keep-alive connection would otherwise outlive the service)."""

    noisy = False

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._all_closed: list[defer.Deferred] = []

    def unregisterProtocol(self, protocol: Any) -> None:  # noqa: N802
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiters, self._all_closed = self._all_closed, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self) -> defer.Deferred:
        if not self.protocols:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._all_closed.append(waiter)
        for connection in list(self.protocols):
            connection.transport.abortConnection()
        return waiter


class WwsfService(Service):
    """Serves the WWSF site; stopping it closes the listeners and any open HTTP connection."""

    name = "wwsf"

    def __init__(
        self,
        settings: WwsfSettings,
        listeners: tuple[Listener, ...],
        reactor: Any = None,
        certificate: str = "",
        private_key: str = "",
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.settings = settings
        self.reactor = reactor
        self.wanted = listeners
        self.certificate, self.private_key = certificate, private_key
        self.factory = _TrackedConnections(WwsfSite(settings))
        self.ports: list[IListeningPort] = []
        #: the bound origins, e.g. http://127.0.0.1:8081 (port 0 resolved)
        self.origins: list[str] = []

    def startService(self) -> None:  # noqa: N802
        try:
            for listener in self.wanted:
                self.ports.append(self._listen(listener))
        except BaseException:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            raise
        self.origins = []
        for listener, port in zip(self.wanted, self.ports):
            host = port.getHost()
            address = f"[{host.host}]" if ":" in host.host else host.host
            self.origins.append(f"{listener.transport}://{address}:{host.port}")
        log.info("WWSF (the demo WebRTC client page) at {origins}", origins=", ".join(f"{o}/" for o in self.origins))
        super().startService()

    def _listen(self, listener: Listener) -> IListeningPort:
        if listener.transport == "https":
            # Browsers offer h2 and http/1.1 by ALPN; twisted.web serves HTTP/1.1 here.
            options = server_tls_from_files(self.certificate, self.private_key, HTTP_PROTOCOLS)
            return self.reactor.listenSSL(listener.port, self.factory, options, interface=listener.address)
        return self.reactor.listenTCP(listener.port, self.factory, interface=listener.address)

    def stopService(self) -> defer.Deferred:  # noqa: N802
        super().stopService()
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        self.ports = []
        stopping.append(self.factory.close_all())
        return defer.DeferredList(stopping, consumeErrors=True)
