"""No lost data: a connection cut mid-stream is resumed, every sample is trained exactly once per epoch, and the
side network equals that of an uninterrupted run — also when the server process is killed, and when the device
process is (resumed from the job state it kept)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import make_hello
from safetensors.torch import load_file
from servers import CuttingProxy, StallingProxy, ThreadServer, device_setup, kill_when_stalled
from typer.testing import CliRunner
from webjs import WEB, node

from mobillm.cli import app
from mobillm.data import Example
from mobillm.device.client import stream
from mobillm.device.job_state import JobState, JobStateFile, SavedJob, examples_sha512
from mobillm.exceptions import ConfigError
from mobillm.files import JOB_STATE_NAME
from mobillm.ports import free_port
from mobillm.server.manager import SessionManager
from mobillm.train_config import TrainConfig


def test_a_stream_cut_three_times_trains_exactly_what_an_uninterrupted_one_does(toy_task, tmp_path):
    model_dir, data_dir = toy_task
    manager = SessionManager(tmp_path / "jobs")
    server = ThreadServer(manager, window=4)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=128)
    config = TrainConfig(method="side", epochs=3, batch_size=8, patience=5)
    run = dict(batch_size=8, seed=0, pivot=True, device_epochs=2)

    def job(name: str, port: int, **extra):
        h = hello.model_copy(update={"job": name, "train_config": config, "device_epochs": 2})
        return asyncio.run(stream(f"ws://127.0.0.1:{port}", h, backbone, codec, batcher, data.train, data.validation,
                                  **run, **extra))

    straight, straight_stats = job("straight", server.port)
    proxy = CuttingProxy([server.port], cuts=3, after=15_000)
    cut, cut_stats = job("cut", proxy.port, backoff=0.05)

    assert cut_stats.reconnects == 3 and proxy.connections == 4
    batches = 128 // 8
    for name in ("straight", "cut"):
        trained = manager.jobs[name]
        assert [len(seqs) for seqs in trained.feed.train_seqs] == [batches, batches]  # each batch once per device epoch
        assert trained.samples_trained == 3 * 128  # epochs 1-2 as sent, epoch 3 replayed from the cache
    assert cut.header.step == straight.header.step == 3 * batches
    assert cut.tensors.keys() == straight.tensors.keys()
    assert all(torch.equal(cut.tensors[k], straight.tensors[k]) for k in cut.tensors)
    assert cut.header.eval_predictions == straight.header.eval_predictions


def _serve(jobs_dir, port: int):
    import subprocess
    import sys

    server = subprocess.Popen(
        [sys.executable, "-m", "mobillm", "serve", "--port", str(port), "--jobs-dir", str(jobs_dir), "--window", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    while "listening on" not in server.stdout.readline():
        assert server.poll() is None, "the server did not start"
    return server


def test_a_server_killed_mid_training_resumes_from_its_checkpoint(toy_task, tmp_path):
    import json
    import signal
    import time

    from mobillm.server.auth import TokenStore

    model_dir, data_dir = toy_task
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=256)
    config = TrainConfig(method="side", epochs=8, batch_size=8, patience=8)
    batches = 256 // 8

    def run(job: str, port: int, outcome: dict) -> None:
        h = hello.model_copy(update={"job": job, "train_config": config})
        outcome["result"] = asyncio.run(stream(
            f"ws://127.0.0.1:{port}", h, backbone, codec, batcher, data.train, data.validation, batch_size=8, seed=0,
            pivot=True, token=tokens.create(job), reconnects=120, backoff=0.25,
        ))

    port = free_port()
    jobs = tmp_path / "jobs"
    tokens = TokenStore(jobs)
    server = _serve(jobs, port)
    try:
        straight: dict = {}
        run("straight", port, straight)

        killed: dict = {}
        device = threading.Thread(target=run, args=("killed", port, killed))
        device.start()
        metrics = jobs / "killed" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill once the job is past its first epoch checkpoint
            lines = metrics.read_text().split("\n")[:-1] if metrics.exists() else []  # not a line being appended
            steps = [json.loads(line).get("step", 0) for line in lines]
            if steps and max(steps) >= batches + 8:
                break
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait()
        server = _serve(jobs, port)
        device.join(timeout=240)
        assert not device.is_alive()
    finally:
        server.terminate()
        server.wait(timeout=30)

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    resumed = [r for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and 1 <= resumed[0]["from_epoch"] < config.num_epochs  # mid-training, from a checkpoint
    (frame, stats), (reference, _) = killed["result"], straight["result"]
    assert stats.reconnects >= 1
    assert frame.header.step == reference.header.step
    assert all(torch.equal(frame.tensors[k], reference.tensors[k]) for k in reference.tensors)
    assert frame.header.eval_predictions == reference.header.eval_predictions


# -- a device process stopped mid-job, started again on its job state (docs/protocol.md §6b) -----------------------
def test_the_job_state_resumes_the_same_job_only(tmp_path):
    """What the device keeps (``job_state.json``): saved once the job is welcomed, resumed when the job, its
    settings and its examples are the same (wherever the data file now is), refused otherwise with what changed
    and how to start afresh, removed when the job is finished."""
    train, validation = [Example("good fun", 1), Example("bad", 0)], [Example("ünïcode", 0)]

    def state(hello=None, data="data/d.tsv", settings=None, train=train) -> JobState:
        return JobState.of(hello or make_hello(), data, settings or {"max_length": 64, "noise": 0.0},
                           {"validation": validation, "train": train})

    store = JobStateFile(tmp_path)
    first = SavedJob(store, state())
    assert not first.resume and not store.path.exists()
    first.started()
    saved = json.loads((tmp_path / JOB_STATE_NAME).read_text())
    assert list(saved) == ["mobillm_version", "hello", "data", "settings", "data_sha512"]
    assert saved["hello"]["token"] is None and saved["hello"]["resume"] is False  # the secret is never kept
    assert SavedJob(store, state(data="moved/d.tsv")).resume

    where = str(tmp_path / JOB_STATE_NAME)
    with pytest.raises(ConfigError) as err:
        SavedJob(store, state(train=[Example("good fun", 0), train[1]]))
    assert str(err.value) == (f"the data data/d.tsv is not what job 'sst2-run_1.a' was started with (data/d.tsv): its "
                              f"train examples changed; give the same data to resume the job, or remove {where} to "
                              "start it afresh (under another job name while the server still runs it)")
    with pytest.raises(ConfigError, match=r"\(train_config\.lr, settings\.max_length differ\): run it with the same"):
        SavedJob(store, state(make_hello(train_config=TrainConfig(lr=0.5, batch_size=4)), settings={"max_length": 32,
                                                                                                     "noise": 0.0}))
    with pytest.raises(ConfigError, match="holds the unfinished job 'sst2-run_1.a', not 'other'"):
        SavedJob(store, state(make_hello(job="other")))
    first.finished()
    assert not store.path.exists() and not SavedJob(store, state(train=train[:1])).resume

    store.path.write_text('{"hello": {}}')
    with pytest.raises(ConfigError, match="is not a job state this mobillm version reads .* remove it to start"):
        SavedJob(store, state())


def test_examples_digest_equals_the_web_devices():
    """The digest of a split's examples is the same in Python and in JavaScript (device/job_state.mjs)."""
    examples = [Example("ünïcode — text", 0), Example("a1", 10), Example("", 3)]
    script = ("import { examplesSha512 } from './src/device/job_state.mjs';\n"
              f"console.log(await examplesSha512({json.dumps([{'text': e.text, 'label': e.label} for e in examples])}));")
    proc = subprocess.run([node(), "--input-type=module", "-e", script], cwd=WEB, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == examples_sha512(examples)


def test_a_device_stopped_mid_job_resumes_from_its_job_state(toy_task, tmp_path):
    """A device that ends mid-job (here: the connection cut and no reconnect allowed) and is started again on its
    job state sends Hello(resume) at once and skips the batches the server holds without forwarding them: every
    batch trained once, and the side network equal to an uninterrupted job's."""
    model_dir, data_dir = toy_task
    manager = SessionManager(tmp_path / "jobs")
    server = ThreadServer(manager, window=2)
    hello, backbone, codec, batcher, data = device_setup(model_dir, data_dir, max_train=64)
    config = TrainConfig(method="side", epochs=3, batch_size=8, patience=5)
    eval_batches, train_batches = len(data.validation) // 8, 64 // 8
    total = eval_batches + 2 * train_batches

    def job(name: str, port: int, saved_job=None, **extra):
        h = hello.model_copy(update={"job": name, "train_config": config, "device_epochs": 2})
        return asyncio.run(stream(f"ws://127.0.0.1:{port}", h, backbone, codec, batcher, data.train, data.validation,
                                  batch_size=8, seed=0, pivot=True, device_epochs=2, saved_job=saved_job, **extra))

    def saved_job() -> SavedJob:
        h = hello.model_copy(update={"job": "stopped", "train_config": config, "device_epochs": 2})
        return SavedJob(JobStateFile(tmp_path / "device"), JobState.of(
            h, str(data_dir), {"max_length": 128}, {"validation": data.validation, "train": data.train}))

    straight, _ = job("straight", server.port)
    proxy = CuttingProxy([server.port], cuts=1, after=12_000)
    with pytest.raises(ConnectionError, match="could not resume"):
        job("stopped", proxy.port, saved_job(), reconnects=0)
    again = saved_job()
    assert again.resume
    frame, stats = job("stopped", server.port, again)
    skipped = stats.batches_skipped
    assert 1 <= skipped < total and stats.batches_sent == total - skipped and stats.reconnects == 0
    assert stats.forward.samples == 8 * (2 * train_batches - max(0, skipped - eval_batches))  # skipped: no forward
    resumed = manager.jobs["stopped"]
    assert [len(seqs) for seqs in resumed.feed.train_seqs] == [train_batches, train_batches]
    assert resumed.samples_trained == 3 * 64
    assert frame.header.step == straight.header.step
    assert all(torch.equal(frame.tensors[k], straight.tensors[k]) for k in straight.tensors)


def test_a_killed_device_process_resumes_from_its_output_directory(toy_task, tmp_path):
    """``mobillm device`` killed (SIGKILL) mid-job and run again with the same ``--output-dir`` finishes the job:
    the side network equals an uninterrupted job's and every batch is trained once; run on changed data it is
    refused, naming the change and how to start afresh."""
    model_dir, data_dir = toy_task
    manager = SessionManager(tmp_path / "jobs")
    server = ThreadServer(manager, window=2)
    runner = CliRunner()

    def args(job: str, port: int, out: Path, data: str = data_dir) -> list[str]:
        return ["device", "--runtime", "torch", "--model", model_dir, "--data", str(data), "--server",
                f"ws://127.0.0.1:{port}", "--job", job, "--codec", "int8", "--shortcuts", "2,4", "--width", "16",
                "--block", "mlp", "--epochs", "2", "--batch-size", "8", "--max-train-samples", "64",
                "--max-eval-samples", "16", "--output-dir", str(out)]

    straight = runner.invoke(app, args("straight", server.port, tmp_path / "straight"))
    assert straight.exit_code == 0, straight.output
    out = tmp_path / "device"
    proxy = StallingProxy(server.port, after=8_000)
    killed = subprocess.Popen([sys.executable, "-m", "mobillm", *args("killed", proxy.port, out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_when_stalled(killed, proxy)
    assert json.loads((out / JOB_STATE_NAME).read_text())["hello"]["job"] == "killed"
    assert not (out / "summary.json").exists()

    changed = tmp_path / "changed"
    shutil.copytree(data_dir, changed)
    rows = (changed / "train.tsv").read_text().splitlines()
    flipped = [rows[0]] + [f"{text}\t{1 - int(label)}" for text, label in (row.split("\t") for row in rows[1:])]
    (changed / "train.tsv").write_text("\n".join(flipped) + "\n")
    refused = runner.invoke(app, args("killed", server.port, out, str(changed)))
    assert refused.exit_code == 2 and "its train examples changed" in refused.output
    assert f"remove {out / JOB_STATE_NAME}" in refused.output.replace("\n", "")

    resumed = runner.invoke(app, args("killed", server.port, out))
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((out / "summary.json").read_text())
    total = (16 + 64) // 8
    assert 1 <= summary["batches_skipped"] < total and summary["batches_sent"] == total - summary["batches_skipped"]
    assert not (out / JOB_STATE_NAME).exists()  # finished: a next run starts afresh
    job = manager.jobs["killed"]
    assert [len(seqs) for seqs in job.feed.train_seqs] == [64 // 8] and job.samples_trained == 2 * 64
    want = load_file(tmp_path / "straight" / "side_network" / "side_network.safetensors")
    got = load_file(out / "side_network" / "side_network.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
