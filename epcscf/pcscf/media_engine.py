"""The media engine of a node, chosen by ``[media] engine``: what makes each call's media.

Both engines are media factories for the call manager (``calls.MediaFactory``: a call in, its
``CallMediaLike`` out) with the same per-process duties: ``resource_counts()`` for leak
accounting, ``snapshot()`` for operations, ``start()``/``stop()`` around the node's life.

* ``builtin`` — ``call_media.CallMediaEngine``: ICE (aioice), DTLS-SRTP and the relay in this
  process; nothing else to run.
* ``rtpengine`` — ``rtpengine_media.RtpengineEngine``: the same SDP policy, with ICE, DTLS-SRTP
  and the relay on rtpengine nodes driven over the ng protocol.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from twisted.internet import defer

from epcscf.config import Config
from epcscf.media.rtpengine_ng import NgClient, NgNode, NgSettings
from epcscf.pcscf.call_media import CallMediaEngine, CallMediaSettings
from epcscf.pcscf.call_model import CallMediaLike
from epcscf.pcscf.rtpengine_media import RtpengineEngine, RtpengineSettings


class MediaEngine(Protocol):
    def __call__(self, call: Any) -> CallMediaLike: ...

    def resource_counts(self) -> dict[str, int]: ...


def rtpengine_settings(config: Config) -> tuple[tuple[NgNode, ...], NgSettings, RtpengineSettings]:
    """[rtpengine] → the ng client's nodes and settings, and the calls' settings."""
    section = config.rtpengine
    nodes = tuple(NgNode(host, port, weight) for host, port, weight in section.nodes)
    return (
        nodes,
        NgSettings(timeout=section.timeout, ping_interval=section.ping_interval),
        RtpengineSettings(flags=section.flags, query_interval=section.query_interval, tcp_ng_port=section.tcp_ng_port),
    )


def build_media_engine(
    config: Config, reactor: Any, builtin: CallMediaSettings, owner: str = ""
) -> CallMediaEngine | RtpengineEngine:
    """``owner``: what marks this process's rtpengine calls (its core-facing SIP address)."""
    if config.media.engine == "rtpengine":
        nodes, ng, settings = rtpengine_settings(config)
        # one SDP policy whichever engine relays
        settings = replace(settings, codecs=builtin.codecs, owner=owner)
        return RtpengineEngine(reactor, NgClient(reactor, nodes, ng), settings)
    return CallMediaEngine(reactor, builtin)


def start_media_engine(engine: Any) -> None:
    if isinstance(engine, RtpengineEngine):
        engine.start()


def stop_media_engine(engine: Any) -> defer.Deferred:
    if isinstance(engine, RtpengineEngine):
        return engine.stop()
    if isinstance(engine, CallMediaEngine):
        engine.close()
    return defer.succeed(None)


def engine_snapshot(engine: Any) -> dict[str, Any]:
    """What operations show of the engine: its name, and for rtpengine its nodes and counts."""
    if isinstance(engine, RtpengineEngine):
        return engine.snapshot()
    return {"engine": "builtin"}
