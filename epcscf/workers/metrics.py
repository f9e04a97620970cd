"""One ``/metrics`` for all workers: the supervisor collects each worker's exposition.

Why collect over AMP rather than prometheus-client's multiprocess mode: that mode shares a
directory of memory-mapped files between the processes (the shared state the workers are
built without), cannot express the gauges read from the live node at scrape time
(``LiveStateCollector``), and leaves a dead worker's files to clean up.  Here each worker
renders its own registry when asked (``control.Scrape``); the supervisor adds a
``worker="N"`` label to every sample (its own figures carry ``worker="supervisor"``) and
writes each family once, so the page is one consistent exposition.  A worker that does
not answer within ``epcscf.workers.pool.ASK_TIMEOUT`` is left out of that scrape and ``epcscf_workers_answering``
says so.
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from epcscf.workers import control

log = Logger(namespace="epcscf.workers.metrics")


class Family:
    def __init__(self) -> None:
        self.header: list[str] = []
        self.samples: list[str] = []


def _labelled(line: str, worker: str) -> str:
    """``name{a="b"} 1`` → ``name{worker="N",a="b"} 1``; ``name 1`` → ``name{worker="N"} 1``."""
    cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
    label = f'worker="{worker}"'
    if line.startswith('worker="', cut + 1) or f',worker="' in line:
        return line  # the supervisor's own per-worker figures (restarts) name the worker already
    if cut < len(line) and line[cut] == "{":
        rest = line[cut + 1 :]
        return f"{line[:cut]}{{{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{line[:cut]}{{{label}}}{line[cut:]}"


def merge_expositions(expositions: Iterable[tuple[str, str]]) -> str:
    """(worker label, text exposition 0.0.4) pairs → one exposition, each family once."""
    families: dict[str, Family] = {}
    for worker, text in expositions:
        family: Family | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                family = families.setdefault(name, Family())
                if len(family.header) < 2 and line not in family.header:
                    family.header.append(line)
                continue
            if line.startswith("#") or family is None:
                continue
            family.samples.append(_labelled(line, worker))
    lines: list[str] = []
    for family in families.values():
        lines += family.header + family.samples
    return "\n".join(lines) + "\n"


class SupervisorMetrics:
    """The supervisor's own figures: restarts and running workers (and its process)."""

    def __init__(self, running: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.restarts = Counter(
            "epcscf_worker_restarts", "worker processes that died and were started again, by worker", ["worker"],
            registry=self.registry,
        )
        workers = Gauge("epcscf_workers_running", "worker processes running and ready", registry=self.registry)
        workers.set_function(lambda: float(running()))
        self.answering = Gauge("epcscf_workers_answering", "workers whose figures are in this scrape", registry=self.registry)
        ProcessCollector(registry=self.registry)

    def restarted(self, index: int, reason: str) -> None:
        self.restarts.labels(str(index)).inc()


class QuietSite(Site):
    """No access-log line per scrape, no "Starting factory" line (as ``epcscf.ops.metrics``'s site)."""

    noisy = False

    def log(self, request: Request) -> None:
        pass


class MergedMetricsPage(Resource):
    """``GET /metrics`` in the supervisor: every worker's figures and its own, merged."""

    isLeaf = True

    def __init__(self, pool: Any, metrics: SupervisorMetrics, reactor: Any) -> None:
        super().__init__()
        self.pool = pool
        self.metrics = metrics
        self.reactor = reactor

    def render_GET(self, request: Request) -> Any:  # noqa: N802
        scraping = self.pool.ask(control.Scrape)  # each worker's answer bounded by ASK_TIMEOUT
        scraping.addErrback(lambda failure: [])
        scraping.addCallback(self._write, request)
        return NOT_DONE_YET

    def _write(self, answers: list[tuple[int, Any]], request: Request) -> None:
        expositions = [(str(index), answer["exposition"]) for index, answer in answers if answer is not None]
        self.metrics.answering.set(len(expositions))
        own = generate_latest(self.metrics.registry).decode("utf-8")
        body = merge_expositions([("supervisor", own)] + expositions).encode("utf-8")
        if request.channel is None:  # the scraper went away
            return
        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        request.write(body)
        request.finish()


def scrape_once(pool: Any, metrics: SupervisorMetrics) -> defer.Deferred:
    """The merged exposition as text (for the console and tests)."""

    def merge(answers: list[tuple[int, Any]]) -> str:
        own = generate_latest(metrics.registry).decode("utf-8")
        return merge_expositions([("supervisor", own)] + [(str(i), a["exposition"]) for i, a in answers if a is not None])

    return pool.ask(control.Scrape).addCallback(merge)
