"""Prometheus metrics of one server, served at ``/metrics`` (see :mod:`mobillm.server.status`).

Each :class:`ServerMetrics` has a registry of its own, so several servers in one process (tests) never share
a series. The front end counts what passes through it (sessions, batches, bytes, acks, errors); the jobs'
figures (cache bytes, training steps) are read from ``SessionManager.status()`` at each scrape, so any back
end that implements that method is exported the same way.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mobillm.server.status import LATENCY_BUCKETS, Durations, JobState, JobStatus
from mobillm.wire.errors import ErrorCode


class ServerMetrics:
    """``sessions``: the number of open sessions (read at each scrape); ``jobs``: the back end's snapshot."""

    def __init__(self, sessions: Callable[[], int], jobs: Callable[[], list[JobStatus]]):
        self.registry = CollectorRegistry()
        Gauge("mobillm_sessions", "Open device sessions", registry=self.registry).set_function(sessions)
        self.batches_received = Counter(
            "mobillm_batches_received", "Batch messages received, by split (resends and refused ones included)",
            ["split"], registry=self.registry,
        )
        self.received_bytes = Counter(
            "mobillm_received_bytes", "Bytes of every message received from devices", registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "mobillm_ack_seconds", "Time from receiving a Batch to sending its Ack", buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "mobillm_errors", "Sessions answered with an Error, and handshakes refused (auth), by error code",
            ["code"], registry=self.registry,
        )
        for split in ("train", "eval"):  # every series exists from the start, at 0
            self.batches_received.labels(split)
        for code in ErrorCode:
            self.errors.labels(code)
        self.registry.register(_JobsCollector(jobs))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (reads the jobs' snapshot: may block)."""
        return generate_latest(self.registry)


class _JobsCollector(Collector):
    """The jobs' figures, summed over jobs, from their snapshot at scrape time."""

    def __init__(self, jobs: Callable[[], list[JobStatus]]):
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        jobs = self.jobs()
        states = GaugeMetricFamily("mobillm_jobs", "Jobs held, by state", labels=["state"])
        for state in get_args(JobState):
            states.add_metric([state], sum(j.state == state for j in jobs))
        cache = GaugeMetricFamily("mobillm_cache_bytes", "Activation cache of every job, by tier", labels=["tier"])
        cache.add_metric(["memory"], sum(j.cache_memory_bytes for j in jobs))
        cache.add_metric(["disk"], sum(j.cache_disk_bytes for j in jobs))  # every entry is on disk
        steps = _merged(jobs)
        counts = list(itertools.accumulate(steps.counts))  # Prometheus buckets are cumulative
        yield states
        yield cache
        yield HistogramMetricFamily(
            "mobillm_train_step_seconds", "Time of one training step (cache read, decode, forward, backward, update)",
            buckets=[(floatToGoString(b), c) for b, c in zip((*steps.bounds, float("inf")), counts)],
            sum_value=steps.total_seconds,
        )


def _merged(jobs: list[JobStatus]) -> Durations:
    """One histogram of every job's training steps."""
    merged = Durations()
    for job in jobs:
        steps = job.train_step_seconds
        if steps.bounds != merged.bounds:
            raise ValueError(f"job {job.job!r}: train_step_seconds has bounds {steps.bounds}, not LATENCY_BUCKETS")
        merged.counts = [a + b for a, b in zip(merged.counts, steps.counts)]
        merged.total_seconds += steps.total_seconds
    return merged
