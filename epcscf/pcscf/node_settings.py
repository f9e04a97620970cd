"""Config sections → the settings objects of the node's parts (pure functions, no wiring).

``epcscf.pcscf.node`` reads these once at construction and again on a reload; each takes the
loaded ``Config`` (or a section's settings) and returns the frozen settings of one part.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from epcscf.config import Config
from epcscf.ice import IceAgentConfig
from epcscf.media import MediaSessionConfig
from epcscf.pcscf.admission import OverloadSettings
from epcscf.pcscf.call_media import CallMediaSettings
from epcscf.pcscf.setup_window import WindowSettings
from epcscf.pcscf.web_auth import TokenSettings
from epcscf.sdp import CodecPolicy
from epcscf.ws.protocol import WsListenerSettings


def ws_settings(config: Config) -> WsListenerSettings:
    ws = config.ws
    return WsListenerSettings(
        allowed_origins=ws.allowed_origins,
        allow_any_origin=ws.allow_any_origin,
        allow_missing_origin=ws.allow_missing_origin,
        max_message_size=ws.max_message_size,
        ping_interval=ws.ping_interval,
        ping_timeout=ws.ping_timeout,
        max_connections_per_ip=config.overload.max_connections_per_ip,
    )


#: the ``iss`` of the tokens the demo WWSF issues (``epcscf.wwsf.tokens.DEMO_ISSUER``: the WWSF
#: knows nothing of the eP-CSCF, so the name is written in both places)
DEMO_TOKEN_ISSUER = "epcscf-wwsf"


def token_settings(config: Config, default_keys: str = "") -> TokenSettings:
    """[auth] → web-credential access; the defaults name the demo WWSF of this process."""
    auth = config.auth
    return TokenSettings(
        mode=auth.mode,
        keys=auth.keys or default_keys,
        audience=auth.audience or config.core.domain,
        issuers=auth.issuers or (DEMO_TOKEN_ISSUER,),
        algorithms=auth.algorithms,
        identity_claim=auth.identity_claim,
        leeway=auth.leeway,
        handshake=auth.handshake,
        realm=config.core.domain,
    )


def overload_settings(config: Config) -> OverloadSettings:
    """[overload] → the admission controller's settings (same names)."""
    return OverloadSettings(**{f.name: getattr(config.overload, f.name) for f in fields(OverloadSettings)})


def window_settings(settings: OverloadSettings) -> WindowSettings:
    """[overload] → the bound on calls in setup (none while overload control is off)."""
    if not settings.enabled:
        return WindowSettings(target=0.0, max_calls=0)
    return WindowSettings(
        target=settings.setup_target, min_calls=settings.min_calls_in_setup, max_calls=settings.max_calls_in_setup
    )


def call_media_settings(config: Config) -> CallMediaSettings:
    """[media] → the ICE agents and media sessions of every call."""
    media = config.media
    return CallMediaSettings(
        ice=IceAgentConfig(
            bind_addresses=(media.bind_address,),
            advertised_address=media.advertised_address or None,
            port_range=media.port_range,
            mode=media.ice_mode,  # type: ignore[arg-type]
            consent_interval=media.consent_interval,
            consent_timeout=media.consent_timeout,
            connect_timeout=media.connect_timeout,
        ),
        media=MediaSessionConfig(core_address=media.core_address),
        codecs=CodecPolicy(video=media.video_codecs),
        park_sockets=True,  # closed by stop_media_engine at the node's stop
    )


def system_dns_resolver(resolv_conf: str = "/etc/resolv.conf") -> Any:
    """/etc/hosts, then the name servers of resolv.conf (read once: twisted.names' own
    resolv.conf watcher would keep a 60 s timer running for the life of the resolver)."""
    from twisted.names import client, hosts, resolve

    servers: list[tuple[str, int]] = []
    try:
        with open(resolv_conf) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append((fields[1], 53))
    except OSError:
        pass
    chain = [hosts.Resolver()]
    if servers:
        chain.append(client.Resolver(servers=servers))
    return resolve.ResolverChain(chain)

