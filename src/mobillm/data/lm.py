"""Data for causal-LM (instruction) fine-tuning: prompt/response pairs, token batches with a loss mask.

``load_lm_dataset(spec)`` reads a ``.jsonl`` file (split 80/10/10, seeded), a directory with ``train``/``dev``
(or ``validation``)/``test`` ``.jsonl`` files, or a Hugging Face ``datasets`` name when the library and a
network are there. Each line holds ``prompt`` and ``response`` (names configurable),
or a single ``text`` field: the loss then reads every token of it.

A prompt is formatted with the tokenizer's chat template when it has one (a user turn, then the assistant cue),
as plain text otherwise; the response is followed by the end-of-sequence token so the model learns to stop.
:class:`LMBatcher` shifts the labels on the device: ``labels[b, t]`` is the token at ``t + 1`` and ``loss_mask``
marks the positions whose next token belongs to the response — the only ones the loss (and the server) reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mobillm.data.batching import BaseBatcher, EncodedBatch
from mobillm.data.hub import HUB_SPLITS, hub_dataset
from mobillm.data.readers import decode_text, jsonl_objects, looks_local
from mobillm.data.splits import SPLIT_SEED, fill_missing, split_examples, split_note, subset
from mobillm.exceptions import DataError

__all__ = ["LMBatcher", "LMDataset", "LMExample", "load_lm_dataset"]


@dataclass(frozen=True)
class LMExample:
    """A prompt and the response the model should learn to write (``prompt`` empty: plain text)."""

    prompt: str
    response: str


@dataclass
class LMDataset:
    name: str
    train: list[LMExample]
    validation: list[LMExample]
    test: list[LMExample]
    notes: list[str] = field(default_factory=list)


def load_lm_dataset(
    spec: str,
    *,
    prompt_column: str = "prompt",
    response_column: str = "response",
    text_column: str = "text",
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_test_samples: int | None = None,
    split_seed: int = SPLIT_SEED,
) -> LMDataset:
    """Load ``spec`` (see the module docstring) and take the seeded subsets asked for (as ``load_dataset``)."""
    path = Path(str(spec)).expanduser()
    columns = (prompt_column, response_column, text_column)
    notes: list[str] = []
    if path.is_dir():
        files = {split: next((path / f"{s}.jsonl" for s in stems if (path / f"{s}.jsonl").is_file()), None)
                 for split, stems in (("train", ("train",)), ("validation", ("dev", "validation")), ("test", ("test",)))}
        if files["train"] is None:
            raise DataError(f"{path} has no train.jsonl (a causal-LM data set is JSONL with prompt/response or text)")
        splits = {k: _read_jsonl(f, *columns, notes) for k, f in files.items() if f is not None}
        notes += fill_missing(splits, split_seed, stratify=False)
        train, validation, test = splits["train"], splits["validation"], splits["test"]
    elif path.suffix.lower() == ".jsonl":
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        train, validation, test = split_examples(_read_jsonl(path, *columns, notes), split_seed, stratify=False)
        notes.append(split_note(train, validation, test, split_seed).replace(" stratified", ""))
    elif looks_local(str(spec)):
        raise DataError(
            f"{spec!r}: a causal-LM data set is a .jsonl file, a directory of train/dev/test .jsonl files "
            f"with {prompt_column!r}/{response_column!r} (or {text_column!r}) fields, or a Hub data set name"
        )
    else:
        train, validation, test = _load_hub_lm(str(spec), prompt_column, response_column, text_column, split_seed, notes)
    data = LMDataset(path.stem, train, validation, test, notes)
    data.train = subset(data.train, max_train_samples, seed, "train")
    data.validation = subset(data.validation, max_eval_samples, seed, "validation")
    data.test = subset(data.test, max_test_samples, seed, "test")
    for name in ("train", "validation", "test"):
        if not getattr(data, name):
            raise DataError(f"{spec}: the {name} split is empty")
    return data


def _load_hub_lm(spec, prompt_column, response_column, text_column, split_seed, notes) -> list[list[LMExample]]:
    hub = hub_dataset(spec)
    splits: dict[str, list[LMExample]] = {}
    for split, names in HUB_SPLITS:
        name = next((n for n in names if n in hub), None)
        if name is None:
            continue
        columns = hub[name].column_names
        if prompt_column in columns and response_column in columns:
            splits[split] = [LMExample(p, r) for p, r in zip(hub[name][prompt_column], hub[name][response_column])]
        elif text_column in columns:
            splits[split] = [LMExample("", t) for t in hub[name][text_column]]
        else:
            raise DataError(f"{spec} ({name}): needs {prompt_column!r} and {response_column!r}, or {text_column!r}; "
                            f"columns are {', '.join(map(repr, columns))}")
    if "train" not in splits:
        raise DataError(f"{spec}: no train split (splits: {', '.join(hub)})")
    notes += fill_missing(splits, split_seed, stratify=False)
    return [splits["train"], splits["validation"], splits["test"]]


def _read_jsonl(path: Path, prompt_column: str, response_column: str, text_column: str, notes: list[str]) -> list[LMExample]:
    text, damaged = decode_text(path.read_bytes())
    if damaged:
        notes.append(f"{path.name}: invalid UTF-8 decoded with replacement")
    out, empty = [], 0
    for number, obj in jsonl_objects(path, text):
        if prompt_column in obj and response_column in obj:
            prompt, response = obj[prompt_column], obj[response_column]
        elif text_column in obj:
            prompt, response = "", obj[text_column]
        else:
            raise DataError(
                f"{path}:{number}: needs {prompt_column!r} and {response_column!r}, or {text_column!r}; "
                f"keys are {', '.join(map(repr, obj))}"
            )
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise DataError(f"{path}:{number}: prompt and response must be strings")
        if not response.strip():
            empty += 1
            continue
        out.append(LMExample(prompt, response))
    if empty:
        notes.append(f"{path.name}: dropped {empty} rows with an empty response")
    if not out:
        raise DataError(f"{path}: no examples")
    return out


class LMBatcher(BaseBatcher):
    """Prompt + response -> (input_ids, labels shifted by one, loss_mask over the response) batches.

    Too long an example keeps its response and loses the start of its prompt; a response longer than
    ``max_length - 1`` is cut at its end. Both count in ``truncated``.
    """

    def __init__(self, tokenizer, max_length: int = 256):
        super().__init__(tokenizer, max_length)
        if max_length < 2:
            raise DataError("max_length must leave room for a prompt token and a response token")
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.eos_id = getattr(tokenizer, "eos_token_id", None)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids that cue the response: the chat template's user turn + assistant cue, or the plain text.

        An empty prompt (plain-text examples) is just the tokenizer's BOS, if it adds one."""
        if self.chat and prompt:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
            )
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def response_ids(self, response: str) -> list[int]:
        ids = list(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        return ids + ([self.eos_id] if self.eos_id is not None else [])

    def _row(self, example: LMExample) -> tuple[list[int], int]:
        """Token ids of one example and the index of its first response token."""
        prompt, response = self.prompt_ids(example.prompt), self.response_ids(example.response)
        if not prompt:  # plain text without a BOS: the first token is context, the rest is learned
            prompt, response = response[:1], response[1:]
        if len(prompt) + len(response) > self.max_length:
            self._truncated.add(example)
            response = response[: self.max_length - 1]
            prompt = prompt[len(prompt) - (self.max_length - len(response)):]
        return prompt + response, len(prompt)

    def encode(self, examples: Sequence[LMExample], sample_ids: Sequence[int]) -> EncodedBatch:
        if len(examples) != len(sample_ids) or not examples:
            raise DataError(f"{len(examples)} examples with {len(sample_ids)} sample ids (need the same number, >= 1)")
        rows, starts = zip(*(self._row(e) for e in examples))
        input_ids, attention_mask, lengths = self._pad(list(rows))
        labels = torch.zeros_like(input_ids)
        labels[:, :-1] = input_ids[:, 1:]
        positions = torch.arange(input_ids.shape[1])[None, :]
        start = torch.tensor(starts)[:, None]
        # position t predicts token t + 1: a response token when start <= t + 1 < length
        loss_mask = (positions + 1 >= start) & (positions + 1 < lengths[:, None])
        return EncodedBatch(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels.masked_fill(~loss_mask, 0),
            sample_ids=torch.tensor(list(sample_ids), dtype=torch.long), last_index=lengths - 1, loss_mask=loss_mask,
        )
