"""A task as every entry point sets it up: data, backbone, prompt, batches, side network shape.

``mobillm train`` (one process) and ``mobillm device`` (split) both start here, so the two see the same
examples, the same prompts and the same side network configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mobillm.backbone import DEFAULT_MODEL, label_token_ids, load_pretrained, parse_shortcuts
from mobillm.data import Batcher, PromptTemplate, TextDataset, default_template, load_dataset
from mobillm.data.batching import BaseBatcher
from mobillm.data.lm import LMBatcher, LMDataset, load_lm_dataset
from mobillm.exceptions import ConfigError
from mobillm.recipes.options import SideOptions
from mobillm.sidenet import SideConfig


class TaskOptions(SideOptions):
    """The task and the side network's shape (:class:`SideOptions`) on a backbone to load."""

    model: str = DEFAULT_MODEL


NO_HEADER_CAUSAL_LM = "--no-header reads TSV/CSV classification files; causal-LM data is JSONL: drop --no-header"


@dataclass
class Task:
    data: TextDataset | LMDataset
    model: nn.Module
    tokenizer: object
    template: PromptTemplate | None  # classification only
    batcher: BaseBatcher
    side_config: SideConfig


def prepare_task(options: TaskOptions, seed: int, loaded: tuple[nn.Module, object] | None = None) -> Task:
    """Load the data (seeded subsets) and the backbone; derive the prompt and the side network config.

    ``loaded``: the ``(model, tokenizer)`` of ``options.model`` when the caller has loaded it already."""
    limits = dict(seed=seed, max_train_samples=options.max_train_samples, max_eval_samples=options.max_eval_samples)
    if options.task == "causal-lm":
        if options.no_header:
            raise ConfigError(NO_HEADER_CAUSAL_LM)
        data = load_lm_dataset(
            options.data, prompt_column=options.prompt_column, response_column=options.response_column,
            text_column=options.text_column, **limits,
        )
    else:
        data = load_dataset(options.data, text_column=options.text_column, label_column=options.label_column,
                            no_header=options.no_header, **limits)
    model, tokenizer = loaded or load_pretrained(options.model)
    cfg = model.config
    shape = dict(
        hidden_size=cfg.hidden_size, num_backbone_layers=cfg.num_hidden_layers,
        shortcuts=parse_shortcuts(options.shortcuts, cfg.num_hidden_layers), width=options.width, block=options.block,
        codec=options.codec, init=options.side_init, gate_temperature=options.gate_temperature,
        bidirectional=options.side_bidirectional, members=options.side_members,
    )
    if options.task == "causal-lm":
        side_config = SideConfig.parse(dict(shape, task="causal-lm", head="lm", num_labels=0))
        return Task(data, model, tokenizer, None, LMBatcher(tokenizer, max_length=options.max_length), side_config)
    template = default_template(data.label_names)
    side_config = SideConfig.parse(dict(
        shape, num_labels=len(data.label_names), label_token_ids=label_token_ids(tokenizer, template.label_words),
        label_names=data.label_names, prompt_template=template.template,
    ))
    return Task(data, model, tokenizer, template, Batcher(tokenizer, template, max_length=options.max_length), side_config)
