"""``mobillm device --runtime onnx --bundle DIR``: one fine-tuning job on a device bundle (``mobillm export``),
with neither torch nor transformers in the process (design §3).

The same job as :mod:`mobillm.recipes.device`: the bundle's tokenizer makes the torch batcher's batches, its
taps graph the backbone's taps, the numpy codecs the same wire tensors; they stream through the same session,
window, resend and reconnect logic (:func:`~mobillm.device.client.stream_tensors`), and a job the device was
stopped in is resumed from its output directory (``job_state.json``). The downloaded side network is then scored
locally in numpy (:class:`~mobillm.bundle.sidenet.NpSideNetwork` and the bundle's head graph):
test accuracy, zero-shot accuracy and agreement with the server's eval predictions. Nothing is kept per sample:
validation and test are forwarded again for scoring, so memory does not grow with the data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
from pydantic import Field
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from mobillm.bundle.runtime import Bundle, TokenBatch
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.data import TextDataset, default_template, load_dataset
from mobillm.data.order import batch_chunks
from mobillm.data.templates import PromptTemplate
from mobillm.device.client import Source, StreamStats, stream_tensors
from mobillm.device.job_state import JobState, JobStateFile, SavedJob
from mobillm.device.noise import device_noise
from mobillm.device.stats import TapStats
from mobillm.exceptions import ConfigError
from mobillm.files import METRICS_NAME, SIDE_CONFIG_NAME, SIDE_WEIGHTS_NAME, write_summary
from mobillm.metrics import MetricsLog
from mobillm.recipes.bundle_infer import BundleClassifier
from mobillm.recipes.job_template import side_fields
from mobillm.recipes.options import SideOptions, StreamOptions
from mobillm.scoring import Scorer, score_batches
from mobillm.sidenet.config import SideConfig
from mobillm.train_config import TrainConfig
from mobillm.wire.messages import Batch, Hello
from mobillm.wire.np_codecs import NpCodec, get_np_codec

__all__ = ["BundleDeviceOptions", "run_bundle_device"]


class BundleDeviceOptions(SideOptions, StreamOptions):
    """The task (:class:`SideOptions`; the backbone and its shortcut layers are the bundle's) plus the stream."""

    bundle: Path = Field(description="a device bundle written by `mobillm export`")
    threads: int = Field(1, ge=1, description="ONNX Runtime CPU threads")


class _BundleTask:
    """The bundle, the data and the side network's config, as :func:`mobillm.recipes.task.prepare_task` sets
    up the torch device's."""

    def __init__(self, options: BundleDeviceOptions, seed: int):
        if options.task != "classification":
            raise ConfigError(f"--runtime onnx runs classification jobs; for --task {options.task} use --runtime torch")
        self.bundle = bundle = Bundle.load(options.bundle, threads=options.threads)
        c = bundle.config
        if options.shortcuts is not None and options.shortcuts != ",".join(map(str, c.shortcuts)):
            raise ConfigError(f"--shortcuts {options.shortcuts}: the bundle {options.bundle} taps layers {c.shortcuts}, "
                              "fixed when it was exported; drop --shortcuts or re-run `mobillm export --shortcuts`")
        self.data: TextDataset = load_dataset(
            options.data, text_column=options.text_column, label_column=options.label_column,
            no_header=options.no_header, seed=seed, max_train_samples=options.max_train_samples,
            max_eval_samples=options.max_eval_samples,
        )
        self.template: PromptTemplate = default_template(self.data.label_names)
        self.side_config = SideConfig.parse(dict(
            side_fields(c, options), num_labels=len(self.data.label_names),
            label_token_ids=self.label_token_ids(self.template.label_words), label_names=self.data.label_names,
            prompt_template=self.template.template,
        ))
        self.codec: NpCodec = get_np_codec(options.codec)
        self.pivot = self.side_config.pivot_only
        self.classifier = BundleClassifier(bundle, self.side_config, self.template, self.codec, options.max_length)
        self.noise = device_noise(options.noise, options.output_dir)

    def label_token_ids(self, words: list[str]) -> list[int]:
        """First token of each label word, as :func:`mobillm.backbone.label_token_ids` with the torch tokenizer."""
        ids = [self.bundle.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"label words {words} share a first token; choose words that start differently")
        return ids

    def forward(self, examples: list, batch_size: int, split: str, *, shuffle: bool, seed: int, epoch: int = 0,
                stats: TapStats | None = None, skip: int = 0,
                ) -> Iterator[tuple[dict, np.ndarray, list[dict], TokenBatch, list[np.ndarray]]]:
        """For each batch after the first ``skip``, in the torch batcher's order: ``(Batch tensors, labels,
        encoded taps, token batch, raw taps (B, T, H) per shortcut layer)``; ``split`` (train / eval / test)
        seeds the noise draws."""
        chunks = batch_chunks(len(examples), batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        for chunk in islice(chunks, skip, None):
            rows = [examples[i] for i in chunk]
            start = time.perf_counter()
            sample_ids = np.array(chunk, np.int64)
            tokens, taps, encoded = self.classifier.tap([e.text for e in rows], self.noise, split, sample_ids)
            labels = np.array([e.label for e in rows], np.int64)
            tensors = Batch.tensors(
                encoded, sample_ids=sample_ids, labels=labels,
                attention_mask=None if self.pivot else tokens.attention_mask,
                last_index=None if self.pivot else tokens.last_index,
            )
            if stats is not None:
                stats.seconds += time.perf_counter() - start
                stats.samples += len(rows)
                stats.bytes += sum(v.nbytes for e in encoded for v in e.values()) + labels.nbytes
            yield tensors, labels, encoded, tokens, taps

    def source(self, examples: list, batch_size: int, split: str, *, shuffle: bool, seed: int, epoch: int = 0,
               stats: TapStats | None = None) -> Source:
        """:meth:`forward`'s batches to stream; those skipped are never forwarded."""
        def batches(skip: int):
            for tensors, labels, *_ in self.forward(examples, batch_size, split, shuffle=shuffle, seed=seed, epoch=epoch,
                                                    stats=stats, skip=skip):
                yield tensors, len(labels)

        return Source(-(-len(examples) // batch_size), batches)

    def side_scorer(self, side: NpSideNetwork) -> Scorer[tuple]:
        """The side network on a :meth:`forward` batch, reading the taps through the codec's round trip as the
        server did."""

        def score(item: tuple) -> tuple:
            tensors, labels, encoded, tokens, _ = item
            return self.classifier.side_logits(side, encoded, tokens), labels, tensors["sample_ids"]

        return score

    def zero_shot_score(self, item: tuple) -> tuple:
        """The bare backbone on a :meth:`forward` batch: its head on the raw top taps at the pivot token."""
        tensors, labels, _, tokens, taps = item
        return self.classifier.label_logits(taps[-1][np.arange(len(labels)), tokens.last_index]), labels, tensors["sample_ids"]

    def score(self, examples: list, batch_size: int, split: str, *scorers: Scorer[tuple]) -> list:
        """One forward pass over ``examples``, scored batch by batch by each of ``scorers``
        (:func:`~mobillm.scoring.score_batches`); the taps carry the ``split``'s noise, as they were sent."""
        batches = self.forward(examples, batch_size, split, shuffle=False, seed=0)
        return score_batches(batches, "classification", self.side_config.num_labels, *scorers)


def _save_side_network(directory: Path, config: SideConfig, state: dict[str, np.ndarray]) -> None:
    """``side_config.json`` + ``side_network.safetensors``, as ``SideNetwork.save_pretrained`` writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SIDE_CONFIG_NAME).write_text(config.model_dump_json(indent=2) + "\n")
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(directory / SIDE_WEIGHTS_NAME),
              metadata={"format": "pt"})


def run_bundle_device(options: BundleDeviceOptions, config: TrainConfig) -> dict:
    """Run one job on the bundle and score the downloaded side network locally; return the summary. A job this
    output directory holds the state of (``job_state.json``: the device stopped before the end) is resumed."""
    started = time.perf_counter()
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = _BundleTask(options, config.seed)
    data, side_config, bundle = task.data, task.side_config, task.bundle
    hello = Hello(
        job=options.job, model=bundle.config.model, fingerprint=bundle.config.fingerprint, side_config=side_config,
        train_config=config, train_samples=len(data.train), device_epochs=options.device_epochs,
    )
    saved_job = SavedJob(JobStateFile(out), JobState.of(
        hello, str(options.data), {"max_length": options.max_length, "noise": options.noise},
        {"validation": data.validation, "train": data.train},
    ))
    metrics = MetricsLog(out / METRICS_NAME)
    stats = StreamStats()
    size, seed = config.batch_size, config.seed
    total = len(data.validation) + len(data.train) * options.device_epochs
    with tqdm(total=total, desc=f"device → {options.server}", unit="sample", disable=None) as bar:

        def on_sent(stats: StreamStats, samples: int) -> None:
            bar.update(samples)
            metrics.write(**stats.record(time.perf_counter() - started))

        frame, stats = asyncio.run(stream_tensors(
            options.server, hello, task.source(data.validation, size, "eval", shuffle=False, seed=seed),
            lambda epoch: task.source(data.train, size, "train", shuffle=True, seed=seed, epoch=epoch, stats=stats.forward),
            stats=stats, framework="np", device_epochs=options.device_epochs, max_message_bytes=options.max_message_bytes,
            on_sent=on_sent, token=options.token, cafile=options.cafile, saved_job=saved_job,
        ))
    trained = SideConfig.parse(frame.header.config)
    side = NpSideNetwork(trained.model_dump(), frame.tensors)
    _save_side_network(out / "side_network", trained, frame.tensors)

    # Local scoring with the downloaded side network, forwarding each split again (nothing kept per sample).
    final, zero_shot = (e.scores() for e in task.score(data.test, size, "test", task.side_scorer(side), task.zero_shot_score))
    [local_eval] = task.score(data.validation, size, "eval", task.side_scorer(side))

    summary = {
        "method": "mobillm", "runtime": "onnx", "bundle": str(options.bundle), "weights": bundle.config.weights,
        "task": side_config.task, "model": bundle.config.model, "data": options.data, "data_notes": data.notes,
        "codec": options.codec, "noise": options.noise, "shortcuts": side_config.shortcuts, "n_train": len(data.train),
        "n_validation": len(data.validation), "n_test": len(data.test), "zero_shot_test": zero_shot, "test": final,
        "best_val_accuracy": frame.header.val_accuracy,
        "eval_agreement": local_eval.agreement(frame.header.eval_sample_ids, frame.header.eval_predictions),
        "server_steps": frame.header.step,
        **stats.totals(),
        "wall_seconds": time.perf_counter() - started,
    }
    metrics.write(event="device_finished", **{k: v for k, v in summary.items() if k != "data_notes"})
    write_summary(out, summary)
    saved_job.finished()
    return summary
