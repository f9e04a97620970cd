"""In-process benchmark: CPU per registration in the embedded core, no sockets.

Run: ``.venv/bin/python benchmarks/core_register.py [registrations] [--users 200] [--profile]``.

Each registration is what the eP-CSCF sends the core in ``benchmarks/w2_register.py`` (the
messages captured in a real run: Path with ``ob``, two Vias, an RFC 5626 Contact with
``+sip.instance``/``reg-id``, ``Supported: path, outbound, gruu``): a REGISTER without
credentials (→ 401 with SHA-256 and MD5 challenges), then the same REGISTER with a
correct SHA-256 ``Authorization`` computed from that challenge (→ 200).  Every user
re-registers with the same Call-ID and a higher CSeq, as the WICs of the throughput phase
do, so most registrations refresh an existing binding (RFC 5626 flow).

Two levels are timed (``time.process_time``, only around the core's own calls; building
and parsing the requests, and computing the client's digest, are not counted):

* ``registrar``: ``Registrar.register(request)`` alone;
* ``core``: the request handed to the core's ``TransactionLayer.receive`` on a fake
  reliable (TCP) connection, i.e. the server transaction, ``CoreTransactionUser`` and
  the registrar, up to the response handed to the connection (not serialized), plus the
  clock turn that ends the transaction (Timer J = 0 on TCP).

Figures are microseconds of CPU per registration (two REGISTERs each), best of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import os
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from epcscf.core.digest import parse_digest  # noqa: E402
from epcscf.core.registrar import Registrar, RegistrarSettings  # noqa: E402
from epcscf.core.service import EmbeddedCore, EmbeddedCoreSettings  # noqa: E402
from epcscf.sip.connection import Address  # noqa: E402
from epcscf.sip.message import Message, Request, Response  # noqa: E402
from epcscf.sip.parser import parse_message  # noqa: E402

DOMAIN = "ims.localdomain"
SERVICE_ROUTE = "sip:orig@127.0.0.1:39915;transport=tcp;lr"

# Message 2 / 6 of a real registration capture, parameterised.
REGISTER = (
    "REGISTER sip:ims.localdomain SIP/2.0\r\n"
    "Path: <sip:cQ362nF-O8EMHHdzLThmN2U4MzU1LTE@127.0.0.1:40800;transport=udp;lr;ob>\r\n"
    "Via: SIP/2.0/TCP 127.0.0.1:40800;branch=z9hG4bK-epc-{branch}.f2ae0d305d18b504\r\n"
    "Via: SIP/2.0/WS {host}.invalid;branch=z9hG4bK{branch};received=127.0.0.1\r\n"
    "Max-Forwards: 69\r\n"
    "From: <sip:{user}@ims.localdomain>;tag={tag}\r\n"
    "To: <sip:{user}@ims.localdomain>\r\n"
    "Call-ID: {call_id}\r\n"
    "CSeq: {cseq} REGISTER\r\n"
    "Contact: <sip:{user}@{host}.invalid;transport=ws;ob>;reg-id=1;"
    '+sip.instance="<urn:uuid:ea2e7ade-0000-4000-8000-{instance}>";expires=600\r\n'
    "Supported: path, outbound, gruu\r\n"
    "{authorization}"
    "Content-Length: 0\r\n"
    'P-Visited-Network-ID: "ims.localdomain"\r\n'
    "P-Charging-Vector: icid-value=2aee0a8542ab7dc6{cseq:016x};icid-generated-at=127.0.0.1\r\n"
    "\r\n"
)


@dataclass
class Wic:
    """One registering user agent: its identity and where its CSeq is."""

    user: str
    password: str
    host: str
    call_id: str
    tag: str
    instance: str
    cseq: int = 0

    def register(self, authorization: str = "") -> Request:
        self.cseq += 1
        if not authorization:
            # JsSIP: a new From tag for every registration (kept for its authenticated retry)
            self.tag = f"t{self.cseq:04x}{self.host}"
        text = REGISTER.format(
            branch=f"{self.cseq:08x}{self.host}",
            host=self.host,
            user=self.user,
            tag=self.tag,
            call_id=self.call_id,
            cseq=self.cseq,
            instance=self.instance,
            authorization=authorization,
        )
        message = parse_message(text.encode("ascii"))
        assert isinstance(message, Request)
        return message

    def authorization(self, challenge: str) -> str:
        """``Authorization`` for the SHA-256 challenge (RFC 7616 §3.4), as a WIC computes it."""
        params = parse_digest(challenge)
        nonce, realm, uri, cnonce, nc = params["nonce"], params["realm"], f"sip:{DOMAIN}", f"c{self.cseq:015x}", "00000001"

        def h(text: str) -> str:
            return hashlib.sha256(text.encode()).hexdigest()

        response = h(f"{h(f'{self.user}:{realm}:{self.password}')}:{nonce}:{nc}:{cnonce}:auth:{h(f'REGISTER:{uri}')}")
        return (
            f'Authorization: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm=SHA-256, qop=auth, nc={nc}, cnonce="{cnonce}"\r\n'
        )


@dataclass
class FakeConnection:
    """A reliable (TCP) connection from the eP-CSCF that keeps what the core sends on it."""

    transport: str = "TCP"
    local: Address = Address("127.0.0.1", 39915)
    remote: Address = Address("127.0.0.1", 40800)
    id: str = "tcp:127.0.0.1:40800"
    sent: list[Message] = field(default_factory=list)

    @property
    def reliable(self) -> bool:
        return True

    @property
    def connected(self) -> bool:
        return True

    def send_message(self, message: Message) -> None:
        self.sent.append(message)

    def close(self) -> None:
        pass


def make_core(users: int, clock: Clock, directory: str) -> EmbeddedCore:
    path = os.path.join(directory, "users")
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(users):
            handle.write(f"user{index:04d}:secret{index:04d}\n")
    core = EmbeddedCore(
        EmbeddedCoreSettings(DOMAIN, ("tcp:127.0.0.1:0",), path, max_expires=600, default_expires=600,
                             digest_algorithms=("SHA-256", "MD5")),
        reactor=clock,
    )
    # What startService builds, without listeners.
    core.service_route = SERVICE_ROUTE
    core.registrar = Registrar(
        RegistrarSettings(DOMAIN, SERVICE_ROUTE, max_expires=600, default_expires=600),
        core.location,
        core.authenticator,
        core.users,
    )
    return core


def make_wics(users: int) -> list[Wic]:
    return [
        Wic(f"user{i:04d}", f"secret{i:04d}", f"h{i:07x}", f"call{i:012x}", f"t{i:07x}", f"{i:012x}")
        for i in range(users)
    ]


def run(level: str, registrations: int, users: int, profile: cProfile.Profile | None = None) -> float:
    """CPU microseconds per registration at ``level`` ("registrar" or "core")."""
    clock = Clock()
    clock.advance(1_800_000_000)
    with tempfile.TemporaryDirectory() as directory:
        core = make_core(users, clock, directory)
    wics = make_wics(users)
    connection = FakeConnection()
    registrar = core.registrar
    assert registrar is not None

    def answer(request: Request) -> Response:
        if level == "registrar":
            return registrar.register(request)
        core.transactions.receive(request, connection)
        clock.advance(0.0005)  # Timer J (0 on TCP) ends the transaction
        response = connection.sent.pop()
        assert isinstance(response, Response)
        return response

    spent = 0.0
    timer: Callable[[], float] = time.process_time
    gc.collect()
    for number in range(registrations):
        wic = wics[number % users]
        first = wic.register()
        if profile is not None:
            profile.enable()
        start = timer()
        challenged = answer(first)
        spent += timer() - start
        if profile is not None:
            profile.disable()
        assert challenged.status == 401, challenged.start_line()
        second = wic.register(wic.authorization(challenged.headers.get_all("www-authenticate")[0]))
        if profile is not None:
            profile.enable()
        start = timer()
        accepted = answer(second)
        spent += timer() - start
        if profile is not None:
            profile.disable()
        assert accepted.status == 200, accepted.start_line()
    assert len(list(core.location.aors())) == min(users, registrations)
    return spent / registrations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("registrations", type=int, nargs="?", default=3000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--level", choices=("registrar", "core", "both"), default="both")
    parser.add_argument("--profile", action="store_true", help="cProfile the core level, top 30 by own time")
    args = parser.parse_args()
    levels = ("registrar", "core") if args.level == "both" else (args.level,)
    if args.profile:
        profile = cProfile.Profile()
        run(levels[-1], args.registrations, args.users, profile)
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        return
    for level in levels:
        best = min(run(level, args.registrations, args.users) for _ in range(args.repeat))
        print(f"{level:9s}: {best:7.1f} us CPU per registration (REGISTER→401, REGISTER→200; "
              f"{args.registrations} registrations, {args.users} users, best of {args.repeat})")


if __name__ == "__main__":
    main()
