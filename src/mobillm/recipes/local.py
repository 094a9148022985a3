"""``mobillm train``: the whole pipeline in one process, for side tuning and the on-device baselines.

Side tuning here is the split system folded into one process — device forward (taps + codec) then the
server's :class:`SideTrainer` — so it measures exactly what the split run does, minus the network.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mobillm.backbone import FrozenHead, decoder_layers
from mobillm.device.inference import (
    TappedBatch,
    evaluate_tapped,
    side_extras,
    tap_split,
    zero_shot_tapped,
)
from mobillm.device.noise import ActivationNoise, device_noise
from mobillm.device.stats import TapStats
from mobillm.device.taps import TappedBackbone
from mobillm.exceptions import ConfigError
from mobillm.files import METRICS_NAME, write_summary
from mobillm.metrics import MetricsLog, classification_scores
from mobillm.procfs import peak_rss_bytes
from mobillm.recipes.task import Task, TaskOptions, prepare_task
from mobillm.scoring import best_fields, selection_score
from mobillm.sidenet import SideConfig
from mobillm.sidenet.init import new_side_network
from mobillm.train_config import TrainConfig
from mobillm.training.baselines import baseline_logits, prepare_baseline
from mobillm.training.loop import fit
from mobillm.training.order import epoch_order
from mobillm.training.side_trainer import SideTrainer
from mobillm.training.step import make_optimizer, train_step
from mobillm.wire.codecs import get_codec

log = logging.getLogger("mobillm")


class RunOptions(TaskOptions):
    """What to train on (:class:`TaskOptions`) and where to write."""

    output_dir: Path = Path("runs/train")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train(options: RunOptions, config: TrainConfig) -> dict:
    """Run one method end to end; write ``summary.json`` (+ the side network) and return the summary."""
    _seed_everything(config.seed)
    started = time.perf_counter()
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out / METRICS_NAME)

    if options.task == "causal-lm" and config.method != "side":
        raise ConfigError(f"--task causal-lm trains with --method side; the {config.method} baseline classifies only")
    if options.noise and config.method != "side":
        raise ConfigError(f"--noise defends the activations sent in side tuning; the {config.method} baseline sends none")
    task = prepare_task(options, config.seed)
    data, batcher = task.data, task.batcher
    if config.method == "side":
        summary = _train_side(task, config, metrics, out, device_noise(options.noise, out))
    else:
        summary = train_baseline(task, config, metrics, out)

    truncated = batcher.truncated
    if truncated:
        log.warning("%d prompts were longer than --max-length %d and had their text truncated", truncated, options.max_length)
    summary.update(
        method=config.method, model=options.model, data=options.data, data_notes=data.notes,
        n_train=len(data.train), n_validation=len(data.validation), n_test=len(data.test), truncated=truncated,
        task=options.task, label_names=getattr(data, "label_names", []), train_config=config.model_dump(), peak_memory_bytes=peak_rss_bytes(),
        wall_seconds=time.perf_counter() - started,
    )
    write_summary(out, summary)
    return summary


def _train_side(task: Task, config: TrainConfig, metrics: MetricsLog, out: Path,
                noise: ActivationNoise | None = None) -> dict:
    side_config, batcher, data = task.side_config, task.batcher, task.data
    head = FrozenHead.from_model(task.model)
    backbone = TappedBackbone(task.model, side_config.shortcuts)
    codec = get_codec(side_config.codec)
    pivot = side_config.pivot_only

    # --- device: one forward pass per sample; the encoded taps are cached (the server's activation cache)
    train_stats = TapStats()
    train_cache = list(tap_split(
        backbone, codec, batcher, data.train, config.batch_size, pivot, "device forward (train)", train_stats, shuffle=True,
        seed=config.seed, noise=noise,
    ))
    val_cache = list(tap_split(backbone, codec, batcher, data.validation, config.batch_size, pivot,
                               "device forward (validation)", noise=noise, split="eval"))
    test_cache = list(tap_split(backbone, codec, batcher, data.test, config.batch_size, pivot, "device forward (test)",
                                noise=noise, split="test"))

    result = fit_side(side_config, head, config, train_cache, val_cache, test_cache, metrics, layers=decoder_layers(task.model))
    result["side"].save_pretrained(out / "side_network")
    n = len(data.train)
    return {
        "codec": side_config.codec, "shortcuts": side_config.shortcuts, "side_config": side_config.model_dump(),
        **{k: v for k, v in result.items() if k != "side"},
        "device_seconds_per_sample": train_stats.seconds / n, "bytes_per_sample": train_stats.bytes / n,
    }


def fit_side(
    side_config: SideConfig, head: FrozenHead, config: TrainConfig, train_cache: list[TappedBatch],
    val_cache: list[TappedBatch], test_cache: list[TappedBatch], metrics: MetricsLog | None = None,
    device: torch.device | str = "cpu", layers: Sequence[torch.nn.Module] | None = None,
) -> dict:
    """Train a side network from cached device taps (epochs replay the cache): zero-shot, fit, test.

    Separate from the device forward so ablations can train many side networks from one set of taps.
    ``device``: where the side network trains and is scored (the server's ``--device``); it is returned there.
    ``layers``: the backbone's decoder layers, which ``side_config.init == "backbone"`` copies (``sidenet.init``).
    """
    codec = get_codec(side_config.codec)
    torch.manual_seed(config.seed)  # the server seeds the same way: same initial side network
    side = new_side_network(side_config, layers)
    steps_per_epoch = len(train_cache)
    trainer = SideTrainer(side, head, side_config.codec, config, steps_per_epoch * config.num_epochs, device)

    def evaluate(cache) -> dict:
        return evaluate_tapped(trainer.model, trainer.head, codec, cache).scores()

    zero_shot = zero_shot_tapped(side_config, head, test_cache).scores()
    step0_val = selection_score(evaluate(val_cache))  # the fresh side network, through the codec

    def epoch_batches(epoch):  # as the server replays its activation cache
        return (train_cache[i] for i in epoch_order(len(train_cache), epoch, config.seed))

    def train_on(item: TappedBatch) -> float:
        loss = trainer.train_batch(item.taps, item.batch.labels, *side_extras(side_config, item.batch),
                                   sample_ids=item.batch.sample_ids)
        if metrics:
            metrics.write(step=trainer.step_count, loss=loss)
        return loss

    result = fit(
        num_epochs=config.num_epochs, batches=epoch_batches, steps_per_epoch=steps_per_epoch, train_on=train_on,
        validate=lambda: evaluate(val_cache), snapshot=trainer.snapshot, restore=trainer.restore,
        evals_per_epoch=config.evals_per_epoch, patience=config.patience, initial_score=step0_val, desc="side",
    )
    return {
        "side": trainer.model, "test": evaluate(test_cache), "zero_shot_test": zero_shot, **best_fields(side_config.task, result.best_score),
        "best_epoch": result.best_epoch, "steps": result.steps,
        "stopped_early": result.stopped_early, "history": result.history,
        "side_parameters": sum(p.numel() for p in side.parameters()),
    }


def train_baseline(task: Task, config: TrainConfig, metrics: MetricsLog, out: Path) -> dict:
    """Train an on-device baseline (``config.method``) on ``task.data.train``, in place on ``task.model``: epochs
    with validation and early stopping, then test. Scratch weights go under ``out``; returns the summary."""
    batcher, train_set, num_labels = task.batcher, task.data.train, task.side_config.num_labels
    model, params = prepare_baseline(task.model, config)
    ids = torch.tensor(task.side_config.label_token_ids)
    steps_per_epoch = (len(train_set) + config.batch_size - 1) // config.batch_size
    optimizer, scheduler = make_optimizer(params, config.learning_rate, config.weight_decay, steps_per_epoch * config.num_epochs, config.warmup_ratio, config.schedule, config.warmup_steps)
    device_seconds, samples, steps = 0.0, 0, 0

    def train_on(batch) -> float:
        nonlocal device_seconds, samples, steps
        model.train()
        t = time.perf_counter()
        loss = train_step(
            lambda: torch.nn.functional.cross_entropy(
                baseline_logits(model, batch.input_ids, batch.attention_mask, batch.last_index, ids), batch.labels
            ),
            [params], optimizer, scheduler, config.max_grad_norm,
        )
        device_seconds += time.perf_counter() - t
        samples, steps = samples + len(batch.labels), steps + 1
        metrics.write(step=steps, loss=loss, train_seconds=device_seconds)
        return loss

    @torch.inference_mode()
    def evaluate(examples) -> dict:
        model.eval()
        preds, labels = [], []
        for batch in batcher.batches(examples, config.batch_size, shuffle=False, seed=config.seed):
            preds.append(baseline_logits(model, batch.input_ids, batch.attention_mask, batch.last_index, ids).argmax(-1))
            labels.append(batch.labels)
        return classification_scores(torch.cat(preds), torch.cat(labels), num_labels)

    # The best trainable weights go to disk, not RAM, so keeping them does not inflate the device's peak memory.
    scratch = Path(tempfile.mkdtemp(prefix="mobillm-best-", dir=out))
    names = [n for n, p in model.named_parameters() if p.requires_grad]

    def snapshot():
        state = dict(model.named_parameters())
        save_file({n: state[n].detach().contiguous() for n in names}, scratch / "best.safetensors")
        return scratch / "best.safetensors"

    def restore(path):
        with torch.no_grad():
            state = dict(model.named_parameters())
            for n, t in load_file(path).items():
                state[n].copy_(t)

    result = fit(
        num_epochs=config.num_epochs,
        batches=lambda epoch: batcher.batches(train_set, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch),
        steps_per_epoch=steps_per_epoch, train_on=train_on, validate=lambda: evaluate(task.data.validation),
        snapshot=snapshot, restore=restore, evals_per_epoch=config.evals_per_epoch, patience=config.patience,
        desc=config.method,
    )
    final = evaluate(task.data.test)
    (scratch / "best.safetensors").unlink(missing_ok=True)
    scratch.rmdir()
    return {
        "test": final, "best_val_accuracy": result.best_score, "best_epoch": result.best_epoch, "steps": result.steps,
        "stopped_early": result.stopped_early, "history": result.history,
        "device_seconds_per_sample": device_seconds / max(1, samples),
        "trainable_parameters": sum(p.numel() for p in params),
    }
