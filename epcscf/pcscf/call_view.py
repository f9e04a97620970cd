"""Read-only views of the call manager: each call as plain data for ``NodeOperations``.

The call manager (``epcscf.pcscf.calls.CallManager``) owns the calls; operations only
look at them (``epcscf.pcscf.operations`` hands the records below to the console and the
metrics, which never see a ``Call``).  Everything here reads through the manager's public views (``calls()``,
``ended_calls()``, ``find()``) and ``Call.summary()``/``Call.timeline``, and reads the
media statistics defensively: a stream that is still being set up has no session yet,
and a view must never raise into the console or a Prometheus scrape.

The media statistics of a call (``CallMediaLike.stats()``, or ``Call.media_stats`` once it
ended) are one entry per media stream (``{m-line index: {"ice": state, "media": MediaStats}}``); a call's ICE state is
the worst of its streams, its DTLS state likewise, and its packet/byte counts add up
both directions (WIC → core and core → WIC) of every stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

# Worst first: a call is as good as its worst stream.
ICE_ORDER = ("failed", "closed", "new", "gathered", "checking", "connected")  # epcscf.ice.types.IceState
DTLS_ORDER = ("failed", "closed", "new", "connecting", "connected")  # epcscf.media.dtls.DtlsState
DIRECTIONS = ("wic_to_core", "core_to_wic")


@dataclass(frozen=True)
class MediaFigures:
    """Totals of one call's media (all streams)."""

    ice: str = "-"
    dtls: str = "-"
    packets: dict[str, int] | None = None  # per direction
    bytes: dict[str, int] | None = None

    @property
    def total_packets(self) -> int:
        return sum((self.packets or {}).values())


def _field(holder: Any, name: str, default: Any = None) -> Any:
    if isinstance(holder, dict):
        return holder.get(name, default)
    return getattr(holder, name, default)


def _worst(states: Iterable[str], order: tuple[str, ...]) -> str:
    seen = [state for state in states if state]
    if not seen:
        return "-"
    return min(seen, key=lambda state: order.index(state) if state in order else len(order))


def _state_text(value: Any) -> str:
    value = getattr(value, "value", value)
    return str(value).lower() if value is not None else ""


def media_figures(call: Any) -> MediaFigures:
    """ICE/DTLS state and packet/byte counts of a call (empty figures when unknown).

    A live call's figures come from its media now; an ended call keeps its last snapshot
    in ``Call.media_stats`` (taken by the call manager just before the media closed).
    """
    media = getattr(call, "media", None)
    if media is None:
        streams = getattr(call, "media_stats", None)
    else:
        try:
            streams = media.stats()
        except Exception:  # a stream half set up: show what we can, never fail the view
            return MediaFigures()
    if not isinstance(streams, dict):
        return MediaFigures()
    ice_states, dtls_states = [], []
    packets = {direction: 0 for direction in DIRECTIONS}
    octets = {direction: 0 for direction in DIRECTIONS}
    for stream in streams.values():
        ice_states.append(_state_text(_field(stream, "ice")))
        session = _field(stream, "media")
        if session is None:
            continue
        dtls_states.append(_state_text(_field(session, "dtls_state")))
        for direction in DIRECTIONS:
            counts = _field(session, direction)
            packets[direction] += int(_field(counts, "packets", 0) or 0)
            octets[direction] += int(_field(counts, "bytes", 0) or 0)
    return MediaFigures(_worst(ice_states, ICE_ORDER), _worst(dtls_states, DTLS_ORDER), packets, octets)


def live_calls(manager: Any) -> list[Any]:
    if manager is None:
        return []
    return list(manager.calls())


def ended_calls(manager: Any) -> list[Any]:
    if manager is None or not hasattr(manager, "ended_calls"):
        return []
    return list(manager.ended_calls())


def call_record(call: Any, live: bool) -> dict[str, Any]:
    """One call as plain data: ``Call.summary()`` plus its media figures (see ``media_figures``)."""
    record = dict(call.summary())
    figures = media_figures(call)
    record.update(
        live=live,
        ice=figures.ice,
        dtls=figures.dtls,
        packets=dict(figures.packets or {}),
        bytes=dict(figures.bytes or {}),
    )
    return record


def timeline_records(call: Any) -> list[dict[str, Any]]:
    """A call's timeline, times relative to its creation."""
    start = call.created
    return [
        {"t": round(entry.at - start, 3), "kind": entry.kind, "event": entry.text}
        for entry in list(getattr(call, "timeline", ()))
    ]
