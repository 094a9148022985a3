"""One fine-tuning job on the server: side network + optimizer, activation cache, metrics, checkpoints.

Batches arrive on the event loop and are acked as soon as they are validated and cached; training runs on a
thread of its own, so the device never waits for a training step (design §1). Epochs after the device's
last one replay from the cache; with ``idle_replays`` the training thread also spends the waits between the
device's batches on the batches already received.
"""

from __future__ import annotations

import collections
import json
import math
import queue
import random
import shutil
import threading
import time
from pathlib import Path

import torch

from mobillm.backbone import FrozenHead
from mobillm.exceptions import ConfigError, ProtocolError, WireError
from mobillm.files import METRICS_NAME, write_atomic
from mobillm.metrics import MetricsLog, peak_rss_bytes
from mobillm.server.cache import ActivationCache
from mobillm.server.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from mobillm.server.status import CURVES, Durations, JobState, JobStatus
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.train_config import TrainConfig
from mobillm.scoring import Evaluator, best_fields, loss_logits, selection_score
from mobillm.training.loop import FitState, fit
from mobillm.training.side_trainer import SideTrainer
from mobillm.wire.codecs import CODECS
from mobillm.wire.messages import Ack, Batch, Frame, Hello, SideNet, decode_message, encode_message
from mobillm.wire.protocol import ReceiveOrder

_DONE = object()
HELLO_NAME, DONE_NAME = "hello.json", "done.json"


class Job:
    def __init__(
        self, hello: Hello, head: FrozenHead, directory: Path, cache_memory_bytes: int, progress: bool = False,
        cache_limit_bytes: int | None = None, resume: bool = False,
    ):
        """A new job, or with ``resume`` the one a previous server process left in ``directory``: its cached
        batches (up to the first gap), the device's finished epochs and the last epoch checkpoint."""
        try:
            self.side_config = SideConfig.parse(hello.side_config)
            self.config = TrainConfig.parse(hello.train_config)
        except ConfigError as err:
            raise ProtocolError("bad_header", f"Hello: {err}") from None
        problems = []
        if self.side_config.task != hello.task:
            problems.append(f"side_config is for a {self.side_config.task} task, the Hello says {hello.task}")
        if self.side_config.hidden_size != hello.hidden_size or self.side_config.shortcuts != hello.shortcuts:
            problems.append("side_config disagrees with the Hello's hidden_size/shortcuts")
        if hello.codec not in CODECS:
            problems.append(f"codec {hello.codec!r} unknown — this server knows {sorted(CODECS)}")
        if not 1 <= hello.device_epochs <= self.config.num_epochs:
            problems.append(f"device_epochs must be within 1..{self.config.num_epochs} (the training epochs)")
        if problems:
            raise ProtocolError("bad_header", "; ".join(problems))
        self.hello, self.directory = hello, Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.pivot = self.side_config.pivot_only
        # labels are class ids, or (causal LM) next-token ids within the frozen head's vocabulary
        self.num_targets = hello.num_labels if hello.task == "classification" else head.lm_head.weight.shape[0]
        self.steps_per_epoch = math.ceil(hello.train_samples / self.config.batch_size)
        torch.manual_seed(self.config.seed)
        self.trainer = SideTrainer(
            SideNetwork(self.side_config), head, hello.codec, self.config, self.steps_per_epoch * self.config.num_epochs
        )
        self.cache = ActivationCache(self.directory / "cache", cache_memory_bytes)
        if not resume:
            shutil.rmtree(self.cache.directory, ignore_errors=True)
            for name in (CHECKPOINT_NAME, DONE_NAME, METRICS_NAME):  # a fresh run of the job: nothing of the last one
                (self.directory / name).unlink(missing_ok=True)
            write_atomic(self.directory / HELLO_NAME, hello.model_dump_json(exclude={"token", "resume"}))
        self.cache_limit_bytes = cache_limit_bytes
        self.order = ReceiveOrder()
        self.train_seqs: list[list[int]] = [[] for _ in range(hello.device_epochs)]
        self.eval_seqs: list[int] = []
        self.metrics = MetricsLog(self.directory / METRICS_NAME, curves=CURVES)  # resumed: its curves so far
        self.bytes_received = 0
        self.samples_received = {"train": 0, "eval": 0}
        self.samples_trained = 0
        self.replay_steps = 0
        self._replayable: collections.deque[tuple[int, int]] = collections.deque()  # (seq, times replayed)
        self.step_seconds = Durations()
        self.progress = progress
        self.last_loss: float | None = None
        self.error: BaseException | None = None
        self.result: dict | None = None
        self._incoming: queue.Queue = queue.Queue()
        self._done_epochs: set[int] = set()
        self._finished = threading.Event()
        self._started = time.perf_counter()
        self._ended: float | None = None
        # Started by the first training batch: the eval batches precede it, so step 0 can be validated.
        self._thread = threading.Thread(target=self._run, name=f"train-{hello.job}", daemon=True)
        self._start_state: FitState | None = None
        if resume:
            self._restore()

    def _restore(self) -> None:
        last = -1
        for seq in self.cache.restore():
            if seq != last + 1:
                break
            last = seq
        self.cache.drop_from(last + 1)  # past a gap: the device resends it
        for seq in range(last + 1):
            data = self.cache.get(seq)
            frame = decode_message(data)
            batch = frame.header
            (self.eval_seqs if batch.split == "eval" else self.train_seqs[batch.epoch]).append(seq)
            self.bytes_received += len(data)
            self.samples_received[batch.split] += len(frame.tensors["sample_ids"])
        self.order = ReceiveOrder(last)
        done = self.directory / DONE_NAME
        self._done_epochs = set(json.loads(done.read_text())) if done.is_file() else set()
        if (self.directory / CHECKPOINT_NAME).is_file():
            self._start_state, self.samples_trained = load_checkpoint(self.directory / CHECKPOINT_NAME, self.trainer)
        start = self._start_state.epoch if self._start_state else 0
        self.metrics.write(event="resumed", held_batches=last + 1, from_epoch=start, step=self.trainer.step_count,
                           done_epochs=sorted(self._done_epochs))
        for epoch in range(start, len(self.train_seqs)):  # the live epochs not yet trained: replay, then go on live
            for seq in self.train_seqs[epoch]:
                self._incoming.put(seq)
            if epoch in self._done_epochs:
                self._incoming.put(_DONE)
        if any(self.train_seqs) or self._done_epochs or self._start_state:
            self._start_training()

    # -- called from the event loop ------------------------------------------------------------------
    def receive(self, data: bytes, frame: Frame) -> Ack:
        """Validate, cache and queue one batch; duplicates (resends) are re-acked, not stored twice."""
        batch: Batch = frame.header
        self.validate(frame)
        if batch.split == "train" and batch.epoch >= len(self.train_seqs):
            raise ProtocolError("bad_batch", f"epoch {batch.epoch} beyond device_epochs={len(self.train_seqs)}")
        limit = self.cache_limit_bytes
        if limit is not None and batch.seq not in self.cache and self.cache.total_bytes + len(data) > limit:
            raise ProtocolError("cache_full", f"job {self.hello.job!r} holds {self.cache.total_bytes:,} bytes; "
                                              f"this batch would pass the limit of {limit:,}")
        if self.order.accept(batch.seq):
            self.cache.put(batch.seq, data)
            self.bytes_received += len(data)
            self.samples_received[batch.split] += len(frame.tensors["sample_ids"])
            if batch.split == "eval":
                self.eval_seqs.append(batch.seq)
            else:
                self.train_seqs[batch.epoch].append(batch.seq)
                self._incoming.put(batch.seq)
                self._start_training()
        return Ack(seq=batch.seq, step=self.trainer.step_count, loss=self.last_loss)

    def device_done(self, epoch: int) -> None:
        """The device finished sending ``epoch`` (repeats after a reconnect are ignored)."""
        if epoch in self._done_epochs:
            return
        self._done_epochs.add(epoch)
        write_atomic(self.directory / DONE_NAME, json.dumps(sorted(self._done_epochs)))
        self._incoming.put(_DONE)
        self._start_training()  # also when no training batch came: the job then ends at once

    def _start_training(self) -> None:
        if not self._thread.is_alive() and not self._finished.is_set():
            self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    @property
    def state(self) -> JobState:
        if self._finished.is_set():
            return "failed" if self.error is not None else "finished"
        return "training" if self._thread.is_alive() else "waiting"

    def elapsed(self) -> float:
        """Seconds since the job started, until it ended."""
        return (self._ended or time.perf_counter()) - self._started

    def status(self) -> JobStatus:
        """A snapshot for the status page and /metrics; safe from any thread while training goes on."""
        return JobStatus(
            job=self.hello.job, state=self.state, task=self.hello.task, model=self.hello.model, codec=self.hello.codec,
            batches_received=len(self.cache), samples_received=dict(self.samples_received),
            train_samples=self.hello.train_samples, samples_trained=self.samples_trained, step=self.trainer.step_count,
            steps_per_epoch=self.steps_per_epoch, epochs=self.config.num_epochs, bytes_received=self.bytes_received,
            cache_memory_bytes=self.cache.memory_bytes, cache_disk_bytes=self.cache.disk_bytes,
            elapsed_s=self.elapsed(), last_loss=self.last_loss,
            curves={name: list(curve.points) for name, curve in self.metrics.curves.items()},
            train_step_seconds=self.step_seconds.model_copy(deep=True),
            failure=None if self.error is None else repr(self.error),
        )

    def side_net_message(self) -> bytes:
        if self.error is not None:
            raise ProtocolError("internal", f"training failed: {self.error!r}")
        side, val = self.trainer.side, self.result["val"]
        return encode_message(
            SideNet(
                config=self.side_config.model_dump(), step=self.trainer.step_count, val_accuracy=val.get("accuracy"),
                val_loss=val.get("loss"), eval_sample_ids=self.result["eval_sample_ids"],
                eval_predictions=self.result["eval_predictions"],
            ),
            {k: v.detach().contiguous() for k, v in side.state_dict().items()},
        )

    def validate(self, frame: Frame) -> None:
        """Check a batch against the Hello: layer count, shapes, finiteness, label range."""
        tensors = frame.tensors
        groups = Batch.activation_groups(tensors)
        B = tensors["sample_ids"].shape[0]
        H, M = self.hello.hidden_size, len(self.hello.shortcuts)
        if len(groups) != M:
            raise ProtocolError("bad_batch", f"{len(groups)} activation layers, the Hello announced {M}")
        labels, lm = tensors["labels"], self.hello.task == "causal-lm"
        if labels.dim() != (2 if lm else 1) or bool(((labels < 0) | (labels >= self.num_targets)).any()):
            what = "(B, T) next-token ids" if lm else "(B,) class ids"
            raise ProtocolError("bad_batch", f"labels must be {what} in 0..{self.num_targets - 1}")
        if lm and "loss_mask" not in tensors:
            raise ProtocolError("bad_batch", "a causal-LM batch needs its loss_mask")
        for i, group in enumerate(groups):
            try:
                x = self.trainer.codec.decode(group)
            except WireError as err:
                raise ProtocolError("bad_batch", f"layer {i}: {err}") from None
            T = labels.shape[1] if lm else (x.shape[1] if x.dim() == 3 else 0)
            expected = (B, H) if self.pivot else (B, T, H)
            if tuple(x.shape) != expected:
                raise ProtocolError("bad_batch", f"layer {i}: activations of shape {tuple(x.shape)}, expected {expected}")
            if not bool(torch.isfinite(x).all()):
                raise ProtocolError("bad_batch", f"layer {i}: activations contain NaN or Inf")
        if not self.pivot:
            if "attention_mask" not in tensors or "last_index" not in tensors:
                raise ProtocolError("bad_batch", "batches of every position need attention_mask and last_index")
            if tensors["attention_mask"].shape != (B, T):
                raise ProtocolError("bad_batch", f"attention_mask {tuple(tensors['attention_mask'].shape)} does not fit ({B}, {T})")
            last = tensors["last_index"]
            if bool(((last < 0) | (last >= T)).any()):
                raise ProtocolError("bad_batch", f"last_index must lie in 0..{T - 1}")

    # -- the training thread -------------------------------------------------------------------------
    def _load(self, seq: int):
        t = decode_message(self.cache.get(seq)).tensors
        extra = (None, None) if self.pivot else (t["attention_mask"], t["last_index"])
        return Batch.activation_groups(t), t, (*extra, t.get("loss_mask"))

    def _live(self):
        """Batches of a device epoch as they arrive, until the device says that epoch is done."""
        self._replayable.clear()
        while (seq := self._next_live()) is not _DONE:
            if self.config.idle_replays:
                self._replayable.append((seq, 0))
            yield seq

    def _next_live(self):
        """The next queued batch; while none is queued, replay received ones (round robin, oldest first)."""
        while self._replayable:
            try:
                return self._incoming.get_nowait()
            except queue.Empty:
                seq, times = self._replayable.popleft()
                self._train_on(seq, replay=True)
                if times + 1 < self.config.idle_replays:
                    self._replayable.append((seq, times + 1))
        return self._incoming.get()

    def _batches(self, epoch: int):
        if epoch < len(self.train_seqs):
            return self._live()
        seqs = list(self.train_seqs[-1])
        random.Random(self.config.seed * 1000 + epoch).shuffle(seqs)
        return iter(seqs)

    def _train_on(self, seq: int, replay: bool = False) -> float:
        started = time.perf_counter()
        groups, t, extra = self._load(seq)
        loss = self.trainer.train_batch(groups, t["labels"], *extra, replay=replay)
        self.step_seconds.observe(time.perf_counter() - started)  # the whole step: cache read, decode, train
        if replay:
            self.replay_steps += 1
        else:
            self.last_loss = loss
            self.samples_trained += len(t["labels"])
        return loss

    @torch.no_grad()
    def evaluate(self) -> tuple[dict, list[int], list[int]]:
        """Scores of the eval batches, and (classification) each sample's predicted class."""
        side = self.trainer.side.eval()
        scores = Evaluator(self.hello.task, self.hello.num_labels)
        for seq in self.eval_seqs:
            groups, t, extra = self._load(seq)
            scores.add(*loss_logits(side, self.trainer.head, self.trainer.activations(groups), t["labels"], *extra), t["sample_ids"])
        return scores.scores(), scores.sample_ids, scores.predictions

    def _validate(self) -> dict:
        """Score the eval batches, and log the scores (``val_*``) at the current step."""
        scores = self.evaluate()[0]
        self.metrics.write(event="validation", step=self.trainer.step_count, time=time.time(),
                           **{f"val_{k}": v for k, v in scores.items()})
        return scores

    def _on_step(self, step: int, loss: float) -> None:
        self.metrics.write(
            step=step, loss=loss, samples_trained=self.samples_trained, replay_steps=self.replay_steps,
            samples_per_s=self.samples_trained / self.elapsed(),
            bytes_received=self.bytes_received, cache_memory_bytes=self.cache.memory_bytes,
            cache_disk_bytes=self.cache.disk_bytes, server_peak_memory_bytes=peak_rss_bytes(),
        )

    def _run(self) -> None:
        try:
            step0 = selection_score(self._validate()) if self.eval_seqs and not self._start_state else -math.inf
            result = fit(
                num_epochs=self.config.num_epochs, batches=self._batches, steps_per_epoch=self.steps_per_epoch,
                train_on=self._train_on, validate=self._validate,
                snapshot=self.trainer.snapshot, restore=self.trainer.restore,
                evals_per_epoch=self.config.evals_per_epoch, patience=self.config.patience,
                initial_score=step0 if not math.isnan(step0) else -math.inf,
                desc=self.hello.job, on_step=self._on_step, progress=self.progress, start=self._start_state,
                on_epoch_end=lambda state: save_checkpoint(
                    self.directory / CHECKPOINT_NAME, self.trainer, state, self.samples_trained
                ),
            )
            scores, ids, preds = self.evaluate()
            self.trainer.side.save_pretrained(self.directory / "side_network")
            self.result = {
                **best_fields(self.hello.task, result.best_score), "val": scores, "best_epoch": result.best_epoch,
                "steps": result.steps, "stopped_early": result.stopped_early, "history": result.history,
                "eval_sample_ids": ids, "eval_predictions": preds,
            }
            self.metrics.write(event="finished", **{k: v for k, v in self.result.items() if not k.startswith("eval_")})
        except BaseException as err:  # noqa: BLE001 - reported to the device as an Error, never crashes the server
            self.error = err
            self.metrics.write(event="failed", error=repr(err))
        finally:
            self._ended = time.perf_counter()
            self._finished.set()
