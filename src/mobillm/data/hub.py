"""Hugging Face ``datasets`` (``name`` or ``name/config``), loaded lazily: optional, and it needs a network."""

from __future__ import annotations

from mobillm.data.examples import TextDataset, to_examples
from mobillm.data.splits import fill_missing
from mobillm.exceptions import DataError

__all__ = ["HUB_SPLITS", "hub_dataset", "load_hub"]


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


def load_hub(spec: str, text_column, label_column, label_names, split_seed: int) -> TextDataset:
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
                f"columns are {', '.join(map(repr, columns))} (choose them with --text-column / --label-column)"
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
    splits, label_names, more = to_examples(spec, raw, label_names)
    notes += more
    notes += fill_missing(splits, split_seed)
    return TextDataset(spec, label_names, splits["train"], splits["validation"], splits["test"], notes)
