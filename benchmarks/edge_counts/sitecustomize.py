"""Per-worker message counts of the eP-CSCF under a benchmark: what it received, what it sent, what it
absorbed, and what its collector did (for ``benchmarks/calls.py --counts``).

Put this folder on PYTHONPATH and name a directory in ``EDGE_COUNTS``; the benchmarks hand their
environment to the edge and its workers (not the core: a ``…core.ini`` config).  Each edge process then
counts, by wrapping a few functions once their modules are imported:

- SIP in, by transport (``udp``: the core side; ``ws``: the WICs) and kind (a request's method, a
  response's class and CSeq method), and what of it reached the transaction user (a new request, an ACK
  for a 2xx, a stray response): the difference is what the transaction layer absorbed (RFC 3261 §17);
- SIP out by transport and kind (a retransmission by a transaction timer counts again);
- STUN in and out by class, and non-STUN datagrams on the ICE sockets (DTLS);
- the collector's passes by generation and their time (``gc.callbacks``).

On SIGUSR1 a process writes its counts so far to ``EDGE_COUNTS/<pid>.json``; the benchmark signals
each worker before and after its timed phase and subtracts.  Counting costs a little CPU per message,
so the CPU figures of a counted run are not comparable with an uncounted one.
"""

from __future__ import annotations

import os
import sys

_DIRECTORY = os.environ.get("EDGE_COUNTS")
# A worker is ``python -m epcscf.workers.run --plan …``: at this point its argv is ``['-m', '--plan', …]``.
_IS_EDGE = (any(arg.endswith("twistd") for arg in sys.argv) or "--plan" in sys.argv) and not any(
    arg.endswith("core.ini") for arg in sys.argv
)


def _install() -> None:
    import collections
    import gc
    import importlib.abc
    import json
    import signal
    import time
    from typing import Any, Callable

    counts: collections.Counter[str] = collections.Counter()
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.thread_time()
        else:
            counts[f"gc gen{info['generation']}"] += 1
            counts["gc ms (thread CPU)"] += round(1000 * (time.thread_time() - gc_started[0]), 3)  # type: ignore[assignment]

    gc.callbacks.append(on_gc)

    def kind(message: Any) -> str:
        method = getattr(message, "method", None)
        if method is not None:
            return method
        from epcscf.sip.headers import cseq

        try:
            sequence = cseq(message)
            cseq_method = sequence.method if sequence is not None else "?"
        except ValueError:
            cseq_method = "?"
        return f"{message.status // 100}xx {cseq_method}"

    def first_word(data: bytes) -> str:
        head = data[:16]
        if head.startswith(b"SIP/2.0 "):
            return f"{chr(head[8])}xx"
        return head.split(b" ", 1)[0].decode("latin-1") or "keep-alive"

    def transport_of(connection: Any) -> str:
        return "ws" if type(connection).__name__.startswith("Ws") else "udp"

    def patch_transaction(module: Any) -> None:
        layer = module.TransactionLayer
        receive, call_tu = layer.receive, layer._call_tu

        def counted_receive(self: Any, message: Any, connection: Any) -> None:
            counts[f"sip in {transport_of(connection)} {kind(message)}"] += 1
            receive(self, message, connection)

        def counted_call_tu(self: Any, method: Callable[..., None], message: Any, connection: Any) -> None:
            counts[f"to TU {method.__name__} {transport_of(connection)} {kind(message)}"] += 1
            call_tu(self, method, message, connection)

        layer.receive, layer._call_tu = counted_receive, counted_call_tu

    def patch_server_transaction(module: Any) -> None:
        transaction = module.ServerTransaction
        receive_request = transaction.receive_request

        def counted(self: Any, request: Any, connection: Any) -> None:
            counts[f"absorbed by server transaction {transport_of(connection)} {request.method}"] += 1
            receive_request(self, request, connection)

        transaction.receive_request = counted

    def count_sends(class_name: str, method_name: str, transport: str) -> Callable[[Any], None]:
        """A patch counting what ``class_name.method_name`` (bytes already serialised) sends."""

        def patch(module: Any) -> None:
            cls = getattr(module, class_name)
            send = getattr(cls, method_name)

            def counted(self: Any, data: bytes) -> None:
                counts[f"sip out {transport} {first_word(data)}"] += 1
                send(self, data)

            setattr(cls, method_name, counted)

        return patch

    def patch_ice(module: Any) -> None:
        socket = module._StunSocket
        received, send_stun = socket.datagram_received, socket.send_stun

        def counted_received(self: Any, data: Any, addr: Any) -> None:
            data_bytes = bytes(data)
            if module.is_stun(data_bytes):
                counts[f"stun in {'request' if data_bytes[0] == 0 and data_bytes[1] == 1 else 'response'}"] += 1
                if getattr(self.receiver, "_closing", False):
                    counts["stun in while the agent closes (dropped before parsing)"] += 1
            else:
                counts["non-stun datagram in (ICE socket)"] += 1
            received(self, data, addr)

        def counted_send(self: Any, message: Any, addr: Any, *wire: Any) -> None:
            counts[f"stun out {message.message_class.name.lower()}"] += 1
            send_stun(self, message, addr, *wire)

        socket.datagram_received, socket.send_stun = counted_received, counted_send

    def patch_replay(module: Any) -> None:
        replay = module.StatelessReplays.replay

        def counted(self: Any, raw: bytes, source: Any) -> bool:
            done = replay(self, raw, source)
            if done:
                counts[f"replayed unparsed {first_word(raw)}"] += 1
            return done

        module.StatelessReplays.replay = counted

    patches: dict[str, Callable[[Any], None]] = {
        "epcscf.sip.replay": patch_replay,
        "epcscf.sip.transaction": patch_transaction,
        "epcscf.sip.transaction_server": patch_server_transaction,
        "epcscf.sip.transport_udp": count_sends("UdpConnection", "send_bytes", "udp"),
        "epcscf.ws.connection": count_sends("WsConnection", "send_raw", "ws"),
        "epcscf.ice.host_socket": patch_ice,
    }

    class PatchAfterImport(importlib.abc.MetaPathFinder):
        """Wraps the loader of each module named in ``patches`` so that its patch runs once it is loaded."""

        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name not in patches:
                return None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
                if spec is not None:
                    exec_module = spec.loader.exec_module
                    patch = patches.pop(name)

                    def exec_and_patch(module: Any, exec_module: Any = exec_module, patch: Any = patch) -> None:
                        exec_module(module)
                        patch(module)

                    spec.loader.exec_module = exec_and_patch
                    return spec
            return None

    sys.meta_path.insert(0, PatchAfterImport())

    def write(signum: int, frame: Any) -> None:
        path = os.path.join(_DIRECTORY or ".", f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as handle:
            json.dump(dict(counts), handle)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, write)


if _DIRECTORY and _IS_EDGE:
    _install()
