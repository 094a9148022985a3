"""Local data files: TSV, CSV (a header row, or ``no_header`` and columns by position) and JSONL, one file or a
directory of train/dev/test files."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mobillm.data.examples import TextDataset, to_examples
from mobillm.data.splits import fill_missing, split_examples, split_note
from mobillm.exceptions import DataError

__all__ = [
    "FILE_SUFFIXES", "LABEL_COLUMN", "REPLACEMENT", "TEXT_COLUMN", "column_position", "decode_text", "jsonl_objects",
    "load_directory", "load_file", "looks_local", "read_records",
]

TEXT_COLUMN = "sentence"  # the default column names: GLUE SST-2's
LABEL_COLUMN = "label"
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl")
SPLIT_FILES = {"train": ("train",), "validation": ("dev", "validation"), "test": ("test",)}
REPLACEMENT = "\ufffd"


def looks_local(spec: str) -> bool:
    """A spec that is clearly meant as a path (so a typo gives 'missing file', not a Hub error)."""
    path_like = spec.startswith((".", "/", "~")) or "\\" in spec
    return path_like or Path(spec).suffix.lower() in (".txt", ".json", ".parquet")


def decode_text(raw: bytes) -> tuple[str, bool]:
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


def column_position(column: str, default_name: str, default_position: int, flag: str) -> int:
    """The 0-based position a column of a headerless file is read from: ``column`` itself when it is a number,
    ``default_position`` when it is left at its default name (text first, then label)."""
    if column.strip().isdigit():
        return int(column)
    if column == default_name:
        return default_position
    raise DataError(f"{flag} {column!r}: a file read with --no-header has no column names; "
                    f"give {flag} as a position (0 is the first field) or leave it out")


def read_records(
    path: Path, text_column: str, label_column: str, no_header: bool = False,
) -> tuple[list[tuple[str, Any]], list[str]]:
    """(text, raw label) pairs of one file and notes; DataError on a missing file/column or malformed row.

    ``no_header``: a TSV/CSV file whose first row is data; its columns are positions (see :func:`column_position`)."""
    if not path.is_file():
        where = "" if path.parent.is_dir() else f" (no directory {path.parent})"
        raise DataError(f"data file {path} does not exist{where}")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(FILE_SUFFIXES)}")
    text, damaged_bytes = decode_text(path.read_bytes())
    records: list[tuple[str, Any]] = []
    if suffix == ".jsonl":
        if no_header:
            raise DataError(f"{path}: --no-header applies to .tsv/.csv files; JSONL lines name their own keys")
        for number, obj in jsonl_objects(path, text):
            for column in (text_column, label_column):
                if column not in obj:
                    raise DataError(f"{path}:{number}: no key {column!r}; keys are {', '.join(map(repr, obj))} "
                                    "(choose them with --text-column / --label-column)")
            records.append((obj[text_column], obj[label_column]))
    else:
        if suffix == ".tsv":
            reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(io.StringIO(text, newline=""))
        if no_header:
            ti = column_position(text_column, TEXT_COLUMN, 0, "--text-column")
            li = column_position(label_column, LABEL_COLUMN, 1, "--label-column")
            width = None  # every row has the first row's number of fields
        else:
            header = next(reader, None)
            if not header:
                raise DataError(f"{path} is empty (no header row)")
            missing = [c for c in (text_column, label_column) if c not in header]
            if missing:
                raise DataError(
                    f"{path}: no column {' or '.join(map(repr, missing))}; columns are {', '.join(map(repr, header))} "
                    "(choose them with --text-column / --label-column, or pass --no-header if the first row is data)"
                )
            ti, li, width = header.index(text_column), header.index(label_column), len(header)
        for row in reader:
            if not row:
                continue
            if width is None:
                width = len(row)
                if max(ti, li) >= width:
                    flag = "--text-column" if ti >= width else "--label-column"
                    raise DataError(f"{path}:{reader.line_num}: {flag} {max(ti, li)} but the rows have {width} fields "
                                    "(positions count from 0)")
            if len(row) != width:
                raise DataError(
                    f"{path}:{reader.line_num}: {len(row)} fields where the "
                    f"{'first row' if no_header else 'header'} has {width}"
                    + (" (TSV is read without quoting: a tab inside a text breaks the row)" if suffix == ".tsv" else "")
                )
            records.append((row[ti], row[li]))
    notes = []
    if damaged_bytes:
        damaged = sum(REPLACEMENT in str(t) for t, _ in records)
        notes.append(f"{path.name}: {damaged} rows had invalid UTF-8 (decoded with replacement)")
    return records, notes


def load_file(path: Path, text_column: str, label_column: str, label_names, split_seed: int,
              no_header: bool = False) -> TextDataset:
    """One TSV/CSV/JSONL file, split 80/10/10 (seeded, stratified)."""
    records, notes = read_records(path, text_column, label_column, no_header)
    if not records:
        raise DataError(f"{path}: the data set is empty" + ("" if no_header else " (a header and no rows)"))
    splits, label_names, more = to_examples(str(path), {"all": records}, label_names)
    train, validation, test = split_examples(splits["all"], split_seed)
    notes += more + [split_note(train, validation, test, split_seed)]
    return TextDataset(path.stem, label_names, train, validation, test, notes)


def _find_split(directory: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in FILE_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    return None


def load_directory(directory: Path, text_column, label_column, label_names, split_seed: int,
                   no_header: bool = False) -> TextDataset:
    """train/dev (or validation)/test files of one directory; missing validation/test splits carved out of train."""
    files = {split: _find_split(directory, stems) for split, stems in SPLIT_FILES.items()}
    if files["train"] is None:
        found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise DataError(f"{directory} has no train.tsv/.csv/.jsonl (found: {found})")
    notes: list[str] = []
    raw: dict[str, list] = {}
    for split, path in files.items():
        if path is not None:
            raw[split], more = read_records(path, text_column, label_column, no_header)
            notes += more
    splits, label_names, more = to_examples(str(directory), raw, label_names)
    notes += more
    notes += fill_missing(splits, split_seed)
    for split in ("train", "validation", "test"):
        if not splits[split]:
            raise DataError(f"{directory}: the {split} split is empty")
    return TextDataset(directory.name, label_names, splits["train"], splits["validation"], splits["test"], notes)
