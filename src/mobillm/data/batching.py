"""Prompts to padded token batches: dynamic (per-batch) right padding, truncation that keeps the prompt's end.

The classifier reads the prompt's last real token (``last_index``), so a long text must never push the template's
cue (``"\\nSentiment (positive or negative):"``) out of the window: the *text* is cut, from its end, until the prompt
fits ``max_length``. A prompt that fits is tokenized as one string, exactly as the model would see it; with a fast
tokenizer the cut uses the character offsets of that same tokenization, so a truncated prompt is the full prompt
with tokens removed from the middle (a slow tokenizer falls back to tokenizing prefix, text and suffix apart).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from mobillm.data.examples import Example
from mobillm.data.order import batch_chunks
from mobillm.data.templates import PromptTemplate
from mobillm.exceptions import ConfigError, DataError
from mobillm.truncation import cut_text, too_small

__all__ = ["BaseBatcher", "Batcher", "EncodedBatch"]


@dataclass
class EncodedBatch:
    input_ids: torch.Tensor  # (B, T) int64, right-padded
    attention_mask: torch.Tensor  # (B, T) int64, 1 = real token
    labels: torch.Tensor  # (B,) int64 class ids; causal LM: (B, T) the next token at each position
    sample_ids: torch.Tensor  # (B,) int64, index of each example in its split
    last_index: torch.Tensor  # (B,) int64, position of the last real token (the "pivot" the classifier reads)
    loss_mask: torch.Tensor | None = None  # causal LM: (B, T) bool, True where labels[b, t] is a response token

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class BaseBatcher:
    """Right-padded batches in a seeded order; subclasses say how examples become tensors (:meth:`encode`).

    ``truncated`` counts the distinct examples that had to be cut to fit ``max_length`` (an example seen again in
    a later epoch is not counted twice); callers warn with it.
    """

    def __init__(self, tokenizer, max_length: int = 128):
        if not isinstance(max_length, int) or max_length < 1:
            raise ConfigError(f"max_length must be a positive number of tokens, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        candidates = (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
        self.pad_id = next((i for i in candidates if i is not None), 0)
        self._truncated: set = set()

    @property
    def truncated(self) -> int:
        return len(self._truncated)

    def encode(self, examples: Sequence, sample_ids: Sequence[int]) -> EncodedBatch:
        raise NotImplementedError

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, lengths) of token rows, right-padded to the longest."""
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        width = int(lengths.max())
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        return input_ids, (torch.arange(width)[None, :] < lengths[:, None]).long(), lengths

    def batches(
        self, examples: list, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, drop_last: bool = False,
    ) -> Iterator[EncodedBatch]:
        """Batches over ``examples``; with ``shuffle`` the order is a pure function of (seed, epoch)."""
        for chunk in batch_chunks(len(examples), batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_last=drop_last):
            yield self.encode([examples[i] for i in chunk], chunk)


class Batcher(BaseBatcher):
    """Tokenizes classification examples through a :class:`PromptTemplate` into :class:`EncodedBatch` es."""

    def __init__(self, tokenizer, template: PromptTemplate, max_length: int = 128):
        super().__init__(tokenizer, max_length)
        self.template = template
        self._fast = bool(getattr(tokenizer, "is_fast", False))

    # ------------------------------------------------------------------------------------------------- tokenization
    def _too_small(self, fixed: int) -> ConfigError:
        return too_small(self.max_length, fixed)

    def _fast_ids(self, texts: Sequence[str]) -> list[list[int]]:
        prefix, prompts = self.template.prefix, [self.template.format(t) for t in texts]
        enc = self.tokenizer(
            prompts, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True,
            verbose=False,
        )
        out = []
        rows = zip(texts, enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"])
        for text, ids, offsets, special in rows:
            if len(ids) > self.max_length:
                self._truncated.add(text)
            out.append(cut_text(ids, offsets, special, len(prefix), len(prefix) + len(text), self.max_length))
        return out

    def _piecewise_ids(self, texts: Sequence[str]) -> list[list[int]]:
        tok = self.tokenizer
        prefix = tok(self.template.prefix, add_special_tokens=True)["input_ids"]
        suffix = tok(self.template.suffix, add_special_tokens=False)["input_ids"] if self.template.suffix else []
        room = self.max_length - len(prefix) - len(suffix)
        if room < 0:
            raise self._too_small(len(prefix) + len(suffix))
        out = []
        for text in texts:
            body = tok(text, add_special_tokens=False)["input_ids"] if text else []
            if len(body) > room:
                body = body[:room]
                self._truncated.add(text)
            out.append(list(prefix) + list(body) + list(suffix))
        return out

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Unpadded token ids of each text's prompt, at most ``max_length`` long."""
        return self._fast_ids(texts) if self._fast else self._piecewise_ids(texts)

    # ------------------------------------------------------------------------------------------------------ batches
    def encode(self, examples: Sequence[Example], sample_ids: Sequence[int]) -> EncodedBatch:
        """One right-padded batch, as long as its longest prompt."""
        if len(examples) != len(sample_ids):
            raise DataError(f"{len(examples)} examples but {len(sample_ids)} sample ids")
        if not examples:
            raise DataError("cannot encode an empty batch")
        rows = self.token_ids([e.text for e in examples])
        input_ids, attention_mask, lengths = self._pad(rows)
        return EncodedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=torch.tensor([e.label for e in examples], dtype=torch.long),
            sample_ids=torch.tensor(list(sample_ids), dtype=torch.long),
            last_index=lengths - 1,
        )
