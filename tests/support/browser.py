"""A real WIC with real WebRTC for tests: Debian's headless Chromium, driven by playwright-core
through ``tests/peers/browser_driver.js`` (JSON commands in, JSON-line events out).

    require_browser(self)                      # fails (never skips) when a piece is missing
    service, page_url = start_wwsf_deployment(self)
    browser = await start_browser(self)        # closed when the test ends
    await browser.open("alice", page_url + "?user=alice")
    await browser.click("alice", "#register")
    await browser.wait("alice", '#registration-state[data-state="registered"]')
    stats = await browser.evaluate("alice", "() => window.wwsf.stats()")
    await browser.screenshot("alice", path)

The demo page is a ready WIC for media tests: ``open_registered_page``, then ``call_from_page``
with any SIP URI (a sipp UAS behind the embedded core: ``sip:uas@127.0.0.1:PORT``), then
``wait_for_inbound_audio``.  Any other page works too: ``open`` takes a URL, and
``evaluate``/``wait_function`` run a JS expression or function source in it (see the driver's
header for every command).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet import protocol, reactor

from epcscf.config import load
from epcscf.service import EpcscfService
from epcscf.wwsf.bundle import build_bundle
from tests.support.certificates import CertificateChain
from tests.support.deployment import write_deployment_config
from tests.support.processes import TOP

CHROMIUM = "/usr/bin/chromium"
DRIVER = os.path.join(TOP, "tests", "peers", "browser_driver.js")
#: how long one driver command may take beyond its own timeout before the test gives up
COMMAND_GRACE = 10.0


def require_browser(test: Any) -> None:
    """Fail (never skip) when Chromium, node or the npm packages are missing: bin/test installs them."""
    if not os.access(CHROMIUM, os.X_OK):
        test.fail(f"{CHROMIUM} is missing: bin/test installs Debian's chromium")
    if shutil.which("node") is None:
        test.fail("node is not installed: bin/test installs Debian's nodejs")
    for package in ("playwright-core", "jssip", "esbuild"):
        if not os.path.isdir(os.path.join(TOP, "node_modules", package)):
            test.fail(f"npm package {package} is missing: bin/test runs npm ci")


class BrowserCommandFailed(AssertionError):
    """A driver command failed (or timed out); the message carries the page's recent console."""


class Browser(protocol.ProcessProtocol):
    """One Chromium (one profile) with any number of named pages."""

    def __init__(self) -> None:
        loop = asyncio.get_event_loop()
        self.ready: asyncio.Future = loop.create_future()
        self.ended: asyncio.Future = loop.create_future()
        #: every event the driver printed, in order
        self.log: list[dict[str, Any]] = []
        self.stderr = b""
        self._buffer = b""
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}

    # --- process protocol ---------------------------------------------------------------------

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "output", "text": line.decode(errors="replace")}
            self.log.append(event)
            self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "ready" and not self.ready.done():
            self.ready.set_result(event)
        elif name in ("done", "failed"):
            waiter = self._pending.pop(event.get("id"), None) if event.get("id") is not None else None
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
            elif name == "failed" and event.get("op") == "launch" and not self.ready.done():
                self.ready.set_exception(BrowserCommandFailed(f"Chromium did not start: {event.get('error')}"))

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.stderr = (self.stderr + data)[-20000:]

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        code = getattr(reason.value, "exitCode", None)
        failure = BrowserCommandFailed(f"the browser driver exited ({code}); stderr: {self.stderr[-2000:]!r}")
        if not self.ready.done():
            self.ready.set_exception(failure)
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(failure)
        self._pending.clear()
        if not self.ended.done():
            self.ended.set_result(code)

    # --- commands -----------------------------------------------------------------------------

    def console(self, page: str | None = None, last: int = 30) -> list[str]:
        """The last lines a page (or every page) wrote to its console, and its uncaught errors."""
        lines = [
            f"[{e.get('page')}] {e.get('type', 'error')}: {e.get('text', e.get('message'))}"
            for e in self.log
            if e.get("event") in ("console", "pageerror") and (page is None or e.get("page") == page)
        ]
        return lines[-last:]

    async def command(self, op: str, **arguments: Any) -> Any:
        """Run one driver command; its result, or ``BrowserCommandFailed``."""
        if self.ended.done():
            raise BrowserCommandFailed(f"{op}: the browser driver has exited")
        self._next_id += 1
        command_id = self._next_id
        waiter: asyncio.Future = asyncio.get_event_loop().create_future()
        self._pending[command_id] = waiter
        self.transport.write(json.dumps({"id": command_id, "op": op, **arguments}).encode() + b"\n")
        timeout = arguments.get("timeout", 15000) / 1000 + COMMAND_GRACE
        try:
            answer = await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            self._pending.pop(command_id, None)
            raise BrowserCommandFailed(f"{op} {arguments}: no answer within {timeout} s") from None
        if answer["event"] == "failed":
            console = "\n  ".join(self.console(arguments.get("page")))
            raise BrowserCommandFailed(f"{op} {arguments} failed: {answer.get('error')}\n  console:\n  {console}")
        return answer.get("result")

    async def open(self, page: str, url: str, timeout: int = 15000) -> Any:
        return await self.command("open", page=page, url=url, timeout=timeout)

    async def click(self, page: str, selector: str, timeout: int = 15000) -> None:
        await self.command("click", page=page, selector=selector, timeout=timeout)

    async def fill(self, page: str, selector: str, value: str, timeout: int = 15000) -> None:
        await self.command("fill", page=page, selector=selector, value=value, timeout=timeout)

    async def wait(self, page: str, selector: str, state: str = "visible", timeout: int = 15000) -> None:
        """Until ``selector`` matches (e.g. ``'#call-state[data-state="connected"]'``)."""
        await self.command("wait", page=page, selector=selector, state=state, timeout=timeout)

    async def wait_function(self, page: str, expression: str, arg: Any = None, timeout: int = 15000, polling: Any = 100) -> Any:
        """Until the expression (or function of ``arg``) is truthy in the page; its value."""
        return await self.command("wait_function", page=page, expression=expression, arg=arg, timeout=timeout, polling=polling)

    async def evaluate(self, page: str, expression: str, arg: Any = None) -> Any:
        return await self.command("evaluate", page=page, expression=expression, arg=arg)

    async def text(self, page: str, selector: str) -> str:
        return await self.command("text", page=page, selector=selector)

    async def attribute(self, page: str, selector: str, name: str) -> str | None:
        return await self.command("attribute", page=page, selector=selector, name=name)

    async def screenshot(self, page: str, path: str, full_page: bool = True) -> str:
        await self.command("screenshot", page=page, path=path, full_page=full_page)
        return path

    async def close_page(self, page: str) -> None:
        await self.command("close", page=page)

    async def quit(self, timeout: float = 10.0) -> int | None:
        """Close the browser; SIGTERM, then SIGKILL, the driver if it does not exit in time
        (playwright closes Chromium when its driver is terminated)."""
        if not self.ended.done():
            self.transport.write(b'{"op": "quit"}\n')
            for escalation in ("TERM", "KILL", None):
                try:
                    await asyncio.wait_for(asyncio.shield(self.ended), timeout)
                    break
                except asyncio.TimeoutError:
                    if escalation is not None and not self.ended.done():
                        self.transport.signalProcess(escalation)
        return await self.ended


async def start_browser(
    test: Any, timeout: float = 30.0, flags: Sequence[str] = (), prefix: Sequence[str] = ()
) -> Browser:
    """Chromium with a fresh profile in the test's temporary directory; closed at the test's end.
    ``flags``: Chromium switches beyond the driver's own (e.g. ``trust_certificate_flags``).
    ``prefix``: a command the driver runs under (e.g. ``nsenter`` into another host's namespace)."""
    require_browser(test)
    profile = os.path.abspath(test.mktemp())
    os.makedirs(profile)
    browser = Browser()
    env = dict(os.environ, EPCSCF_CHROMIUM_EXTRA_FLAGS=" ".join(flags))
    argv = [*prefix, shutil.which("node") or "node", DRIVER, profile]
    reactor.spawnProcess(browser, shutil.which(argv[0]) or argv[0], argv, env=env, path=TOP)

    from tests.support.wic import as_deferred

    test.addCleanup(lambda: as_deferred(browser.quit()))
    await asyncio.wait_for(asyncio.shield(browser.ready), timeout)
    return browser


# --- epcscf with the WWSF ------------------------------------------------------------------------

_bundles: dict[str, str] = {}


def page_bundle_dir() -> str:
    """The page script built once per test run (into _trial_temp), exactly as bin/setup builds it."""
    directory = os.path.abspath(os.path.join("wwsf-bundle"))
    if directory not in _bundles:
        _bundles[directory] = build_bundle(directory)
    return directory


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just had free on ``host`` (the WWSF origin must be known before it binds)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_wwsf_deployment(
    test: Any,
    extra: str = "",
    tls: CertificateChain | None = None,
    extra_origins: Sequence[str] = (),
    host: str = "127.0.0.1",
    before_start: Callable[[EpcscfService], None] | None = None,
) -> tuple[EpcscfService, str]:
    """epcscf + embedded core + WWSF on ``host`` (127.0.0.1); (service, page URL).  The WWSF's origin is the
    only allowed ``[ws]`` origin, as in etc/epcscf.ini.  ``extra``: a further ini file's text
    whose keys override the deployment's (e.g. ``"[media]\\nice_mode = lite\\n"``).  ``tls``:
    serve the page over https and the WICs over wss only, with this certificate (the browser
    needs ``trust_certificate_flags``).  ``extra_origins``: more allowed ``[ws]`` origins (another
    test page's server).  ``host``: the address of the WebSocket and WWSF listeners (the page's
    origin).  ``before_start`` may replace parts of the built service before it starts.  Stopped
    when the test ends."""
    directory = os.path.abspath(test.mktemp())
    base = write_deployment_config(directory)
    port = free_tcp_port(host)
    scheme = "https" if tls is not None else "http"
    wss = (
        f"listen = wss:{host}:0\ncertificate = {tls.chain_path}\nprivate_key = {tls.key_path}\n" if tls is not None else ""
    )
    overlay = os.path.join(directory, "wwsf.ini")
    with open(overlay, "w") as handle:
        handle.write(
            f"[ws]\nallowed_origins = {', '.join([f'{scheme}://{host}:{port}', *extra_origins])}\nallow_missing_origin = false\n{wss}"
            f"[wwsf]\nenabled = true\nlisten = {scheme}:{host}:{port}\nbundle_dir = {page_bundle_dir()}\n"
        )
    files = [base, overlay]
    if extra:
        files.append(os.path.join(directory, "extra.ini"))
        with open(files[-1], "w") as handle:
            handle.write(extra)
    service = EpcscfService(load(files))
    if before_start is not None:
        before_start(service)
    service.startService()
    test.addCleanup(service.stopService)
    return service, f"{scheme}://{host}:{port}/"


def trust_certificate_flags(tls: CertificateChain) -> list[str]:
    """Chromium switches that accept the server certificate of ``tls`` (pinned by its public
    key's SHA-256, as Chromium's --ignore-certificate-errors-spki-list wants) and no other."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(tls.chain_path, "rb") as handle:
        server = x509.load_pem_x509_certificates(handle.read())[0]
    spki = server.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return [f"--ignore-certificate-errors-spki-list={base64.b64encode(hashlib.sha256(spki).digest()).decode()}"]


# --- the WWSF demo page (also a ready-made WIC for media tests: dial any SIP URI from it) -------

# Waits in the page: inbound audio packets grow by `arg` within a second; the stats, else false.
PACKETS_RISE = """async (more) => {
  const first = await window.wwsf.stats();
  if (!first) return false;
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const second = await window.wwsf.stats();
  return second.packetsReceived >= first.packetsReceived + more ? second : false;
}"""
# The remote level meter moved: sound arrived, and it is not a constant.
METER_MOVES = """() => {
  const history = window.wwsf.meter.history;
  if (history.length < 15) return false;
  const recent = history.slice(-30);
  const high = Math.max(...recent), low = Math.min(...recent);
  return high > 0.02 && high - low > 0.01 ? { high, low, samples: recent.length } : false;
}"""
# The remote level meter shows silence: the last second of samples near zero.
METER_SILENT = """() => {
  const recent = window.wwsf.meter.history.slice(-10);
  return recent.length === 10 && Math.max(...recent) < 0.01;
}"""


def page_state(element: str, value: str) -> str:
    """Selector of a page state, e.g. ``page_state("call-state", "connected")``."""
    return f'#{element}[data-state="{value}"]'


async def open_registered_page(browser: Browser, page_url: str, user: str, page: str | None = None) -> str:
    """Open the demo page as one of the embedded core's users and register; the page's name."""
    name = page or user
    await browser.open(name, f"{page_url}?user={user}")
    await browser.wait(name, "body[data-ready]")
    await browser.click(name, "#register")
    await browser.wait(name, page_state("registration-state", "registered"))
    return name


async def call_from_page(browser: Browser, page: str, target: str) -> None:
    """Dial ``target`` (a user of the domain or any SIP URI, e.g. a sipp UAS) from the demo page."""
    await browser.fill(page, "#target", target)
    await browser.click(page, "#call")


async def wait_for_inbound_audio(browser: Browser, page: str, packets: int = 25, timeout: int = 15000) -> dict[str, Any]:
    """Until the page's inbound audio packets rise by ``packets`` in a second; its stats summary
    (``packetsReceived``, ``packetsSent``, ``dtlsState``, ``selectedPair`` … see static/stats.js)."""
    return await browser.wait_function(page, PACKETS_RISE, arg=packets, timeout=timeout, polling=200)


# --- screenshots ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PngSummary:
    width: int
    height: int
    #: distinct colours among the pixels (a blank page has one)
    colours: int
    #: variance of the pixels' luma (0 for a blank page)
    luma_variance: float


def png_summary(path: str) -> PngSummary:
    """Decode an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes) with zlib alone."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    offset, chunks, header = 8, [], b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        offset += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    channels = {2: 3, 6: 4}.get(colour_type)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"{path}: only 8-bit RGB(A) non-interlaced PNGs are decoded here")
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    total = total_squares = 0.0
    position = 0
    for _ in range(height):
        kind = raw[position]
        line = bytearray(raw[position + 1 : position + 1 + stride])
        position += 1 + stride
        _unfilter(kind, line, previous, channels)
        for x in range(0, stride, channels * 4):  # every 4th pixel is plenty for a summary
            pixel = bytes(line[x : x + 3])
            colours.add(pixel)
            luma = 0.299 * pixel[0] + 0.587 * pixel[1] + 0.114 * pixel[2]
            total += luma
            total_squares += luma * luma
        previous = line
    samples = height * len(range(0, stride, channels * 4))
    mean = total / samples
    return PngSummary(width, height, len(colours), total_squares / samples - mean * mean)


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    """PNG spec §9.2 filter types 0-4, in place."""
    if kind == 0:
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
        elif kind == 4:
            upper_left = previous[i - bpp] if i >= bpp else 0
            estimate = left + up - upper_left
            pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - upper_left)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
            line[i] = (line[i] + predictor) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
