"""Jobs on a Ray cluster, behind the same seam as :class:`~mobillm.server.manager.SessionManager`.

Each job's side network, optimizer and activation cache live in a :class:`JobActor` (one Ray actor holds
many jobs; it is a ``SessionManager`` driven by remote calls). Everything lives in one Ray namespace, named
and detached, so that several front ends behind a load balancer find the same actors:

- ``registry`` (:class:`JobRegistry`): which actor holds which job. A job's first ``open`` places it on the
  actor with the fewest unfinished jobs; the placement is remembered. It spawns the actors, and replaces one
  that died for good.
- ``actor-0`` … ``actor-{N-1}``: restarted by Ray when their process dies.

Device bytes reach an actor as bytes and are decoded there by :func:`~mobillm.wire.messages.decode_message`;
nothing a device sent is ever unpickled. Ray pickles only what our own processes hand each other (the
validated ``Hello``, ``Ack``, our exceptions).

When an actor dies, every call on it fails; the front end closes those devices' connections (``JobLost``),
they reconnect with ``resume``, the registry hands each job to the restarted or replacement actor, and
``SessionManager.open`` restores it from the job directory (every batch written before its ack, the last
epoch checkpoint); the devices resend what the cache lacks. So the job directory must be on storage every
node reads at the same path (NFS, for one).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mobillm.exceptions import ConfigError, JobLost
from mobillm.server.manager import SessionManager
from mobillm.server.sessions import LocalSession
from mobillm.server.status import JobStatus
from mobillm.wire.messages import Ack, Frame, Hello, decode_message

try:
    import ray
    from ray.exceptions import (
        ActorDiedError,
        ActorUnavailableError,
        GetTimeoutError,
        RayActorError,
        RayTaskError,
    )
except ImportError as err:  # the CLI reports it; without --ray this module is never imported
    raise ConfigError("--ray needs Ray, an optional extra: pip install 'mobillm[ray]'") from err

DEFAULT_NAMESPACE = "mobillm"
REGISTRY_NAME = "registry"
RETRY_DELAY = 0.5  # seconds between tries while an actor restarts
ACTOR_ATTEMPTS = 120  # tries before an actor that keeps failing is given up
ACTOR_TIMEOUT = 60.0  # seconds for an actor to answer, starting included (it imports torch, loads a model head)
STATUS_TIMEOUT = 5.0  # seconds an actor has to report its jobs to the status page


@dataclass(frozen=True)
class ClusterSettings:
    """What every front end of a namespace must agree on; the first one to start fixes it."""

    jobs_dir: str  # absolute, the same on every node
    actors: int
    cache_memory_bytes: int
    cache_limit_bytes: int | None
    device: str = "auto"  # in each actor: CUDA when Ray gave it a GPU (its reserved fraction), else the CPU


def share(total: float, actors: int) -> float:
    """Each actor's share of a resource: a whole unit when there are enough, else an equal fraction (Ray
    counts resources to 1/10,000)."""
    return min(1.0, math.floor(10_000 * total / actors) / 10_000)


@contextmanager
def actor_errors(job: str):
    """Turn Ray's failures into ours: a dead or restarting actor is ``JobLost``; an error the actor raised
    (``ProtocolError`` …) is re-raised as itself."""
    try:
        yield
    except RayActorError as err:
        raise JobLost(f"the actor holding job {job!r} is gone ({type(err).__name__})") from None
    except RayTaskError as err:
        raise err.cause from None


@ray.remote
class JobActor:
    """Many jobs in one process: a ``SessionManager`` with the cluster's settings, one call per message."""

    def __init__(self, settings: ClusterSettings):
        self.manager = SessionManager(
            settings.jobs_dir, settings.cache_memory_bytes, cache_limit_bytes=settings.cache_limit_bytes,
            device=settings.device,
        )

    def _session(self, job: str) -> LocalSession:
        if job not in self.manager.jobs:
            raise JobLost(f"job {job!r} is not on this actor (it was restarted)")
        return LocalSession(self.manager.jobs[job])

    async def open(self, hello: Hello) -> tuple[int, int]:
        """Attach to or start (or restore from disk) the job; its ``(last_seq, step)`` for the Welcome."""
        session = await asyncio.to_thread(self.manager.open, hello)
        return session.last_seq, session.step

    async def receive(self, job: str, data: bytes) -> Ack:
        return await self._session(job).receive(data, decode_message(data))

    async def device_done(self, job: str, epoch: int) -> None:
        await self._session(job).device_done(epoch)

    async def side_net(self, job: str) -> bytes:
        return await self._session(job).side_net()

    async def status(self) -> list[JobStatus]:
        return self.manager.status()

    async def jobs(self) -> dict[str, bool]:
        """The jobs held here, each with whether its training has ended."""
        jobs = dict(self.manager.jobs)  # a copy in one step: an open on a thread may add a job meanwhile
        return {name: job.wait(0) for name, job in jobs.items()}


@ray.remote
class JobRegistry:
    """Job → actor, for every front end of the namespace. A restarted registry learns the placement back
    from what the actors hold."""

    def __init__(self, settings: ClusterSettings, namespace: str, resources: dict[str, float]):
        self.settings, self.namespace, self.resources = settings, namespace, resources
        self.actors = [self._spawn(slot) for slot in range(settings.actors)]
        self.placement: dict[str, int] | None = None
        self.lock = asyncio.Lock()

    def _spawn(self, slot: int):
        """The slot's actor: the live one of that name, or a new one (SPREAD: over the nodes)."""
        return JobActor.options(
            name=f"actor-{slot}", namespace=self.namespace, get_if_exists=True, lifetime="detached",
            max_restarts=-1, scheduling_strategy="SPREAD", **self.resources,
        ).remote(self.settings)

    async def cluster_settings(self) -> ClusterSettings:
        return self.settings

    async def all_actors(self) -> list:
        return self.actors

    async def _held(self, slot: int) -> dict[str, bool]:
        """What the slot's actor holds; an actor dead for good is replaced, a restarting one waited for."""
        for attempt in range(ACTOR_ATTEMPTS):
            if attempt:  # a replacement may find the dead actor's name not yet free: give Ray a moment
                await asyncio.sleep(RETRY_DELAY)
            try:
                return await asyncio.wait_for(self.actors[slot].jobs.remote(), ACTOR_TIMEOUT)
            except TimeoutError:
                raise JobLost(f"actor-{slot} did not answer within {ACTOR_TIMEOUT:g} s: does the cluster have the "
                              f"share it reserves ({self.resources}) besides what other namespaces hold?") from None
            except ActorDiedError:
                logging.getLogger("mobillm.server").warning("actor-%d died; starting a new one", slot)
                self.actors[slot] = self._spawn(slot)
            except ActorUnavailableError:
                pass  # restarting: ask again
        raise JobLost(f"actor-{slot} keeps failing")

    async def actor_for(self, job: str):
        """The actor that holds ``job``; on its first open, the one with the fewest unfinished jobs."""
        async with self.lock:
            held = await asyncio.gather(*(self._held(slot) for slot in range(len(self.actors))))
            if self.placement is None:
                self.placement = {name: slot for slot, names in enumerate(held) for name in names}
            if job not in self.placement:
                def load(slot: int) -> int:
                    return sum(s == slot and not held[slot].get(name, False) for name, s in self.placement.items())

                self.placement[job] = min(range(len(self.actors)), key=load)
            return self.actors[self.placement[job]]


class RaySession:
    """A job held by a :class:`JobActor`; each call is one actor call, awaited on the front end's loop."""

    def __init__(self, actor, job: str, last_seq: int, step: int):
        self.actor, self.job, self.last_seq, self.step = actor, job, last_seq, step

    async def receive(self, data: bytes, frame: Frame) -> Ack:
        """``frame`` stays here: the actor decodes the very bytes the device sent."""
        with actor_errors(self.job):
            return await self.actor.receive.remote(self.job, data)

    async def device_done(self, epoch: int) -> None:
        with actor_errors(self.job):
            await self.actor.device_done.remote(self.job, epoch)

    async def side_net(self) -> bytes:
        with actor_errors(self.job):
            return await self.actor.side_net.remote(self.job)


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``auto``: the one running on this machine), or with ``local`` start
    a private one for this process. Nothing to do when this process already joined one."""
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster ({err}); start one with "
                          "'ray start --head', or use --ray local for a private one") from None


class RayManager:
    """The ``Sessions`` of a Ray cluster: jobs placed on ``actors`` :class:`JobActor` s (default: one per GPU
    the cluster has, at least one), each reserving an equal share of the cluster's CPUs and GPUs.

    ``open_timeout``: how long ``open`` keeps trying while the job's actor restarts."""

    def __init__(
        self, address: str, jobs_dir: str | Path, actors: int | None = None, cache_memory_bytes: int = 2 << 30,
        cache_limit_bytes: int | None = None, namespace: str = DEFAULT_NAMESPACE, open_timeout: float = 60.0,
        device: str = "auto",
    ):
        if actors is not None and actors < 1:
            raise ConfigError(f"--ray-actors must be at least 1, got {actors}")
        connect(address)
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        actors = actors or max(1, int(gpus))
        if device.strip().lower().startswith("cuda") and not gpus:
            raise ConfigError(f"--device {device}: the Ray cluster has no GPUs for its actors; pass --device cpu or auto")
        self.settings = ClusterSettings(str(Path(jobs_dir).resolve()), actors, cache_memory_bytes, cache_limit_bytes, device)
        self.namespace, self.open_timeout = namespace, open_timeout
        self.resources = {"num_cpus": share(resources.get("CPU", 0.0), actors), "num_gpus": share(gpus, actors)}
        self._join()

    def _join(self) -> None:
        """Find the namespace's registry, or start it; refuse to join one set up otherwise."""
        self.registry = JobRegistry.options(
            name=REGISTRY_NAME, namespace=self.namespace, get_if_exists=True, lifetime="detached", max_restarts=-1,
            num_cpus=0,
        ).remote(self.settings, self.namespace, self.resources)
        held = ray.get(self.registry.cluster_settings.remote())
        if held != self.settings:
            raise ConfigError(
                f"Ray namespace {self.namespace!r} already serves jobs as {held}, not {self.settings}: start this front "
                "end with the same --jobs-dir, --ray-actors and cache options, or with another --ray-namespace"
            )

    def open(self, hello: Hello) -> RaySession:
        """Route to the job's actor and open it there; while that actor restarts, try again."""
        deadline = time.monotonic() + self.open_timeout
        while True:
            try:
                with actor_errors(hello.job):
                    actor = ray.get(self.registry.actor_for.remote(hello.job))
                    last_seq, step = ray.get(actor.open.remote(hello))
                return RaySession(actor, hello.job, last_seq, step)
            except JobLost:
                if time.monotonic() > deadline:
                    raise
                time.sleep(RETRY_DELAY)
                self._join()  # the registry itself may be the one that died

    def status(self) -> list[JobStatus]:
        """Every job on the namespace's actors, whichever front end opened it; an actor that is down or slow
        to answer is left out of this snapshot."""
        jobs: list[JobStatus] = []
        for ref in [actor.status.remote() for actor in ray.get(self.registry.all_actors.remote())]:
            try:
                jobs += ray.get(ref, timeout=STATUS_TIMEOUT)
            except (RayActorError, GetTimeoutError):
                continue
        return sorted(jobs, key=lambda job: job.job)
