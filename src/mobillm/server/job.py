"""One fine-tuning job on the server: the wiring of its pieces, and the thread that trains.

Batches arrive on the event loop and are acked as soon as they are checked (:func:`check_batch`) and cached;
training runs on a thread of its own, so the device never waits for a training step (design §1). What it
trains next comes from the :class:`BatchFeed`; what survives a restart lives in the :class:`JobDir`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from mobillm.backbone import FrozenHead
from mobillm.exceptions import ProtocolError
from mobillm.metrics import MetricsLog
from mobillm.procfs import peak_rss_bytes
from mobillm.scoring import Evaluator, best_fields, selection_score
from mobillm.server.cache import ActivationCache
from mobillm.server.checks import check_batch, check_hello
from mobillm.server.feed import BatchFeed
from mobillm.server.jobdir import JobDir
from mobillm.server.status import CURVES, Durations, JobState, JobStatus
from mobillm.sidenet.init import new_side_network
from mobillm.training.loop import FitState, fit
from mobillm.training.side_trainer import SideTrainer
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import Ack, Batch, Frame, Hello, SideNet, encode_message
from mobillm.wire.protocol import ReceiveOrder


class Job:
    def __init__(
        self, hello: Hello, head: FrozenHead, directory: Path, cache_memory_bytes: int, progress: bool = False,
        cache_limit_bytes: int | None = None, resume: bool = False, device: torch.device | str = "cpu",
        layers: Sequence[nn.Module] | None = None,
    ):
        """A new job, or with ``resume`` the one a previous server process left in ``directory``: its cached
        batches (up to the first gap), the device's finished epochs and the last epoch checkpoint. The side
        network, its optimizer, the decoded batches and a copy of the frozen head live on ``device``.
        ``layers``: the public backbone's decoder layers, for a side network with ``init == "backbone"``."""
        self.spec = check_hello(hello, head)
        self.hello, self.side_config, self.config = hello, hello.side_config, hello.train_config
        self.dir = JobDir(directory)
        torch.manual_seed(self.config.seed)
        self.trainer = SideTrainer(new_side_network(self.side_config, layers), head, self.side_config.codec, self.config,
                                   self.spec.steps_per_epoch * self.config.num_epochs, device=device)
        if not resume:
            self.dir.start_fresh(hello)
        self.cache = ActivationCache(self.dir.cache_dir, cache_memory_bytes, cache_limit_bytes)
        self.feed = BatchFeed(hello.device_epochs, self.config.idle_replays, self.config.seed)
        self.order = ReceiveOrder()
        self.metrics = MetricsLog(self.dir.metrics_path, curves=CURVES)  # resumed: its curves so far
        self.bytes_received = 0
        self.samples_received = {"train": 0, "eval": 0}
        self.samples_trained = 0
        self.replay_steps = 0
        self.step_seconds = Durations()
        self.progress = progress
        self.last_loss: float | None = None
        self.error: BaseException | None = None
        self.result: dict | None = None
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
        held = self.dir.restore_cache(self.cache)
        for b in held:
            self._count(b.split, b.nbytes, b.samples)
            self.feed.add(b.seq, b.split, b.epoch, queued=False)
        self.order = ReceiveOrder(len(held) - 1)
        self._done_epochs = self.dir.done_epochs()
        self._start_state, self.samples_trained = self.dir.load_checkpoint(self.trainer)
        start = self._start_state.epoch if self._start_state else 0
        self.metrics.write(event="resumed", held_batches=len(held), from_epoch=start, step=self.trainer.step_count,
                           done_epochs=sorted(self._done_epochs))
        self.feed.requeue(start, self._done_epochs)  # the live epochs not yet trained: replay, then go on live
        if self.feed.has_training or self._done_epochs or self._start_state:
            self._start_training()

    def _count(self, split: str, nbytes: int, samples: int) -> None:
        self.bytes_received += nbytes
        self.samples_received[split] += samples

    # -- called from the event loop ------------------------------------------------------------------
    def receive(self, data: bytes, frame: Frame) -> Ack:
        """Check, cache and queue one batch; duplicates (resends) are re-acked, not stored twice."""
        batch: Batch = frame.header
        check_batch(self.spec, frame)
        self.cache.admit(batch.seq, len(data))
        if self.order.accept(batch.seq):
            self.cache.put(batch.seq, data)
            self._count(batch.split, len(data), len(frame.tensors["sample_ids"]))
            self.feed.add(batch.seq, batch.split, batch.epoch)
            if batch.split == "train":
                self._start_training()
        return Ack(seq=batch.seq, step=self.trainer.step_count, loss=self.last_loss)

    def device_done(self, epoch: int) -> None:
        """The device finished sending ``epoch`` (repeats after a reconnect are ignored)."""
        if epoch in self._done_epochs:
            return
        self._done_epochs.add(epoch)
        self.dir.mark_done(self._done_epochs)
        self.feed.done()
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
            job=self.hello.job, state=self.state, task=self.side_config.task, model=self.hello.model,
            codec=self.side_config.codec, batches_received=len(self.cache), samples_received=dict(self.samples_received),
            train_samples=self.hello.train_samples, samples_trained=self.samples_trained, step=self.trainer.step_count,
            steps_per_epoch=self.spec.steps_per_epoch, epochs=self.config.num_epochs, bytes_received=self.bytes_received,
            cache_memory_bytes=self.cache.memory_bytes, cache_disk_bytes=self.cache.disk_bytes,
            elapsed_s=self.elapsed(), last_loss=self.last_loss,
            curves={name: list(curve.points) for name, curve in self.metrics.curves.items()},
            train_step_seconds=self.step_seconds.model_copy(deep=True),
            failure=None if self.error is None else repr(self.error),
        )

    def side_net_message(self) -> bytes:
        if self.error is not None:
            raise ProtocolError(ErrorCode.INTERNAL, f"training failed: {self.error!r}")
        side, val = self.trainer.model, self.result["val"]
        return encode_message(
            SideNet(
                config=self.side_config.model_dump(), step=self.trainer.step_count, val_accuracy=val.get("accuracy"),
                val_loss=val.get("loss"), eval_sample_ids=self.result["eval_sample_ids"],
                eval_predictions=self.result["eval_predictions"],
            ),
            {k: v.detach().contiguous() for k, v in side.state_dict().items()},
        )

    # -- the training thread -------------------------------------------------------------------------
    def _load(self, seq: int):
        """A cached batch as the trainer takes it: encoded layers, labels, and (mask, last index, loss mask)."""
        t = self.cache.tensors(seq)
        extra = (None, None) if self.side_config.pivot_only else (t["attention_mask"], t["last_index"])
        return Batch.activation_groups(t), t, (*extra, t.get("loss_mask"))

    def _train_on(self, seq: int, replay: bool = False) -> float:
        started = time.perf_counter()
        groups, t, extra = self._load(seq)
        loss = self.trainer.train_batch(groups, t["labels"], *extra, replay=replay,  # decodes the layers, once
                                        sample_ids=t["sample_ids"])
        self.step_seconds.observe(time.perf_counter() - started)  # the whole step: cache read, decode, train
        if replay:
            self.replay_steps += 1
            return loss
        self.last_loss = loss
        self.samples_trained += len(t["labels"])
        self.metrics.write(
            step=self.trainer.step_count, loss=loss, samples_trained=self.samples_trained, replay_steps=self.replay_steps,
            samples_per_s=self.samples_trained / self.elapsed(),
            bytes_received=self.bytes_received, cache_memory_bytes=self.cache.memory_bytes,
            cache_disk_bytes=self.cache.disk_bytes, server_peak_memory_bytes=peak_rss_bytes(),
        )
        return loss

    def _epoch(self, epoch: int):
        return self.feed.epoch(epoch, replay=lambda seq: self._train_on(seq, replay=True))

    @torch.no_grad()
    def evaluate(self) -> tuple[dict, list[int], list[int]]:
        """Scores of the eval batches, and (classification) each sample's predicted class."""
        self.trainer.model.eval()
        scores = Evaluator(self.side_config.task, self.side_config.num_labels)
        for seq in self.feed.eval_seqs:
            groups, t, extra = self._load(seq)
            scores.add(*self.trainer.logits(groups, t["labels"], *extra), t["sample_ids"])
        return scores.scores(), scores.sample_ids, scores.predictions

    def _validate(self) -> dict:
        """Score the eval batches, and log the scores (``val_*``) at the current step."""
        scores = self.evaluate()[0]
        self.metrics.write(event="validation", step=self.trainer.step_count, time=time.time(),
                           **{f"val_{k}": v for k, v in scores.items()})
        return scores

    def _run(self) -> None:
        try:
            fresh = self.feed.eval_seqs and not self._start_state
            step0 = selection_score(self._validate()) if fresh else -math.inf
            result = fit(
                num_epochs=self.config.num_epochs, batches=self._epoch, steps_per_epoch=self.spec.steps_per_epoch,
                train_on=self._train_on, validate=self._validate,
                snapshot=self.trainer.snapshot, restore=self.trainer.restore,
                evals_per_epoch=self.config.evals_per_epoch, patience=self.config.patience,
                initial_score=step0 if not math.isnan(step0) else -math.inf,
                desc=self.hello.job, progress=self.progress, start=self._start_state,
                on_epoch_end=lambda state: self.dir.save_checkpoint(self.trainer, state, self.samples_trained),
            )
            scores, ids, preds = self.evaluate()
            self.trainer.model.save_pretrained(self.dir.side_network_dir)
            self.result = {
                **best_fields(self.side_config.task, result.best_score), "val": scores, "best_epoch": result.best_epoch,
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
