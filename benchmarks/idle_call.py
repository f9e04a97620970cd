"""Benchmark: latency of one call on an idle eP-CSCF — INVITE → forwarded to the core, → 180, → 200.

Usage::

    .venv/bin/python benchmarks/idle_call.py [--calls 20] [--pause 0.3] [--ice-mode full|lite]

    unshare -rn sh -c 'ip link set lo up && exec .venv/bin/python benchmarks/idle_call.py'

epcscf runs as its own process (``twistd -n epcscf``, ``[core] mode = external`` toward a UDP next
hop, ``[overload] enabled = false``).  The core is played by this process, on the same clock as
the WIC: a UDP socket that answers REGISTER 200 at once (Contact and Path echoed, no challenge)
and every INVITE with 180 and then 200 (plain RTP/AVP answer) as soon as it arrives, and BYE
with 200.  The WIC is the benchmarks' raw WebSocket WIC (``benchmarks/calls.py``: a Chrome-like
offer with one host candidate; after the 200 it ACKs, runs ICE to completion and hangs up).

One call at a time, ``--pause`` apart, so the edge is idle when each INVITE arrives.  Printed,
min / p50 / max over ``--calls`` calls: INVITE sent on the WebSocket → INVITE received by the
core (the eP-CSCF's own setup work: parsing, policy, SDP transformation, media allocation, ICE
gathering), → 180 at the WIC, → 200 at the WIC; and the edge's CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, TOP)

from calls import STEP_TIMEOUT, CallFailed, open_callers  # noqa: E402
from w2_register import DOMAIN, Deployment, EpcscfProcess, free_port, make_users  # noqa: E402

FORWARD_FLOOR = 0.005  # INVITE → forwarded to the core on an idle edge

CORE_SDP = (
    "v=0\r\no=core 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


class Core(asyncio.DatagramProtocol):
    """The external core: registrar without challenge, and the called party answering at once."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.invites: dict[str, float] = {}  # Call-ID → when the INVITE arrived (perf_counter)
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media.bind(("127.0.0.1", 0))  # where our SDP says the RTP goes (never read)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        arrived = time.perf_counter()
        head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        method = head[0].split(" ", 1)[0]
        if method.startswith("SIP/"):
            return
        headers: list[tuple[str, str]] = []
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))

        def every(*names: str) -> list[str]:
            return [f"{name.title()}: {value}" for name, value in headers if name in names]

        call_id = next((value for name, value in headers if name in ("call-id", "i")), "")
        to = next((value for name, value in headers if name in ("to", "t")), "")
        to_tagged = to if ";tag=" in to else f"{to};tag={secrets.token_hex(4)}"
        common = (every("via", "v") + every("from", "f") + [f"To: {to_tagged}", f"Call-ID: {call_id}"]
                  + every("cseq"))

        def respond(status: str, extra: list[str], body: str = "") -> None:
            lines = [f"SIP/2.0 {status}"] + common + extra + [f"Content-Length: {len(body)}", "", body]
            self.transport.sendto("\r\n".join(lines).encode(), addr)

        if method == "REGISTER":
            contacts = [f"{line};expires=600" for line in every("contact", "m")]
            respond("200 OK", every("path") + contacts)
        elif method == "INVITE":
            self.invites[call_id] = arrived
            contact = [f"Contact: <sip:callee@127.0.0.1:{self.transport.get_extra_info('sockname')[1]}>"]
            respond("180 Ringing", every("record-route") + contact)
            sdp = CORE_SDP.format(port=self.media.getsockname()[1])
            respond("200 OK", every("record-route") + contact + ["Content-Type: application/sdp"], sdp)
        elif method in ("BYE", "CANCEL", "OPTIONS"):
            respond("200 OK", [])


async def one_call(caller: Any, core: Core, full_ice: bool) -> tuple[float, float, float]:
    """(INVITE → core, → 180, → 200) in seconds; the call is completed (ACK, ICE, BYE)."""
    call_id, from_tag = secrets.token_hex(10), secrets.token_hex(4)
    uri = to = "sip:callee@" + DOMAIN
    invite = caller.request("INVITE", uri, call_id, from_tag, f"<{to}>", 1, body=caller.offer())
    caller.ice.reset()
    sent = time.perf_counter()
    caller.flow.send(invite)
    ringing = None
    deadline = sent + STEP_TIMEOUT
    while True:
        message = await asyncio.wait_for(caller.flow.responses.get(), max(0.01, deadline - time.perf_counter()))
        if not message:
            raise CallFailed("WebSocket closed")
        if call_id.encode() not in message:
            continue
        if message.startswith(b"SIP/2.0 180") and ringing is None:
            ringing = time.perf_counter()
        elif message.startswith(b"SIP/2.0 2"):
            answered = time.perf_counter()
            break
        elif int(message[8:11]) >= 300:
            raise CallFailed(message.split(b"\r\n", 1)[0].decode(errors="replace"))
    target, to_value, routes = await caller.ack_and_connect(message, call_id, from_tag, full_ice)
    caller.flow.send(caller.request("BYE", target, call_id, from_tag, to_value, 2, routes))
    await caller.final(call_id, 2, "BYE", STEP_TIMEOUT)
    forwarded = core.invites.pop(call_id, None)
    if forwarded is None or ringing is None:
        raise CallFailed("the core saw no INVITE or the WIC no 180")
    return forwarded - sent, ringing - sent, answered - sent


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"min {1000 * ordered[0]:.1f} / p50 {1000 * ordered[len(ordered) // 2]:.1f} / "
            f"max {1000 * ordered[-1]:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--pause", type=float, default=0.3)
    parser.add_argument("--ice-mode", choices=("full", "lite"), default="full")
    parser.add_argument("--log-level", default="warn")
    options = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="epcscf-idle-call-")
    deployment = Deployment(directory, make_users(1), options.log_level, core_transport="udp")
    original = deployment.write_ini

    def write_ini(name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        written = original(name, *args, **kwargs)
        with open(written[0]) as handle:
            text = handle.read()
        text = text.replace("port_range = 41000-41999", f"port_range = 42000-42999\nice_mode = {options.ice_mode}")
        with open(written[0], "w") as handle:
            handle.write(text + "[overload]\nenabled = false\n")
        return written

    deployment.write_ini = write_ini  # type: ignore[method-assign]
    core_port = free_port(socket.SOCK_DGRAM)
    epcscf = EpcscfProcess(deployment, "edge", f"sip:127.0.0.1:{core_port};transport=udp")

    async def scenario() -> tuple[list[tuple[float, float, float]], float]:
        loop = asyncio.get_running_loop()
        transport, core = await loop.create_datagram_endpoint(Core, local_addr=("127.0.0.1", core_port))
        [caller] = await open_callers(epcscf.ws_port, deployment.users)
        try:
            await one_call(caller, core, options.ice_mode == "full")  # warm-up (imports, first allocations)
            await asyncio.sleep(options.pause)
            cpu_before = epcscf.cpu_seconds()
            timings = []
            for _ in range(options.calls):
                timings.append(await one_call(caller, core, options.ice_mode == "full"))
                await asyncio.sleep(options.pause)
            return timings, epcscf.cpu_seconds() - cpu_before
        finally:
            caller.flow.close()
            caller.ice.transport.close()
            transport.close()
            core.media.close()

    try:
        epcscf.wait_listening()
        with open("/proc/loadavg") as handle:
            load = " ".join(handle.read().split()[:3])
        timings, cpu = asyncio.run(scenario())
    finally:
        epcscf.stop()
    forwards = [t[0] for t in timings]
    print(f"one idle call at a time (ICE {options.ice_mode}), external core on UDP, {len(timings)} calls, loadavg {load}")
    print(f"  INVITE → forwarded to the core: {summary(forwards)} "
          f"[{'PASS' if sorted(forwards)[len(forwards) // 2] <= FORWARD_FLOOR else 'FAIL'} p50 <= {1000 * FORWARD_FLOOR:g} ms]")
    print(f"  INVITE → 180 at the WIC:        {summary([t[1] for t in timings])}")
    print(f"  INVITE → 200 at the WIC:        {summary([t[2] for t in timings])}")
    print(f"  epcscf CPU {1000 * cpu / len(timings):.1f} ms per call (with ICE, BYE and the pauses' timers)")
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
