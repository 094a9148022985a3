"""Jobs on Ray actors (a real local cluster on loopback): the side networks equal those trained in one process,
through two front ends, and also when an actor is killed mid-training."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from servers import CuttingProxy, ThreadServer, device_setup, start_server  # noqa: E402

import mobillm  # noqa: E402
from mobillm.device.client import stream  # noqa: E402
from mobillm.server.manager import SessionManager  # noqa: E402
from mobillm.server.ray_manager import RayManager  # noqa: E402
from mobillm.train_config import TrainConfig  # noqa: E402

JOBS, SAMPLES, BATCH, EPOCHS = 4, 128, 8, 6
BATCHES = SAMPLES // BATCH


@pytest.fixture(scope="module")
def cluster():
    """Two CPUs on loopback; the actors import this checkout's mobillm, as the test process does."""
    src = str(Path(mobillm.__file__).resolve().parents[1])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture
def namespace(cluster):
    """A namespace of its own for each test; its actors are stopped after it (each holds one of the two CPUs)."""
    name = uuid.uuid4().hex
    yield name
    for actor in ("registry", "actor-0", "actor-1"):
        ray.kill(ray.get_actor(actor, namespace=name))


def run_devices(toy_task, ports: list[int], **options) -> list[tuple]:
    """Job ``job{i}`` (seed i) from device i to ``ports[i % len(ports)]``, all at once; each (SideNet frame, stats)."""
    model_dir, data_dir = toy_task

    async def device(i: int):
        hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=SAMPLES)
        config = TrainConfig(method="side", epochs=EPOCHS, batch_size=BATCH, patience=EPOCHS, seed=i)
        h = hello.model_copy(update={"job": f"job{i}", "train_config": config})
        return await stream(f"ws://127.0.0.1:{ports[i % len(ports)]}", h, backbone, codec, batcher, data.train,
                            data.validation, batch_size=BATCH, seed=i, pivot=True, backoff=0.1, **options)

    async def main():
        return await asyncio.gather(*(device(i) for i in range(JOBS)))

    return asyncio.run(main())


@pytest.fixture(scope="module")
def reference(toy_task, tmp_path_factory) -> list:
    """The jobs' side networks trained by the in-process session manager, on one thread per operation as in
    each actor (Ray gives an actor of one CPU one thread): sums split over other thread counts round otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        server = ThreadServer(SessionManager(tmp_path_factory.mktemp("jobs")), window=4)
        return [frame for frame, _ in run_devices(toy_task, [server.port])]
    finally:
        torch.set_num_threads(threads)


def assert_equal_side_networks(frames: list, reference: list) -> None:
    for frame, expected in zip(frames, reference):
        assert frame.header.step == expected.header.step == EPOCHS * BATCHES
        assert frame.tensors.keys() == expected.tensors.keys()
        assert all(torch.equal(frame.tensors[k], expected.tensors[k]) for k in expected.tensors)
        assert frame.header.eval_predictions == expected.header.eval_predictions


def events(jobs_dir: Path, job: str) -> list[dict]:
    """The job's metrics records so far (a line still being appended is left out)."""
    path = jobs_dir / job / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def front_end(jobs_dir: Path, namespace: str) -> int:
    """A front end in this process on the namespace's two actors; its port."""
    return ThreadServer(RayManager("auto", jobs_dir, actors=2, namespace=namespace), window=4).port


def test_jobs_on_two_actors_behind_two_front_ends_equal_the_in_process_ones(namespace, toy_task, reference, tmp_path):
    """Two front ends on one cluster, as behind a load balancer: one in this process, one `mobillm serve --ray`
    process. Each device's connection is cut once and comes back through the *other* front end, which finds
    the job live on its actor (no restore from disk)."""
    jobs_dir = tmp_path / "jobs"
    a = front_end(jobs_dir, namespace)
    server, b = start_server(jobs_dir, "--no-auth", "--ray", ray.get_runtime_context().gcs_address, "--ray-actors", "2",
                             "--ray-namespace", namespace)
    try:
        proxies = [CuttingProxy([a, b] if i % 2 else [b, a], cuts=1, after=20_000) for i in range(JOBS)]
        results = run_devices(toy_task, [p.port for p in proxies])
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert_equal_side_networks([frame for frame, _ in results], reference)
    assert [stats.reconnects for _, stats in results] == [1] * JOBS
    assert all(p.connections == 2 for p in proxies)
    for i in range(JOBS):
        assert not any(e.get("event") == "resumed" for e in events(jobs_dir, f"job{i}"))
    held = [ray.get(ray.get_actor(f"actor-{slot}", namespace=namespace).jobs.remote()) for slot in range(2)]
    assert sorted(len(jobs) for jobs in held) == [2, 2]  # least-loaded placement: two jobs per actor
    assert all(all(finished.values()) for finished in held)
    # Any front end's status page sees every job of the namespace, on whichever actor.
    status = RayManager("auto", jobs_dir, actors=2, namespace=namespace).status()
    assert [(j.job, j.state, j.step) for j in status] == [(f"job{i}", "finished", EPOCHS * BATCHES) for i in range(JOBS)]


@pytest.mark.parametrize("restart", [False, True], ids=["replaced", "restarted"])
def test_jobs_of_a_killed_actor_resume_from_their_checkpoints_and_end_equal(namespace, toy_task, reference, tmp_path, restart):
    """``ray.kill`` one actor in its jobs' second epoch: Ray restarts it (``restart``) or the registry starts a
    new one; its devices reconnect, the jobs restore from disk and every job ends as without the kill."""
    jobs_dir = tmp_path / "jobs"
    ports = [front_end(jobs_dir, namespace) for _ in range(2)]
    registry = ray.get_actor("registry", namespace=namespace)
    outcome: dict = {}

    def kill_mid_training() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if max((e.get("step", 0) for e in events(jobs_dir, "job0")), default=0) >= BATCHES + 4:  # past its 1st checkpoint
                actor = ray.get(registry.actor_for.remote("job0"))
                outcome["victims"] = set(ray.get(actor.jobs.remote()))
                ray.kill(actor, no_restart=not restart)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_mid_training)
    killer.start()
    results = run_devices(toy_task, ports)
    killer.join()

    assert "victims" in outcome, "job0 never reached its second epoch"
    victims = outcome["victims"]
    assert "job0" in victims and len(victims) == 2
    assert [e for e in events(jobs_dir, "job0") if e.get("event") == "resumed"][0]["from_epoch"] >= 1  # a checkpoint
    assert_equal_side_networks([frame for frame, _ in results], reference)
    for i, (_, stats) in enumerate(results):
        resumed = [e for e in events(jobs_dir, f"job{i}") if e.get("event") == "resumed"]
        if f"job{i}" in victims:
            assert stats.reconnects >= 1 and len(resumed) == 1 and resumed[0]["from_epoch"] < EPOCHS
        else:
            assert stats.reconnects == 0 and not resumed
