"""``mobillm device``: one fine-tuning job seen from the device, end to end.

Load the backbone and the data, stream the taps to the server, download the side network, then evaluate
backbone + side network locally — no server needed for that last part. A job the device was stopped in is
resumed from its output directory (``job_state.json``, :mod:`mobillm.device.job_state`). Nothing is kept per
sample: the local scoring forwards test (side network and zero-shot scores from the same pass) and validation
(agreement with the server's eval) again, batch by batch, so memory does not grow with the data (design §3).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tqdm.auto import tqdm

from mobillm.backbone import FrozenHead, fingerprint, public_model_id
from mobillm.device.client import stream
from mobillm.device.inference import evaluate_tapped, side_scorer, tap_split, zero_shot_scorer
from mobillm.device.job_state import JobState, JobStateFile, SavedJob
from mobillm.device.noise import device_noise
from mobillm.device.taps import TappedBackbone
from mobillm.files import METRICS_NAME, write_summary
from mobillm.metrics import MetricsLog
from mobillm.recipes.options import StreamOptions
from mobillm.recipes.task import TaskOptions, prepare_task
from mobillm.scoring import score_batches
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.train_config import TrainConfig
from mobillm.wire.codecs import get_codec
from mobillm.wire.messages import Hello


class DeviceOptions(TaskOptions, StreamOptions):
    """The task (:class:`TaskOptions`) plus where the server is and how to stream to it (:class:`StreamOptions`)."""


def run_device(options: DeviceOptions, config: TrainConfig) -> dict:
    started = time.perf_counter()
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = prepare_task(options, config.seed)
    data, model, batcher, side_config = task.data, task.model, task.batcher, task.side_config
    validation, shortcuts = data.validation, side_config.shortcuts
    hello = Hello(
        job=options.job, model=public_model_id(options.model), fingerprint=fingerprint(model), side_config=side_config,
        train_config=config, train_samples=len(data.train), device_epochs=options.device_epochs,
    )
    head = FrozenHead.from_model(model)
    backbone = TappedBackbone(model, shortcuts)
    codec = get_codec(side_config.codec)
    pivot = side_config.pivot_only
    noise = device_noise(options.noise, out)

    def forward(examples: list, split: str):
        """The split's taps as it is read; its noise draws are the sample's own, the same in every pass."""
        return tap_split(backbone, codec, batcher, examples, config.batch_size, pivot, f"device forward ({split})",
                         noise=noise, split=split)

    saved_job = SavedJob(JobStateFile(out), JobState.of(
        hello, str(options.data), {"max_length": options.max_length, "noise": options.noise},
        {"validation": validation, "train": data.train},
    ))
    metrics = MetricsLog(out / METRICS_NAME)
    total = len(validation) + len(data.train) * options.device_epochs
    with tqdm(total=total, desc=f"device → {options.server}", unit="sample", disable=None) as bar:

        def on_sent(stats, samples: int) -> None:
            bar.update(samples)
            metrics.write(**stats.record(time.perf_counter() - started))

        frame, stats = asyncio.run(stream(
            options.server, hello, backbone, codec, batcher, data.train, validation,
            batch_size=config.batch_size, seed=config.seed, pivot=pivot, device_epochs=options.device_epochs,
            max_message_bytes=options.max_message_bytes, on_sent=on_sent, token=options.token, cafile=options.cafile,
            noise=noise, saved_job=saved_job,
        ))
    side = SideNetwork.from_state(SideConfig.parse(frame.header.config), frame.tensors)
    side.save_pretrained(out / "side_network")

    # Local scoring with the downloaded side network, forwarding each split again: test scores and the bare
    # backbone's (zero-shot: its own head on the raw top hidden states of the same pass; the test taps get noise
    # too, their own draws: the side network is scored on what it was trained on), then the agreement with the
    # server's eval (the eval taps are the ones sent, noise and all).
    final, zero_shot = (e.scores() for e in score_batches(
        forward(data.test, "test"), side_config.task, side_config.num_labels, side_scorer(side, head, codec),
        zero_shot_scorer(side_config, head)))
    local_eval = evaluate_tapped(side, head, codec, forward(validation, "eval"))
    if side_config.task == "classification":
        agreement = {"best_val_accuracy": frame.header.val_accuracy,
                     "eval_agreement": local_eval.agreement(frame.header.eval_sample_ids, frame.header.eval_predictions)}
    else:  # the same loss, computed on both sides: differences are float rounding only
        agreement = {"best_val_loss": frame.header.val_loss,
                     "eval_loss_difference": abs(local_eval.scores()["loss"] - frame.header.val_loss)}

    summary = {
        "method": "mobillm", "task": side_config.task, "model": options.model, "data": options.data,
        "data_notes": data.notes, "codec": options.codec, "noise": options.noise, "shortcuts": shortcuts, "n_train": len(data.train),
        "n_validation": len(validation), "n_test": len(data.test), "zero_shot_test": zero_shot, "test": final,
        **agreement, "server_steps": frame.header.step,
        **stats.totals(),
        "truncated": batcher.truncated, "wall_seconds": time.perf_counter() - started,
    }
    metrics.write(event="device_finished", **{k: v for k, v in summary.items() if k != "data_notes"})
    write_summary(out, summary)
    saved_job.finished()
    return summary
