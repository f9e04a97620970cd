"""ini files → typed, validated, immutable configuration.

One frozen dataclass per section.  Every key a section accepts is a field of its
dataclass, with a converter that validates the text; anything else is an error
(typo protection).  Every error is a ``ConfigError`` whose ``str()`` is one line
naming the file, section, key and reason, which is what the user sees on the
terminal before a non-zero exit.

Relative paths are resolved against the directory of the ini file that set them,
so a config works whatever the working directory of the daemon is.

The converters (text → value) live in ``epcscf.config_values``; this module holds
the sections, reads the files and checks the rules that span keys.  Its public
names are those of both modules.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from epcscf.config_values import (
    DIGEST_ALGORITHMS,
    JWS_ALGORITHMS,
    VIDEO_CODECS,
    ConfigError,
    Listener,
    Network,
    _algorithm_list,
    _boolean,
    _choice,
    _existing_file,
    _Invalid,
    _integer,
    _ip_address,
    _jws_algorithms,
    _listeners,
    _optional_ip_address,
    _origin_list,
    _path,
    _port_range,
    _rate,
    _rtpengine_nodes,
    _seconds,
    _seconds_or_zero,
    _source_list,
    _string_list,
    _text,
    _video_codec_list,
    _websocket_url,
    _workers,
    parse_trusted_source,
)
from epcscf.sip.tls import CredentialsError, load_credentials

__all__ = [
    "DIGEST_ALGORITHMS", "JWS_ALGORITHMS", "SECTIONS", "VIDEO_CODECS", "Config", "ConfigError", "Listener", "Network",
    "describe", "load", "parse_trusted_source",
    "AuthSection", "CallsSection", "CoreSection", "LogSection", "ManholeSection", "MediaSection", "MetricsSection",
    "NonsipSection", "OverloadSection", "RegEventSection", "RtpengineSection", "ServiceSection", "SipSection",
    "WsSection", "WwsfSection",
]  # ConfigError, Listener, Network, parse_trusted_source and the lists: re-exported from config_values


def _option(convert: Callable[[str, Path], Any], default: Any, doc: str) -> Any:
    """A section field: its converter, default (the text form when it needs a path base) and doc."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default, metadata={"convert": convert, "doc": doc})
    return field(default=default, metadata={"convert": convert, "doc": doc})


# --- sections ---


@dataclass(frozen=True)
class ServiceSection:
    state_dir: str = _option(_path, "", "directory for generated state (manhole host key); default: var/ beside the ini file")
    drain_timeout: float = _option(_seconds, 30.0, "on SIGTERM, how long established calls may continue")
    workers: int = _option(_workers, 1, "eP-CSCF worker processes: auto (one per CPU) or a number; 1 = one process, no supervisor")
    ws_socket_sharing: str = _option(
        _choice("reuseport", "inherit"), "reuseport",
        "workers > 1: each worker binds the [ws] ports with SO_REUSEPORT, or all accept on the supervisor's inherited socket",
    )


@dataclass(frozen=True)
class SipSection:
    listen: tuple[Listener, ...] = _option(
        _listeners("udp", "tcp", "tls"), (), "core-facing SIP listeners, e.g. udp:127.0.0.1:5060, tcp:127.0.0.1:5060"
    )
    public_address: str = _option(
        _optional_ip_address, "", "address written in Via/Record-Route/Path (default: listener address; needed with a 0.0.0.0 or :: listener)"
    )
    tls_certificate: str = _option(_existing_file, "", "PEM certificate for tls listeners: server certificate first, then intermediates")
    tls_private_key: str = _option(_existing_file, "", "PEM private key for tls listeners")
    t1: float = _option(_seconds, 0.5, "RFC 3261 T1 toward the core (TS 24.229 Table 7.7.1: 0.5 s)")
    t2: float = _option(_seconds, 4.0, "RFC 3261 T2 toward the core")
    t4: float = _option(_seconds, 5.0, "RFC 3261 T4 toward the core")
    wic_t1: float = _option(_seconds, 2.0, "T1 toward the WIC (TS 24.229 Table 7.7.1: 2 s; B/F/H = 64*T1)")
    wic_t2: float = _option(_seconds, 16.0, "T2 toward the WIC")
    wic_t4: float = _option(_seconds, 17.0, "T4 toward the WIC")
    timer_c: float = _option(_seconds, 181.0, "RFC 3261 §16.6 Timer C for proxied INVITEs (must be > 3 min)")
    max_message_size: int = _option(_integer(1024, 1 << 20), 65535, "largest SIP message accepted, bytes")
    max_headers: int = _option(_integer(8, 4096), 256, "most header lines in one message")
    max_line_length: int = _option(_integer(256, 1 << 20), 8192, "longest header line, bytes")
    idle_timeout: float = _option(_seconds, 600.0, "close an idle TCP/TLS connection after this long")


@dataclass(frozen=True)
class WsSection:
    listen: tuple[Listener, ...] = _option(
        _listeners("ws", "wss"), (), "WIC-facing WebSocket listeners, e.g. ws:127.0.0.1:8080, wss:0.0.0.0:8443"
    )
    certificate: str = _option(_existing_file, "", "PEM certificate for wss and https WWSF listeners: server certificate first, then intermediates")
    private_key: str = _option(_existing_file, "", "PEM private key (unencrypted) for wss and https WWSF listeners")
    allowed_origins: tuple[str, ...] = _option(_origin_list, (), "browser origins allowed to connect (scheme://host[:port])")
    allow_any_origin: bool = _option(_boolean, False, "accept every browser origin (labs only)")
    allow_missing_origin: bool = _option(_boolean, True, "accept clients that send no Origin (non-browser WICs)")
    max_message_size: int = _option(_integer(1024, 1 << 20), 65536, "largest WebSocket message; bigger closes with 1009")
    ping_interval: float = _option(_seconds, 25.0, "WebSocket ping interval")
    ping_timeout: float = _option(_seconds, 10.0, "close the connection when a ping gets no pong within this time")


@dataclass(frozen=True)
class CoreSection:
    mode: str = _option(_choice("embedded", "external"), "embedded", "embedded: built-in registrar/proxy; external: next_hop")
    next_hop: tuple[str, ...] = _option(_string_list, (), "SIP URI(s) of the I-CSCF/S-CSCF, in failover order (external mode)")
    trusted_sources: tuple[str, ...] = _option(
        _source_list, (), "core addresses whose requests need no flow token: IP, CIDR or host[:port] (default: the resolved next_hop hosts, or the embedded core)"
    )
    domain: str = _option(_text, "ims.localdomain", "home network domain (registrar realm in embedded mode)")
    listen: tuple[Listener, ...] = _option(
        _listeners("udp", "tcp"), (), "embedded core listeners on loopback, e.g. udp:127.0.0.1:5070"
    )
    users: str = _option(_existing_file, "", "embedded core users file (user:password lines)")
    registration_max_expires: int = _option(_integer(60, 86400), 3600, "embedded registrar: longest registration granted")
    digest_algorithms: tuple[str, ...] = _option(
        _algorithm_list, ("SHA-256", "MD5"), "embedded core: digest algorithms challenged, in order (RFC 8760)"
    )
    trust_asserted_identity: bool = _option(
        _boolean, False,
        'embedded core: register without a challenge what the eP-CSCF marks integrity-protected="auth-done" (web login, [auth] mode = token|both)',
    )


@dataclass(frozen=True)
class MediaSection:
    bind_address: str = _option(_ip_address, "127.0.0.1", "address media sockets toward the WIC bind on")
    advertised_address: str = _option(_optional_ip_address, "", "address written into ICE candidates (1:1 NAT); default bind_address")
    core_address: str = _option(_ip_address, "127.0.0.1", "address of the RTP relay toward the core (c= toward the core)")
    port_range: tuple[int, int] = _option(_port_range, (20000, 29999), "UDP ports for ICE and RTP, low-high")
    ice_mode: str = _option(_choice("full", "lite"), "full", "full ICE (RFC 8445) or ICE-lite toward the WIC")
    consent_interval: float = _option(_seconds, 5.0, "RFC 7675 consent check interval (randomised ±20 %)")
    consent_timeout: float = _option(_seconds, 30.0, "RFC 7675: release the call after this long without consent")
    connect_timeout: float = _option(_seconds, 10.0, "release the call when ICE/DTLS is not up this long after the answer")
    engine: str = _option(_choice("builtin", "rtpengine"), "builtin", "who terminates ICE, DTLS-SRTP and relays media: builtin (in-process) or rtpengine ([rtpengine] nodes)")
    video_codecs: tuple[str, ...] = _option(
        _video_codec_list, (), "video codecs relayed (no transcoding), e.g. H264, VP8; empty rejects video"
    )


@dataclass(frozen=True)
class RtpengineSection:
    nodes: tuple[tuple[str, int, int], ...] = _option(_rtpengine_nodes, (), "rtpengine ng control addresses, e.g. udp:127.0.0.1:2223, udp:10.0.0.5:2223=2 (=weight); calls spread by Call-ID")
    timeout: float = _option(_seconds, 1.0, "seconds an ng command waits for its reply (3 transmissions) before the node is marked down")
    ping_interval: float = _option(_seconds, 5.0, "seconds between ng pings of every node (a node that answers again is used again)")
    query_interval: float = _option(_seconds, 10.0, "seconds between ng queries of a live call (a call rtpengine dropped is released)")
    flags: tuple[str, ...] = _option(_string_list, (), "extra entries of the ng flags list of every offer/answer (e.g. strict-source)")
    tcp_ng_port: int = _option(_integer(0, 65535), 0, "each node's --listen-tcp-ng port (at its nodes address): the sweep at start reads its whole call list over TCP; 0: UDP pages of 500")


@dataclass(frozen=True)
class ManholeSection:
    enabled: bool = _option(_boolean, False, "start the SSH console")
    port: int = _option(_integer(0, 65535), 2222, "TCP port of the SSH console (always bound to 127.0.0.1)")
    users: str = _option(_existing_file, "", "file of user:bcrypt-hash lines allowed to log in")
    host_key: str = _option(_path, "", "SSH host key file, generated on first start (default: state_dir/manhole_host_key)")


@dataclass(frozen=True)
class CallsSection:
    history: float = _option(_seconds, 300.0, "how long an ended call stays inspectable in the console (calls(), call(id))")
    reconnect_grace: float = _option(_seconds_or_zero, 10.0, "seconds a call outlives its WIC's lost WebSocket, waiting for the same instance (+sip.instance, reg-id) to register again on a new one (0: release at once)")
    history_unanswered: float = _option(_seconds_or_zero, 60.0, "how long an ended call that never got a 2xx stays inspectable (at most history)")


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = _option(_boolean, False, "serve Prometheus metrics over HTTP at /metrics")
    address: str = _option(_ip_address, "127.0.0.1", "address of the metrics HTTP listener")
    port: int = _option(_integer(0, 65535), 9464, "TCP port of the metrics HTTP listener")


@dataclass(frozen=True)
class OverloadSection:
    enabled: bool = _option(_boolean, True, "refuse new dialogs and registrations with 503 + Retry-After while the event loop lags")
    lag_interval: float = _option(_seconds, 0.05, "seconds between event-loop lag samples")
    lag_high: float = _option(_seconds, 0.1, "lag (seconds) that means overload after high_samples samples in a row")
    lag_low: float = _option(_seconds, 0.03, "lag (seconds) under which the load counts as calm again")
    high_samples: int = _option(_integer(1, 100), 2, "lag samples in a row at or above lag_high before new work is refused")
    recover: float = _option(_seconds, 1.0, "seconds of calm samples before new work is accepted again")
    max_pending: int = _option(_integer(0, 1_000_000), 0, "overload when this many proxied requests await a final response (ringing calls count; 0: not watched)")
    max_new_per_second: float = _option(_rate, 0.0, "new dialogs + new registrations admitted per second (0: no cap)")
    min_new_per_second: float = _option(_rate, 10.0, "new dialogs + new registrations per second let in while overloaded, however bad the lag")
    retry_after: int = _option(_integer(1, 86400), 5, "Retry-After seconds in the 503s of overload and rate limits")
    max_connections_per_ip: int = _option(_integer(0, 1_000_000), 10000, "WebSocket connections from one IP address (HTTP 503 beyond; 0: no limit)")
    flow_messages_per_second: float = _option(_rate, 100.0, "SIP messages per second one WebSocket flow may send (0: no limit)")
    flow_burst: int = _option(_integer(1, 1_000_000), 200, "messages a flow may send at once above flow_messages_per_second")
    flow_close_after: int = _option(_integer(0, 1_000_000), 1000, "messages refused within flow_window before the flow is closed with 1008 (0: never)")
    flow_window: float = _option(_seconds, 10.0, "window (seconds) of flow_close_after")
    auth_failures: int = _option(_integer(0, 1_000_000), 10, "failed REGISTER authentications of one AOR within auth_window before it is refused locally (0: no limit)")
    auth_window: float = _option(_seconds, 60.0, "window (seconds) of auth_failures")
    auth_lockout: float = _option(_seconds, 300.0, "seconds an AOR over auth_failures is answered 403 without asking the core")
    setup_target: float = _option(_seconds_or_zero, 0.25, "mean seconds a call may spend in the edge's part of its setup; new INVITEs beyond throughput × this many calls in setup get 503 (0: no window)")
    min_calls_in_setup: int = _option(_integer(1, 1_000_000), 20, "the window of calls in setup never shrinks below this")
    max_calls_in_setup: int = _option(_integer(0, 1_000_000), 0, "and never grows above this (a known capacity; 0: only the measured throughput bounds it)")
    retry_after_spread: int = _option(_integer(0, 86400), 0, "a 503 for overload or a rate limit gets a Retry-After drawn at random from retry_after … retry_after + this many seconds, so refused WICs do not all come back in the same second (RFC 3261 §21.5.4)")
    untrusted_source_messages_per_second: float = _option(_rate, 200.0, "SIP messages per second one core-side source that is no trusted core address may send: per UDP address and port, per TCP/TLS connection (0: no limit)")


@dataclass(frozen=True)
class WwsfSection:
    enabled: bool = _option(_boolean, False, "serve the WebRTC Web Server Function: the demo WIC page (TS 24.371 WWSF)")
    listen: tuple[Listener, ...] = _option(
        _listeners("http", "https"), (Listener("http", "127.0.0.1", 8081),),
        "WWSF listeners, e.g. http:127.0.0.1:8081; https uses the [ws] certificate and private_key",
    )
    demo_users: bool = _option(_boolean, True, "prefill the page with the embedded core's users and passwords (labs only)")
    websocket_url: str = _option(_websocket_url, "", "eP-CSCF URL the page connects to (default: derived from the [ws] listeners)")
    bundle_dir: str = _option(_path, "", "directory of the page's script app.js (default: epcscf/wwsf/built in the package, where bin/setup builds it and a wheel carries it)")


@dataclass(frozen=True)
class AuthSection:
    mode: str = _option(
        _choice("digest", "token", "both"), "digest",
        "how WICs authenticate: digest (the core challenges), token (a WWSF-issued JWT, RFC 8898 Bearer), both",
    )
    keys: str = _option(_existing_file, "", "PEM public key(s) or JWKS file verifying the tokens (re-read on SIGHUP); default with mode token/both: the WWSF's own key in state_dir")
    algorithms: tuple[str, ...] = _option(_jws_algorithms, ("ES256", "RS256", "EdDSA"), "JWS algorithms accepted (RFC 7518/8037; public-key ones only)")
    audience: str = _option(_text, "", "the tokens' aud: this eP-CSCF (default: the [core] domain)")
    issuers: tuple[str, ...] = _option(_string_list, (), "iss values accepted (default: the demo WWSF's issuer, epcscf-wwsf)")
    identity_claim: str = _option(_text, "sub", "claim naming the IMPU(s) a token may register (a string or a list)")
    leeway: float = _option(_seconds, 30.0, "clock skew allowed on exp and nbf, seconds")
    handshake: str = _option(
        _choice("off", "optional", "required"), "optional",
        "token at the WebSocket handshake (?access_token=): off, optional (checked when given) or required (refused before any SIP)",
    )
    token_lifetime: float = _option(_seconds, 300.0, "the demo WWSF: seconds its tokens live")


@dataclass(frozen=True)
class LogSection:
    level: str = _option(_choice("debug", "info", "warn", "error", "critical"), "info", "lowest level written")
    format: str = _option(_choice("text", "json"), "text", "text lines or JSON lines (one event per line)")


@dataclass(frozen=True)
class NonsipSection:
    listen: tuple[Listener, ...] = _option(
        _listeners("ws", "wss"), (),
        "non-SIP WIC listeners (Janus JSON API, subprotocol janus-protocol), e.g. ws:127.0.0.1:8188; none by default",
    )
    session_timeout: float = _option(_seconds, 60.0, "end a Janus session (its calls and registrations) after this long without a request")


@dataclass(frozen=True)
class RegEventSection:
    subscribe: bool = _option(_boolean, False, "after a WIC's initial registration, subscribe to the reg event of its IMPU at the core (TS 24.229 §5.2.3)")
    expires: int = _option(_integer(1, 2**31 - 1), 600000, "Expires of our reg-event SUBSCRIBE (TS 24.229 §5.2.3: 600000)")
    close_grace: float = _option(_seconds, 1.0, "seconds between a network de-registration and closing the WIC's WebSocket")



SECTIONS: dict[str, type] = {
    "service": ServiceSection,
    "sip": SipSection,
    "ws": WsSection,
    "core": CoreSection,
    "media": MediaSection,
    "rtpengine": RtpengineSection,
    "manhole": ManholeSection,
    "calls": CallsSection,
    "metrics": MetricsSection,
    "overload": OverloadSection,
    "wwsf": WwsfSection,
    "log": LogSection,
    "nonsip": NonsipSection,
    "auth": AuthSection,
    "reg_event": RegEventSection,
}


@dataclass(frozen=True)
class Config:
    files: tuple[str, ...]
    service: ServiceSection
    sip: SipSection
    ws: WsSection
    core: CoreSection
    media: MediaSection
    rtpengine: RtpengineSection
    manhole: ManholeSection
    calls: CallsSection
    metrics: MetricsSection
    overload: OverloadSection
    wwsf: WwsfSection
    log: LogSection
    auth: AuthSection
    nonsip: NonsipSection = field(default_factory=NonsipSection)
    reg_event: RegEventSection = RegEventSection()


def load(paths: Iterable[str | os.PathLike[str]]) -> Config:
    """Read ini files (later ones override earlier ones) and validate them."""
    values: dict[str, dict[str, tuple[str, str, Path]]] = {name: {} for name in SECTIONS}
    files: list[str] = []
    for raw_path in paths:
        path = str(raw_path)
        files.append(path)
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
        parser.optionxform = str  # keep key spelling; we compare case-sensitively
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle, source=path)
        except OSError as error:
            raise ConfigError(path, None, None, f"cannot read: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise ConfigError(path, None, None, "not UTF-8 text") from None
        except configparser.Error as error:
            reason = " ".join(str(error).split())
            raise ConfigError(path, None, None, f"not an ini file: {reason}") from None
        base = Path(path).resolve().parent
        for section in parser.sections():
            if section not in SECTIONS:
                raise ConfigError(path, section, None, f"unknown section (known: {', '.join(SECTIONS)})")
            known = {f.name for f in fields(SECTIONS[section])}
            for key, text in parser.items(section):
                if key not in known:
                    raise ConfigError(path, section, key, f"unknown key (known: {', '.join(sorted(known))})")
                values[section][key] = (text, path, base)
    sections = {name: _build_section(cls, values[name], files) for name, cls in SECTIONS.items()}
    config = Config(files=tuple(files), **sections)
    set_by = {(section, key): given[1] for section, keys in values.items() for key, given in keys.items()}
    _check_consistency(config, set_by)
    return config


def _build_section(cls: type, given: dict[str, tuple[str, str, Path]], files: list[str]) -> Any:
    section = next(name for name, c in SECTIONS.items() if c is cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in given:
            continue
        text, path, base = given[f.name]
        try:
            kwargs[f.name] = f.metadata["convert"](text, base)
        except _Invalid as error:
            raise ConfigError(path, section, f.name, str(error)) from None
    instance = cls(**kwargs)
    # Defaults that depend on where the first file lives.
    if cls is ServiceSection and not instance.state_dir:
        base = Path(files[0]).resolve().parent if files else Path.cwd()
        instance = replace(instance, state_dir=str(base / "var"))
    return instance


def _check_consistency(config: Config, set_by: dict[tuple[str, str], str]) -> None:
    """Rules that involve more than one key; errors name the file that set the key (or the last file)."""

    def fail(section: str, key: str, reason: str) -> None:
        path = set_by.get((section, key), config.files[-1] if config.files else "<defaults>")
        raise ConfigError(path, section, key, reason)

    if any(listener.transport == "wss" for listener in config.ws.listen):
        if not config.ws.certificate:
            fail("ws", "certificate", "a wss listener needs a certificate")
        if not config.ws.private_key:
            fail("ws", "private_key", "a wss listener needs a private_key")
    if any(listener.transport == "tls" for listener in config.sip.listen):
        if not config.sip.tls_certificate:
            fail("sip", "tls_certificate", "a tls listener needs tls_certificate")
        if not config.sip.tls_private_key:
            fail("sip", "tls_private_key", "a tls listener needs tls_private_key")
        sip_files = (config.sip.tls_certificate, config.sip.tls_private_key)
        _check_credentials(fail, "sip", ("tls_certificate", "tls_private_key"), sip_files)
    if not config.ws.listen:
        fail("ws", "listen", "at least one ws or wss listener is needed: it is how WICs reach the eP-CSCF")
    if not config.sip.listen:
        fail("sip", "listen", "at least one core-facing SIP listener is needed")
    wildcard = next((listener for listener in config.sip.listen if ipaddress.ip_address(listener.address).is_unspecified), None)
    if wildcard is not None and not config.sip.public_address:
        # RFC 3261 §18.2.2 (Via), §16.6 step 4 (Record-Route), RFC 3327 §5 (Path): the core
        # sends responses and requests to the address we write there; 0.0.0.0 is none.
        fail("sip", "public_address", f"the listener {wildcard} is on every address: set the one the core reaches us at")
    if config.media.engine == "builtin":
        _check_media_addresses(fail, config.media)
    if config.core.mode == "external" and not config.core.next_hop:
        fail("core", "next_hop", "mode = external needs next_hop (the I-CSCF or S-CSCF URI)")
    if config.core.mode == "embedded":
        if not config.core.users:
            fail("core", "users", "mode = embedded needs a users file")
        if not config.core.listen:
            fail("core", "listen", "mode = embedded needs a listener for the embedded core")
    if config.wwsf.enabled and any(listener.transport == "https" for listener in config.wwsf.listen):
        if not (config.ws.certificate and config.ws.private_key):
            fail("wwsf", "listen", "an https listener uses the [ws] certificate and private_key: set both")
    if config.ws.certificate and config.ws.private_key:
        _check_credentials(fail, "ws", ("certificate", "private_key"), (config.ws.certificate, config.ws.private_key))
    if any(listener.transport == "wss" for listener in config.nonsip.listen) and not (config.ws.certificate and config.ws.private_key):
        fail("nonsip", "listen", "a wss listener uses the [ws] certificate and private_key: set both")
    if config.manhole.enabled and not config.manhole.users:
        fail("manhole", "users", "enabled = true needs a users file (user:bcrypt-hash lines)")
    if config.overload.lag_low >= config.overload.lag_high:
        fail("overload", "lag_low", f"must be below lag_high ({config.overload.lag_high:g} s): the band between them is the hysteresis")
    if config.auth.mode != "digest" and not config.auth.keys and not config.wwsf.enabled:
        fail("auth", "keys", f"mode = {config.auth.mode} needs keys: the WWSF's public key(s), a PEM or JWKS file")
    if config.media.engine == "rtpengine" and not config.rtpengine.nodes:
        fail("rtpengine", "nodes", "[media] engine = rtpengine needs at least one node")
    low, high = config.media.port_range
    if high - low < 3:
        fail("media", "port_range", "needs at least 4 ports")
    if config.service.workers > 1 and (high - low + 1) // config.service.workers < 4:
        fail("media", "port_range", f"each of the {config.service.workers} workers needs at least 4 ports of it")
    if config.service.workers > 1:
        top = max(listener.port for listener in config.sip.listen)
        if top + config.service.workers - 1 > 65535:
            fail("sip", "listen", f"worker i listens on the port + i: {top} + {config.service.workers - 1} is past 65535")


def _check_media_addresses(fail: Callable[[str, str, str], None], media: MediaSection) -> None:
    """The addresses the built-in relay writes into SDP must be ones a peer can send to: a
    multihomed host bound to every address (0.0.0.0, ::) does not know which one a WIC reaches."""
    candidate_address = media.advertised_address or media.bind_address
    if ipaddress.ip_address(candidate_address).is_unspecified:
        # RFC 8445 §5.1.1.1, RFC 8839 §5.1: our host candidates and c= toward the WIC carry it.
        key = "advertised_address" if media.advertised_address else "bind_address"
        fail("media", key, f"{candidate_address} is every address, which no WIC can send to: "
             "set bind_address to the WIC-side address, or advertised_address to the one WICs reach")
    if ipaddress.ip_address(media.core_address).is_unspecified:
        # RFC 4566 §5.7: c= toward the core; 0.0.0.0 there even reads as hold (RFC 3264 §8.4).
        fail("media", "core_address", f"{media.core_address} is every address: set the address the core sends RTP to")


def _check_credentials(
    fail: Callable[[str, str, str], None], section: str, keys: tuple[str, str], files: tuple[str, str]
) -> None:
    """A certificate and key that cannot serve TLS stop the start here, not at the first handshake;
    ``keys`` name the certificate and private key settings, ``files`` are their values."""
    try:
        load_credentials(*files)
    except CredentialsError as error:
        fail(section, keys[0] if error.culprit == "certificate" else keys[1], str(error))


def describe() -> str:
    """Every section and key with its default and meaning, for the README and --help."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            if f.name == "port_range":
                default = "-".join(str(port) for port in default)
            elif isinstance(default, tuple):
                default = ", ".join(str(item) for item in default)
            lines.append(f"  {f.name} = {default}    ; {f.metadata['doc']}")
    return "\n".join(lines)
