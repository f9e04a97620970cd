"""Top functions of a py-spy profile (``py-spy record --format raw``: collapsed stacks).

Usage: ``.venv/bin/python benchmarks/spy_top.py FILE [--top 20] [--ops N]``

Prints, per function (file:name), the share of samples where it is on top of the stack (self)
and anywhere on it (inclusive); with ``--ops`` also microseconds per operation, given the
sampling rate (``--rate``, 250/s as ``benchmarks/ws_register.py`` samples).  Idle samples (the
event loop waiting in ``epoll``) are counted apart.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterator

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "python3.11/", "epcscf/"):
        if marker in path:
            path = ("epcscf/" if marker == "epcscf/" else "") + path.split(marker, 1)[1]
            break
    return f"{path}:{match.group('name')}"


def read_stacks(path: str) -> Iterator[tuple[list[str], int]]:
    """(frames outermost first, as ``frame_key``s; samples) per line of a collapsed-stack file;
    an idle sample (the event loop waiting in ``epoll``) comes with no frames."""
    with open(path) as handle:
        for line in handle:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = [frame_key(f) for f in stack.split(";") if f]
            idle = bool(frames) and "select" in frames[-1] and "selectors" in frames[-1]
            yield ([] if idle else frames), int(count_text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--ops", type=int, default=0, help="operations in the sampled period")
    parser.add_argument("--rate", type=int, default=250)
    options = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for frames, count in read_stacks(options.file):
        if not frames:
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for key in set(frames):
            inclusive[key] += count
    print(f"{total} busy samples, {idle} idle")
    per_op = 1e6 / options.rate / options.ops if options.ops else 0.0
    header = "self %   incl %" + ("   self µs/op  incl µs/op" if per_op else "") + "   function"
    print(header)
    for key, count in own.most_common(options.top):
        row = f"{100 * count / total:6.1f}   {100 * inclusive[key] / total:6.1f}"
        if per_op:
            row += f"   {count * per_op:10.1f}  {inclusive[key] * per_op:10.1f}"
        print(f"{row}   {key}")


if __name__ == "__main__":
    main()
