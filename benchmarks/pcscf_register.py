"""In-process benchmark: CPU of the eP-CSCF policy layer per registration.

Run: ``.venv/bin/python benchmarks/pcscf_register.py [--wics 200] [--registrations 20000]
[--fresh] [--profile]``.

One registration is what ``benchmarks/w2_register.py`` drives through the whole process
(REGISTER → 401 → REGISTER with Authorization → 200), reduced to the work of the eP-CSCF
policy (``epcscf.pcscf.edge.PcscfPolicy``, ``registration``, ``identity``, ``flows``): per
registration, ``route_request`` for both REGISTERs and ``response_to_forward`` for the 401
and the 200.  The messages are those of a real registration capture, one user per WIC, parsed
by the real parser and copied as the proxy copies them, outside the timed region; the proxy core,
transactions and transports are not involved (no sockets).  The clock is the real asyncio
reactor (not run: the expiry timers are armed, reset and cancelled as in service).

By default ``--wics`` WICs register once (not timed) and then re-register round-robin, as
the throughput phase of ``w2_register.py`` does (a refresh of an unchanged binding on the
same flow); ``--fresh`` makes every timed registration the first one on a new flow.
Each registration's messages are prepared just before it is timed (``--batch 1``), so
that they are as fresh in the CPU caches as the messages a service has just parsed; the
cost of reading the clock is subtracted.  The garbage collector runs between batches
only (it would otherwise charge the collection of the prepared messages to whichever
call happens to trigger it).  Printed: microseconds of CPU (``time.process_time``) per
registration.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import time
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()
from twisted.internet import reactor  # noqa: E402

from epcscf.pcscf.edge import EdgeAddresses, PcscfPolicy  # noqa: E402
from epcscf.pcscf.edge_collaborators import EdgeCollaborators  # noqa: E402
from epcscf.pcscf.flows import FlowTable  # noqa: E402
from epcscf.pcscf.registration import Registrations  # noqa: E402
from epcscf.sip.message import Request, Response  # noqa: E402
from epcscf.sip.parser import parse_message  # noqa: E402
from epcscf.sip.proxy_policy import Forward, ProxiedRequest  # noqa: E402
from epcscf.sip.resolver import Target  # noqa: E402
from tests.support.fakes import FakeWsFlow  # noqa: E402

# Messages 1, 4, 5 and 8 of the captured registration: what the policy is handed (the WIC's
# REGISTERs; the core's responses after the proxy removed its own Via).
REGISTER_1 = """REGISTER sip:ims.localdomain SIP/2.0
Via: SIP/2.0/WS {host}.invalid;branch=z9hG4bK{branch}1
Max-Forwards: 70
From: <sip:{user}@ims.localdomain>;tag=ce83997d{n}
To: <sip:{user}@ims.localdomain>
Call-ID: 5c91d5616f570b8e{n}
CSeq: {cseq} REGISTER
Contact: <sip:{user}@{host}.invalid;transport=ws;ob>;reg-id=1;+sip.instance="<urn:uuid:ea2e7ade-0000-4000-8000-{uuid}>";expires=600
Supported: path, outbound, gruu
Content-Length: 0

"""

CHALLENGE = """SIP/2.0 401 Unauthorized
Via: SIP/2.0/WS {host}.invalid;branch=z9hG4bK{branch}1;received=127.0.0.1
From: <sip:{user}@ims.localdomain>;tag=ce83997d{n}
To: <sip:{user}@ims.localdomain>;tag=461478c09baa
Call-ID: 5c91d5616f570b8e{n}
CSeq: {cseq} REGISTER
WWW-Authenticate: Digest realm="ims.localdomain", nonce="AAABohtr8CIy5QZinJy1CPOlB8Y0L5NxNmncATP3ciE=", algorithm=SHA-256, qop="auth"
WWW-Authenticate: Digest realm="ims.localdomain", nonce="AAABohtr8CIy5QZinJy1CPOlB8Y0L5NxNmncATP3ciE=", algorithm=MD5, qop="auth"
Content-Length: 0

"""

REGISTER_2 = """REGISTER sip:ims.localdomain SIP/2.0
Via: SIP/2.0/WS {host}.invalid;branch=z9hG4bK{branch}2
Max-Forwards: 70
From: <sip:{user}@ims.localdomain>;tag=ce83997d{n}
To: <sip:{user}@ims.localdomain>
Call-ID: 5c91d5616f570b8e{n}
CSeq: {cseq2} REGISTER
Contact: <sip:{user}@{host}.invalid;transport=ws;ob>;reg-id=1;+sip.instance="<urn:uuid:ea2e7ade-0000-4000-8000-{uuid}>";expires=600
Supported: path, outbound, gruu
Authorization: Digest username="{user}", realm="ims.localdomain", nonce="AAABohtr8CIy5QZinJy1CPOlB8Y0L5NxNmncATP3ciE=", uri="sip:ims.localdomain", response="a9de8bc62d7d130caff73a12ba384dc7ea31edc078c69ed501016b1b068db0c5", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="6e96d89e2663c5d3"
Content-Length: 0

"""

OK = """SIP/2.0 200 OK
Via: SIP/2.0/WS {host}.invalid;branch=z9hG4bK{branch}2;received=127.0.0.1
From: <sip:{user}@ims.localdomain>;tag=ce83997d{n}
To: <sip:{user}@ims.localdomain>;tag=48a718759859
Call-ID: 5c91d5616f570b8e{n}
CSeq: {cseq2} REGISTER
Contact: <sip:{user}@{host}.invalid;transport=ws;ob>;reg-id=1;+sip.instance="<urn:uuid:ea2e7ade-0000-4000-8000-{uuid}>";expires=600
Path: <sip:{token}@127.0.0.1:40800;transport=tcp;lr;ob>
Service-Route: <sip:orig@127.0.0.1:39915;transport=tcp;lr>
P-Associated-URI: <sip:{user}@ims.localdomain>
Require: outbound
Supported: path, outbound
Date: Fri, 27 Nov 2026 05:13:08 GMT
Content-Length: 0

"""


@dataclass(eq=False)
class FakeServerTransaction:
    request: Request
    connection: FakeWsFlow


def parse(text: str) -> Any:
    return parse_message(text.replace("\n", "\r\n").encode())


@dataclass
class Prepared:
    """One registration's messages, as the proxy hands them to the policy."""

    first: ProxiedRequest
    challenge: Response
    second: ProxiedRequest
    ok: Response


class Bench:
    def __init__(self) -> None:
        self.flows = FlowTable(reactor)
        self.registrations = Registrations(reactor)
        addresses = EdgeAddresses("127.0.0.1", 40800, "tcp", "127.0.0.1", 40801, "ws")
        self.statuses: list[int] = []
        self.policy = PcscfPolicy(
            addresses, self.flows, self.registrations, [Target("TCP", "127.0.0.1", 39915)], network_id="ims.localdomain",
            collaborators=EdgeCollaborators(on_register_response=self.statuses.append),  # as the metrics observer is
        )
        self.serial = 0

    def open_wic(self, number: int) -> FakeWsFlow:
        connection = FakeWsFlow(f"ws-bench0boot-{number}")
        self.flows.open(connection)
        return connection

    def prepare(self, connection: FakeWsFlow, user: int) -> Prepared:
        self.serial += 1
        fields = {
            "user": f"user{user:04d}",
            "host": f"h{user:07x}",
            "uuid": f"{user:012x}",
            "n": str(self.serial),
            "branch": f"{self.serial:x}",
            "cseq": str(2 * self.serial - 1),
            "cseq2": str(2 * self.serial),
            "token": self.flows.token_for(connection),
        }

        def context(template: str) -> ProxiedRequest:
            received = parse(template.format(**fields))
            working = received.copy()  # what StatefulProxy.request_received hands the policy
            working.headers.get("via")  # the proxy reads it first (mark_source): its index is built
            return ProxiedRequest(working, connection, FakeServerTransaction(received, connection))

        def response(template: str) -> Response:
            message = parse(template.format(**fields))
            message.headers.get("via")  # read by the transaction layer and the proxy first
            return message

        return Prepared(context(REGISTER_1), response(CHALLENGE), context(REGISTER_2), response(OK))

    def register(self, prepared: Prepared) -> None:
        policy = self.policy
        forward = policy.route_request(prepared.first)
        assert isinstance(forward, Forward), forward
        policy.response_to_forward(prepared.first, prepared.challenge)
        forward = policy.route_request(prepared.second)
        assert isinstance(forward, Forward), forward
        policy.response_to_forward(prepared.second, prepared.ok)


def check(bench: Bench, prepared: Prepared) -> None:
    """The policy did its job on one registration (a benchmark of a broken policy is no use)."""
    forwarded = prepared.second.request
    path = forwarded.headers.get("Path") or ""
    assert path.startswith("<sip:") and path.endswith(";lr;ob>"), path
    assert forwarded.headers.get("P-Visited-Network-ID") == '"ims.localdomain"'
    assert "icid-value=" in (forwarded.headers.get("P-Charging-Vector") or "")
    binding = bench.registrations.registration_for_request(prepared.second.connection.id)
    assert binding is not None and binding.service_route == ("<sip:orig@127.0.0.1:39915;transport=tcp;lr>",)


def clock_overhead(samples: int = 20000) -> float:
    """CPU seconds one ``time.process_time()`` pair costs (subtracted from each timed registration)."""
    clock = time.process_time
    start = clock()
    for _ in range(samples):
        clock()
    return (clock() - start) / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wics", type=int, default=200, help="WICs re-registering round-robin (default 200)")
    parser.add_argument("--registrations", type=int, default=20000, help="timed registrations (default 20000)")
    parser.add_argument("--fresh", action="store_true", help="every timed registration is a new WIC's first")
    parser.add_argument(
        "--batch", type=int, default=1, help="registrations prepared, then timed together (default 1: just parsed, as in service)"
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the timed part")
    arguments = parser.parse_args()

    bench = Bench()
    wics = [bench.open_wic(number) for number in range(arguments.wics)]
    for user, connection in enumerate(wics):  # every WIC registered once (not timed)
        bench.register(bench.prepare(connection, user))
    profiler = cProfile.Profile() if arguments.profile else None
    clock = time.process_time
    overhead = clock_overhead()
    cpu = 0.0
    done = 0
    next_wic = len(wics)
    gc.collect()
    gc.disable()  # collections are run between batches: not charged to whichever call triggers one
    while done < arguments.registrations:
        batch: list[Prepared] = []
        for _ in range(min(arguments.batch, arguments.registrations - done)):
            if arguments.fresh:
                connection, user = bench.open_wic(next_wic), next_wic
                next_wic += 1
            else:
                user = done % len(wics)
                connection = wics[user]
            batch.append(bench.prepare(connection, user))
            done += 1
        if profiler is not None:
            profiler.enable()
        start = clock()
        for prepared in batch:
            bench.register(prepared)
        cpu += clock() - start - overhead
        if profiler is not None:
            profiler.disable()
        if done % 1000 < arguments.batch:
            check(bench, batch[-1])
            gc.collect()
    gc.enable()
    assert bench.statuses.count(200) == arguments.wics + arguments.registrations
    kind = "first registrations on new flows" if arguments.fresh else f"re-registrations of {arguments.wics} WICs"
    print(f"{arguments.registrations} {kind}: {cpu * 1e6 / arguments.registrations:.1f} µs CPU per registration (policy layer)")
    print(f"  live bindings: {len(bench.registrations.all())}")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
