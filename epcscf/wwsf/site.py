"""The WWSF's resource tree (TS 24.371 §4: the WebRTC Web Server Function delivers the WIC).

    /             index.html: the demo WIC page
    /style.css    its style sheet
    /app.js       its script: static/wic.js + JsSIP, bundled by esbuild (``epcscf.wwsf.bundle``)
    /config.json  what the page needs to reach the eP-CSCF: the WebSocket URL (from the ``[ws]``
                  listeners), the home domain and, in a lab, the embedded core's demo users
    /login /token the web login, when ``[auth] mode`` is token or both (``epcscf.wwsf.login``)

Only GET and HEAD (POST for the login); every response carries a Content-Security-Policy that lets the page talk
to nothing but its own origin and WebSocket servers, and is never framed.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.logger import Logger
from twisted.web import resource, server, static
from twisted.web.server import GzipEncoderFactory

__all__ = ["DemoUser", "WebSocketEndpoint", "WwsfSettings", "WwsfSite", "build_resource", "websocket_url"]

log = Logger(namespace="epcscf.wwsf")

#: the page's files as they are served (index.html, style.css) and its script's sources
STATIC = Path(__file__).resolve().parent / "static"
#: the bundled script (``epcscf.wwsf.bundle``), served as /app.js
BUNDLE_NAME = "app.js"

# W3C CSP3: scripts, styles and fetches only from the WWSF itself; SIP over ws:/wss: to
# the eP-CSCF (any host: its URL comes from config.json); no framing (clickjacking).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    b"Content-Security-Policy": CONTENT_SECURITY_POLICY.encode(),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Permissions-Policy": b"microphone=(self), camera=(self), geolocation=()",  # camera: the ?video=1 page
    # The page and its script change with the checkout (bin/setup rebuilds app.js): revalidate.
    b"Cache-Control": b"no-cache",
}


@dataclass(frozen=True)
class DemoUser:
    """One user of the embedded core, offered on the page in a lab."""

    name: str
    password: str
    #: the default public identity (sip:name@domain)
    uri: str
    identities: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebSocketEndpoint:
    """One ``[ws]`` listener as bound (port 0 resolved)."""

    scheme: str  # "ws" or "wss"
    host: str
    port: int


@dataclass(frozen=True)
class WwsfSettings:
    domain: str
    #: the bound ``[ws]`` listeners, asked per request (they are bound after this is built)
    websocket_endpoints: Callable[[], list[WebSocketEndpoint]]
    bundle_dir: str
    demo_users: tuple[DemoUser, ...] = ()
    #: fixed WebSocket URL for the page ("" = derived from the listeners and the request)
    websocket_url: str = ""
    #: web login (``epcscf.wwsf.login``): the token issuer and the accounts; None: no login
    token_issuer: Any = None
    login_accounts: Callable[[str], Any] | None = None


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def websocket_url(endpoints: list[WebSocketEndpoint], secure_page: bool, page_host: str) -> str | None:
    """The eP-CSCF URL a page loaded over http(s) from ``page_host`` should use.

    A page loaded over https may only open wss: (mixed content); an http page prefers ws:.
    A listener on the unspecified address is reached at the host the page came from.
    """
    preferred = ("wss",) if secure_page else ("ws", "wss")
    for scheme in preferred:
        for endpoint in endpoints:
            if endpoint.scheme == scheme:
                host = page_host if _unspecified(endpoint.host) else endpoint.host
                if ":" in host and not host.startswith("["):
                    host = f"[{host}]"
                return f"{scheme}://{host}:{endpoint.port}"
    return None


class ConfigJson(resource.Resource):
    """``/config.json``: the page's settings, computed per request."""

    isLeaf = True

    def __init__(self, settings: WwsfSettings) -> None:
        super().__init__()
        self.settings = settings

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        settings = self.settings
        url = settings.websocket_url or websocket_url(
            settings.websocket_endpoints(), request.isSecure(), request.getRequestHostname().decode("ascii", "replace")
        )
        body = {
            "websocket_url": url,
            "domain": settings.domain,
            "users": [asdict(user) for user in settings.demo_users],
        }
        if settings.token_issuer is not None:
            body["login"] = True  # the page offers "Log in": a token from /login, no SIP password
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")  # it may hold demo passwords
        return json.dumps(body, indent=2).encode()


def missing_bundle_advice(path: str) -> str:
    """What to do about a missing page script, in one line (the start-up log and the page)."""
    directory = os.path.dirname(path)
    return (
        f"[wwsf] bundle_dir: the page script {path} is not built: run bin/setup in a checkout, or "
        f"python -m epcscf.wwsf.bundle {directory} NODE_MODULES (npm's esbuild and jssip), "
        "or set [wwsf] enabled = false"
    )


class MissingBundle(resource.Resource):
    """``/app.js`` before ``bin/setup`` built it: a script that says so on the page."""

    isLeaf = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802
        if os.path.isfile(self.path):  # built since the server started
            return static.File(self.path, defaultType="text/javascript").render_GET(request)
        message = missing_bundle_advice(self.path)
        request.setHeader(b"Content-Type", b"text/javascript; charset=utf-8")
        script = (
            "const status = document.getElementById('page-status');"
            f"status.textContent = {json.dumps(message)}; status.dataset.error = 'true';"
        )
        return script.encode()


def _file(path: Path | str, content_type: str) -> resource.Resource:
    return static.File(str(path), defaultType=content_type)


def build_resource(settings: WwsfSettings) -> resource.Resource:
    """The WWSF's resource tree (see the module docstring)."""
    root = resource.Resource()
    index = _file(STATIC / "index.html", "text/html; charset=utf-8")
    root.putChild(b"", index)
    root.putChild(b"index.html", index)
    root.putChild(b"style.css", _file(STATIC / "style.css", "text/css; charset=utf-8"))
    bundle = os.path.join(settings.bundle_dir, BUNDLE_NAME)
    if not os.path.isfile(bundle):
        log.error("{advice}", advice=missing_bundle_advice(bundle))
        script: resource.Resource = MissingBundle(bundle)
    else:
        script = _file(bundle, "text/javascript; charset=utf-8")
    root.putChild(BUNDLE_NAME.encode(), resource.EncodingResourceWrapper(script, [GzipEncoderFactory()]))
    root.putChild(b"config.json", ConfigJson(settings))
    if settings.token_issuer is not None and settings.login_accounts is not None:
        from epcscf.wwsf.login import Login, Refresh

        root.putChild(b"login", Login(settings.token_issuer, settings.login_accounts))
        root.putChild(b"token", Refresh(settings.token_issuer))
    return root


class WwsfSite(server.Site):
    """A ``Site`` that adds the security headers and logs requests to twisted.logger."""

    noisy = False  # a line per request is logged at debug level instead

    def __init__(self, settings: WwsfSettings) -> None:
        super().__init__(build_resource(settings))

    def getResourceFor(self, request: server.Request) -> resource.Resource:  # noqa: N802
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return super().getResourceFor(request)

    def log(self, request: server.Request) -> None:
        log.debug(
            "{client} {method} {uri} {code}",
            client=request.getClientAddress().host if request.getClientAddress() else "-",
            method=request.method.decode("ascii", "replace"),
            uri=request.uri.decode("ascii", "replace")[:200],
            code=request.code,
        )
