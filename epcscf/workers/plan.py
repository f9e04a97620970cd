"""What one worker is: its index, its ports, its share of the media ports, its config.

A worker's ``Config`` is derived from the operator's: the core-facing SIP listeners move
to ``port + index`` (so the core reaches each worker at its own address, written in the
Path, Record-Route and Via it adds — RFC 3327 §5, RFC 3261 §16.6), ``[media] port_range``
is cut into equal slices, and what runs once in the supervisor (embedded core, WWSF,
console, metrics) is off.  With an embedded core the worker sees it as an external next hop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from epcscf.config import Config, Listener


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a worker needs beyond the ini files; travels as JSON on its command line."""

    index: int
    count: int
    #: core-facing SIP listeners of this worker (ports already moved by the index)
    sip_listen: tuple[str, ...]
    #: ``[core] next_hop`` and trusted source of the supervisor's embedded core ("" = use the ini)
    core_next_hop: str = ""
    core_source: str = ""
    #: "reuseport": bind each [ws] and [nonsip] listener's port; "inherit": adopt these
    #: descriptors, in [ws] then [nonsip] order
    ws_socket_sharing: str = "reuseport"
    ws_ports: tuple[int, ...] = ()
    ws_fds: tuple[int, ...] = ()
    #: the supervisor's sockets for ``sip_listen``, in its order, inherited and adopted
    #: (epcscf.workers.sockets.sip_socket); () = the worker binds them itself
    sip_fds: tuple[int, ...] = ()
    #: the [nonsip] (Janus API) ports, shared as the [ws] ones
    nonsip_ports: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerPlan":
        data = json.loads(text)
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


def inherited_sip_fds(plan: WorkerPlan) -> dict[str, int]:
    """``plan.sip_fds`` by listener text, as ``PcscfNode`` looks them up."""
    return {str(parse_listener(text)): fd for text, fd in zip(plan.sip_listen, plan.sip_fds)}


def worker_sip_listeners(config: Config, index: int) -> tuple[Listener, ...]:
    """``[sip] listen`` with every port moved by ``index`` (port 0 stays 0: any free port)."""
    return tuple(replace(listener, port=listener.port + index if listener.port else 0) for listener in config.sip.listen)


def media_slice(port_range: tuple[int, int], index: int, count: int) -> tuple[int, int]:
    """Worker ``index``'s equal share of ``port_range`` (the last one gets the remainder)."""
    low, high = port_range
    size = (high - low + 1) // count
    start = low + index * size
    end = high if index == count - 1 else start + size - 1
    return start, end


def parse_listener(text: str) -> Listener:
    transport, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    return Listener(transport, host.strip("[]"), int(port))


def _with_ports(listeners: tuple[Listener, ...], ports: tuple[int, ...]) -> tuple[Listener, ...]:
    """``listeners`` on the ports the supervisor resolved (port 0 → the one all workers share)."""
    if not ports:
        return listeners
    return tuple(replace(listener, port=port) for listener, port in zip(listeners, ports))


def worker_config(config: Config, plan: WorkerPlan) -> Config:
    """The operator's ``config`` as worker ``plan.index`` runs it."""
    core = config.core
    if plan.core_next_hop:
        core = replace(core, mode="external", next_hop=(plan.core_next_hop,), trusted_sources=core.trusted_sources or (plan.core_source,))
    ws = replace(config.ws, listen=_with_ports(config.ws.listen, plan.ws_ports))
    nonsip = replace(config.nonsip, listen=_with_ports(config.nonsip.listen, plan.nonsip_ports))
    return replace(
        config,
        service=replace(config.service, workers=1),
        sip=replace(config.sip, listen=tuple(parse_listener(text) for text in plan.sip_listen)),
        ws=ws,
        nonsip=nonsip,
        core=core,
        media=replace(config.media, port_range=media_slice(config.media.port_range, plan.index, plan.count)),
        manhole=replace(config.manhole, enabled=False),
        metrics=replace(config.metrics, enabled=False),
        wwsf=replace(config.wwsf, enabled=False),
    )
