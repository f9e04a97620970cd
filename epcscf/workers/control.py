"""Supervisor ⇄ worker control: AMP commands (``twisted.protocols.amp``) over the worker's pipes.

The supervisor writes to the worker's descriptor ``COMMANDS_FD`` and reads its
``ANSWERS_FD`` (the worker's stdout and stderr stay its log).  Everything a command carries
is plain data: the rows of ``NodeOperations`` as JSON, the worker's Prometheus exposition
as text.  AMP limits one value to 64 KiB, so those travel as ``Chunked`` values, split
over several keys.
"""

from __future__ import annotations

import json
from itertools import count
from typing import Any

from twisted.protocols import amp

#: descriptors of the control channel in the worker (0-2 stay stdin, stdout = log, stderr)
COMMANDS_FD = 3
ANSWERS_FD = 4

_CHUNK = 0xFFFF


def _python_name(name: bytes) -> str:
    """An AMP argument's wire name → the keyword it is passed as (as AMP itself converts it)."""
    return name.decode("ascii").replace("-", "_")


class Chunked(amp.Argument):
    """UTF-8 text of any length, split over keys ``name.0``, ``name.1``… (AMP's 64 KiB limit)."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:  # noqa: N802
        data = self.encode(objects[_python_name(name)])
        for index, start in enumerate(range(0, max(len(data), 1), _CHUNK)):
            strings[b"%s.%d" % (name, index)] = data[start : start + _CHUNK]

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:  # noqa: N802
        parts = []
        for index in count():
            part = strings.get(b"%s.%d" % (name, index))
            if part is None:
                break
            parts.append(part)
        objects[_python_name(name)] = self.decode(b"".join(parts))

    def encode(self, value: Any) -> bytes:
        return value.encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return data.decode("utf-8")


class Json(Chunked):
    """Any JSON-serialisable value (rows of dicts), chunked."""

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, default=str).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


# --- worker → supervisor ------------------------------------------------------------------


class WorkerReady(amp.Command):
    """The worker listens: its index, pid and bound listeners (``udp:127.0.0.1:5061``…)."""

    arguments = [(b"index", amp.Integer()), (b"pid", amp.Integer()), (b"listeners", Json())]
    response: list = []


# --- supervisor → worker ------------------------------------------------------------------

#: what ``Query`` may ask: the ``NodeOperations`` methods that take no argument
QUERIES = ("registrations", "flows", "calls", "stats", "resource_counts")


class Query(amp.Command):
    """One of ``QUERIES``, or ``call_timeline`` of ``argument``: its JSON rows."""

    arguments = [(b"what", amp.Unicode()), (b"argument", amp.Unicode(optional=True))]
    response = [(b"rows", Json())]
    errors = {KeyError: b"UNKNOWN_QUERY"}


class ReleaseCall(amp.Command):
    arguments = [(b"call_id", amp.Unicode()), (b"reason", amp.Unicode())]
    #: how many dialogs were released; -1: no such live call in this worker
    response = [(b"released", amp.Integer())]


class DisconnectFlow(amp.Command):
    arguments = [(b"flow", amp.Unicode()), (b"code", amp.Integer()), (b"reason", amp.Unicode())]
    response = [(b"closed", amp.Boolean())]


class Scrape(amp.Command):
    """The worker's Prometheus exposition (text format 0.0.4)."""

    arguments: list = []
    response = [(b"exposition", Chunked())]


class Reload(amp.Command):
    """Re-read the ini files (as SIGHUP does); the changes as console rows, or the one-line error."""

    arguments: list = []
    response = [(b"changes", Json()), (b"error", amp.Unicode())]


class QuietAMP(amp.AMP):
    """AMP without its info line per connection made and lost: a worker's start and end are
    logged once by the pool, with the reason."""

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        amp.BinaryBoxProtocol.connectionLost(self, reason)
