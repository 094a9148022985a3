"""What the server tells its operator: a typed snapshot of every job (served by :mod:`mobillm.server.endpoints`).

:class:`JobStatus` is the contract between the front end and a :class:`~mobillm.server.manager.SessionManager`
back end: ``SessionManager.status()`` returns one per job (in-process here; a cluster back end builds the same
models where its jobs live). The front end adds what only it sees (open sessions, refused sessions) into a
:class:`ServerStatus`: ``/status.json``, and what the page and ``/metrics`` draw from.
"""

from __future__ import annotations

import bisect
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

# Upper bounds (seconds) of the latency histograms: training steps and acks, from a toy model's 1 ms upwards.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CURVES = ("loss", "val_accuracy", "val_loss")  # metrics.jsonl fields a job follows in memory for the page's charts

JobState = Literal["waiting", "training", "finished", "failed"]


class Durations(BaseModel):
    """A histogram of durations: ``counts[i]`` took at most ``bounds[i]`` seconds (and more than the bound
    before it); the last count is those above every bound. Prometheus' buckets are its running sums."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_seconds += seconds


class SessionError(BaseModel):
    """An ``Error`` the server answered a session with, or a handshake it refused (code ``auth``)."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    job: str | None = None  # the job the session was for, when known
    time: float  # Unix seconds


class JobStatus(BaseModel):
    """One job as the operator sees it. ``sessions`` and ``last_error`` are the front end's: a back end leaves
    them at their defaults."""

    model_config = ConfigDict(frozen=True)

    job: str
    state: JobState
    task: str
    model: str
    codec: str
    batches_received: int  # distinct batches held (a resent one counts once)
    samples_received: dict[str, int]  # by split: train (every device epoch), eval
    train_samples: int  # the training set's size, as the Hello announced it
    samples_trained: int
    step: int
    steps_per_epoch: int
    epochs: int
    bytes_received: int  # of the batches held
    cache_memory_bytes: int
    cache_disk_bytes: int
    elapsed_s: float  # since the job started, until it ended
    last_loss: float | None
    curves: dict[str, list[tuple[int, float]]]  # (step, value) of the fields in CURVES, thinned (metrics.Curve)
    train_step_seconds: Durations
    failure: str | None = None  # why training failed
    sessions: int = 0  # open device sessions
    last_error: SessionError | None = None

    @computed_field
    @property
    def epoch(self) -> float:
        """Epochs trained so far (fractional)."""
        return self.step / self.steps_per_epoch if self.steps_per_epoch else 0.0

    @computed_field
    @property
    def samples_per_s(self) -> float:
        """Training throughput over the job's life."""
        return self.samples_trained / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @computed_field
    @property
    def bytes_per_s(self) -> float:
        """Batch bytes received per second over the job's life."""
        return self.bytes_received / self.elapsed_s if self.elapsed_s > 0 else 0.0


class ServerStatus(BaseModel):
    """``/status.json``: the server and every job it holds."""

    model_config = ConfigDict(frozen=True)

    version: str
    uptime_s: float
    sessions: int
    max_sessions: int
    jobs: list[JobStatus]
    last_error: SessionError | None = None

