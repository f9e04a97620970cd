"""Synthetic: would a per-time-bucket store for lingering server transactions give arenas back
while the burst's other survivors stay (issue 14)?

Usage::

    .venv/bin/python benchmarks/lingering_store_arenas.py [--messages 200000] [--store objects|buckets]

One process plays a fuzz burst as ``benchmarks/fuzz.py`` left it in the edge (figures from its
``--probe`` owner tables, 200,000 mutants at 1,600/s, core out of the process): per message a
few KiB of garbage that dies within ~2,000 messages, a lingering server transaction for 1 in
20 messages (``--store objects``: ~16 small objects, ~1.2 KB, as ``ServerTransaction`` holds;
``--store buckets``: one packed record of the same bytes appended to a ``bytearray`` of its
second, dropped whole when its second is over, so what expires together is freed together;
``--store mmap-buckets``: the same in an anonymous mapping per second, unmapped whole),
and every 180 messages a record of 10 small objects that outlives the burst (the registrations,
ended calls, late-window calls, memos and client transactions, ~11,000 objects in all).  It
prints pymalloc's arenas and VmRSS before, at the end of the burst, 60 s later (each second's
transactions linger 128 s, Timer H/J/L at 64 × T1 = 2 s) and once all are gone ("+140 s").  Deterministic (no clock, no I/O); a few seconds.
"""

from __future__ import annotations

import argparse
import collections
import io
import mmap
import os
import re
import sys

RATE = 1600  # messages per second of the burst (fuzz.py --rate)
GARBAGE_WINDOW = 2000  # messages whose transient objects are alive at once
TRANSACTION_EVERY = 20
SURVIVOR_EVERY = 180
LINGER = 128  # seconds: 64 × T1 with the WIC side's T1 of 2 s (TS 24.229 §7.7)


def arenas() -> int:
    """pymalloc's arenas in use (``sys._debugmallocstats`` writes to C stderr)."""
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(write)
        os.close(saved)
    with io.open(read, "rb") as pipe:
        text = pipe.read().decode()
    return int(re.search(r"# arenas allocated current\s*=\s*([\d,]+)", text).group(1).replace(",", ""))


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def transaction_objects(number: int) -> list:
    """~16 objects, ~1.2 KB: the response's bytes, the identity's strings, tuples, a float."""
    tag = "%08d" % number
    return [b"SIP/2.0 200 OK\r\n" + tag.encode() * 30, "z9hG4bK" + tag, "127.0.0.1:5060" + tag, "call-" + tag * 3,
            "from-" + tag, ("z9hG4bK" + tag, "INVITE"), ("call-" + tag, "from-" + tag, 1), float(number), [number],
            {"state": number}, (number, number + 1), "to-" + tag, [tag], (tag,), str(number) * 3, (float(number), tag)]


def record_bytes(number: int) -> bytes:
    """The same transaction as one packed record (what a lingering record would keep)."""
    return b"SIP/2.0 200 OK\r\n" + (b"%08d" % number) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--store", choices=("objects", "buckets", "mmap-buckets"), default="objects",
                        help="buckets: a bytearray per second (malloc's heap); mmap-buckets: an anonymous mapping "
                        "per second, unmapped whole when it expires")
    options = parser.parse_args()
    baseline = [(str(i) * 3, i, [i]) for i in range(250_000)]  # the node's own ~34 arenas
    figures = {"before": (arenas(), rss_mib())}
    garbage: collections.deque = collections.deque()
    transactions: dict[int, list] = collections.defaultdict(list)  # by second of the burst
    buckets: dict[int, bytearray] = collections.defaultdict(bytearray)
    mapped: dict[int, list] = {}  # second → [mapping, bytes written]
    survivors = []

    def expire(second: int) -> None:
        transactions.pop(second, None)
        buckets.pop(second, None)
        if second in mapped:
            mapped.pop(second)[0].close()

    for number in range(options.messages):
        garbage.append([{"k%d" % j: "v" * (j * 7 % 90) for j in range(6)}, ["x" * (number % 300)] * 4, (number, str(number))])
        if len(garbage) > GARBAGE_WINDOW:
            garbage.popleft()
        second = number // RATE
        if number % RATE == 0:  # RFC 3261 §17.2.1 / RFC 6026: each second's transactions linger LINGER s
            expire(second - LINGER)
        if number % TRANSACTION_EVERY == 0:
            if options.store == "objects":
                transactions[second].append(transaction_objects(number))
            elif options.store == "buckets":
                buckets[second] += record_bytes(number)
            else:
                block = mapped.setdefault(second, [mmap.mmap(-1, 1 << 20), 0])  # pages count once written
                record = record_bytes(number)
                block[0][block[1]:block[1] + len(record)] = record
                block[1] += len(record)
        if number % SURVIVOR_EVERY == 0:
            survivors.append([str(number) * 2, (number,), float(number), [number], {"n": number}, "s" * 20, (1, number),
                              b"b" * 40, [str(number)], (str(number),)])
    garbage.clear()
    figures["end of the burst"] = (arenas(), rss_mib())
    last = options.messages // RATE
    for second in range(last - LINGER, last - LINGER + 61):
        expire(second)
    figures["+60 s"] = (arenas(), rss_mib())
    transactions.clear()
    buckets.clear()
    for block, _ in mapped.values():
        block.close()
    mapped.clear()
    figures["+140 s"] = (arenas(), rss_mib())
    print(f"store {options.store}, {options.messages:,} messages, {len(survivors) * 10:,} surviving objects")
    for moment, (count, rss) in figures.items():
        print(f"  {moment:<24} arenas {count:4d}   RSS {rss:7.1f} MiB")
    del baseline


if __name__ == "__main__":
    main()
