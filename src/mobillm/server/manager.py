"""Where jobs live. v1 keeps them in this process; a cluster back end (Ray) plugs in behind the same seam."""

from __future__ import annotations

import threading
from pathlib import Path

from torch import nn

from mobillm.backbone import FrozenHead, decoder_layers, fingerprint, load_pretrained
from mobillm.exceptions import ConfigError, ModelLoadError, ProtocolError
from mobillm.server.job import Job
from mobillm.server.jobdir import JobDir
from mobillm.server.sessions import LocalSession
from mobillm.server.status import JobStatus
from mobillm.training.device import resolve_device
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import Hello
from mobillm.wire.session import hello_differences


class SessionManager:
    """Opens jobs on Hello: loads (once per model) the frozen head, checks the backbone fingerprint."""

    def __init__(
        self, jobs_dir: str | Path, cache_memory_bytes: int = 2 << 30, progress: bool = False,
        cache_limit_bytes: int | None = None, device: str = "auto",
    ):
        """``device``: where jobs train (``auto|cpu|cuda|cuda:N``, :func:`~mobillm.training.device.resolve_device`),
        resolved once here, so a bad value fails at start-up, not at the first Hello."""
        self.jobs_dir = Path(jobs_dir)
        self.cache_memory_bytes = cache_memory_bytes
        self.cache_limit_bytes = cache_limit_bytes  # per job, memory + disk; None: unlimited
        self.device = resolve_device(device)
        self.progress = progress
        self.jobs: dict[str, Job] = {}
        self._heads: dict[str, tuple[FrozenHead, str]] = {}
        self._layers: dict[str, nn.ModuleList] = {}
        self._lock = threading.Lock()

    def head(self, model: str) -> tuple[FrozenHead, str]:
        """The frozen final norm + LM head of a public checkpoint, and its fingerprint (the rest is dropped unless
        :meth:`layers` asks for it)."""
        with self._lock:
            if model not in self._heads:
                self._load(model, keep_layers=False)
            return self._heads[model]

    def layers(self, model: str) -> nn.ModuleList:
        """The decoder layers of a public checkpoint, which side networks with ``init == "backbone"`` are copied
        from (``sidenet.init``). Kept once a job asked for them: they are the bulk of the model."""
        with self._lock:
            if model not in self._layers:
                self._load(model, keep_layers=True)
            return self._layers[model]

    def _load(self, model: str, keep_layers: bool) -> None:
        try:
            backbone, _ = load_pretrained(model)
        except ModelLoadError as err:
            raise ProtocolError(ErrorCode.UNKNOWN_MODEL, f"the server cannot load model {model!r}: {err}") from None
        self._heads[model] = (FrozenHead.from_model(backbone), fingerprint(backbone))
        if keep_layers:
            self._layers[model] = decoder_layers(backbone)

    def open(self, hello: Hello) -> LocalSession:
        """Attach to a job of that name, or start it (blocking: may load a model).

        ``Hello.resume`` (a device reconnecting) attaches to the running job, or restores the one a previous
        server process left on disk. Without it a finished job of that name is started afresh, and a running
        one is refused.
        """
        layers = self.layers(hello.model) if hello.side_config.init == "backbone" else None  # loads once, not twice
        head, expected = self.head(hello.model)
        if hello.fingerprint != expected:
            raise ProtocolError(ErrorCode.FINGERPRINT_MISMATCH, f"the device's backbone differs from the server's {hello.model!r}")
        with self._lock:
            job = self.jobs.get(hello.job)
            if job is not None:
                _same_config(job.hello, hello)
                if hello.resume:
                    return LocalSession(job)
                if not job.wait(0):
                    raise ProtocolError(ErrorCode.BAD_HEADER, f"job {hello.job!r} is running: a device resumes it with "
                                                      "the job state it kept (resume), any other uses another job name")
            stored = JobDir(self.jobs_dir / hello.job).stored_hello() if hello.resume else None
            resume = stored is not None
            if resume:
                _same_config(stored, hello)
            try:
                job = self.jobs[hello.job] = Job(
                    hello, head, self.jobs_dir / hello.job, self.cache_memory_bytes, self.progress, self.cache_limit_bytes,
                    resume=resume, device=self.device, layers=layers,
                )
            except ConfigError as err:  # a side config the backbone's layers cannot initialise (sidenet.init)
                raise ProtocolError(ErrorCode.BAD_HEADER, str(err)) from None
            return LocalSession(job)

    def status(self) -> list[JobStatus]:
        """Every job this process holds, by name: what the status page and /metrics show (any thread).

        Another back end implements the same method where its jobs live, returning the same models."""
        return [job.status() for _, job in sorted(self.jobs.copy().items())]


def _same_config(held: Hello, hello: Hello) -> None:
    """Refuse a Hello for a job held with another configuration, naming the fields that differ."""
    differ = hello_differences(held, hello)
    if differ:
        raise ProtocolError(ErrorCode.BAD_HEADER, f"job {hello.job!r} exists with another configuration ({', '.join(differ)} "
                                          "differ); connect with the same settings or use another job name")
