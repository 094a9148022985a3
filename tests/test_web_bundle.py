"""The web device's bundle runtime and side network (``web/src/bundle/``) against the Python bundle device's
(``mobillm.bundle``): the same taps, label logits, hidden states and class scores on tiny Llama and OPT bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VOCAB, tiny_model
from helpers import make_tiny_tokenizer
from webjs import run_node

from mobillm.bundle.config import SMOOTHED_FORMATS
from mobillm.bundle.runtime import Bundle
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.export import export_bundle, quantize_bundle
from mobillm.sidenet import SideConfig, SideNetwork

SHORTCUTS = [1, 3]
LABELS = [5, 6]
#: Relative to each tensor's largest magnitude: both sides run the same graph and the same arithmetic in float32,
#: only the summation order differs (MLAS's native kernels vs its WASM build; numpy's BLAS vs plain loops with
#: float64 accumulators), so every difference is a few float32 roundings, which scale with the values. The tiny
#: models' hidden states are ~0.1: an absolute 1e-5 would let a relative error of 1e-4 pass. Measured: at most 2.6e-7
#: (taps, fp32 and quantized), 1e-7 (label logits), 1.7e-7 (side network hidden states and scores).
TOLERANCE = 1e-5
#: the bundles' weights: fp32 and the quantized kinds whose operators differ (MatMulNBits; dynamic int8; the web
#: format's GatherBlockQuantized embedding, which onnxruntime-web must run as ONNX Runtime does)
FORMATS = [("llama", "fp32"), ("opt", "fp32"), ("llama", "int4"), ("opt", "int8-dynamic"), ("llama", "web"),
           ("opt", "web")]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Classification bundles (no generation graphs) of the tiny Llama and OPT, fp32 and quantized."""
    out = {}
    for family in ("llama", "opt"):
        directory = tmp_path_factory.mktemp(f"bundle-{family}")
        export_bundle(tiny_model(family), make_tiny_tokenizer(bos=family == "llama"), directory, SHORTCUTS,
                      source=f"tiny-{family}", generate=False)
        out[family, "fp32"] = directory
    for family, weights in FORMATS:
        if weights != "fp32":
            directory = tmp_path_factory.mktemp(f"bundle-{family}-{weights}")
            if weights in SMOOTHED_FORMATS:  # smoothed from the model first
                export_bundle(tiny_model(family), make_tiny_tokenizer(bos=family == "llama"), directory, SHORTCUTS,
                              weights=weights, source=f"tiny-{family}", generate=False)
            else:
                quantize_bundle(out[family, "fp32"], directory, weights)
            out[family, weights] = directory
    return out


def _ragged() -> tuple[np.ndarray, np.ndarray]:
    """4 right-padded rows of lengths 7, 5, 2, 6 (as the batcher pads), pad id 1."""
    rng = np.random.default_rng(0)
    lengths = [7, 5, 2, 6]
    mask = (np.arange(7)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(4, VOCAB, (4, 7)), 1)
    return ids, mask


def _node(command: str, *directories: Path, **payload) -> dict:
    return json.loads(run_node("bundle.mjs", command, *directories, payload=payload).stdout)


def _array(t: dict) -> np.ndarray:
    return np.array(t["data"], np.float32).reshape(t["shape"])


def _assert_close(got: dict, want: np.ndarray) -> None:
    """``got`` (from Node) equals ``want`` at every element within TOLERANCE of ``want``'s largest magnitude."""
    got_array = _array(got)
    assert got_array.shape == want.shape
    scale = float(np.abs(want).max())
    assert scale > 0  # something to compare
    np.testing.assert_allclose(got_array, want, atol=TOLERANCE * scale, rtol=0)


@pytest.mark.parametrize(("family", "weights"), FORMATS, ids=[f"{f}-{w}" for f, w in FORMATS])
def test_taps_and_label_logits_equal_onnxruntime(bundles, family, weights):
    ids, mask = _ragged()
    hidden, rows = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32), [9, 4, VOCAB - 1]
    got = _node("taps", bundles[family, weights], input_ids=ids.tolist(), attention_mask=mask.tolist(),
                hidden={"shape": [5, 32], "data": hidden.ravel().tolist()}, label_ids=rows)
    bundle = Bundle.load(bundles[family, weights])
    want = bundle.taps(ids, mask)
    assert len(got["taps"]) == len(SHORTCUTS)
    for g, w in zip(got["taps"], want):
        _assert_close(g, w)  # every position, padding included
    _assert_close(got["label_logits"], bundle.label_logits(hidden, rows))
    assert got["pad_id"] == bundle.tokenizer.pad_id == bundle.config.pad_token_id  # Bundle.tokenizer pads as Python's


def _side(block: str, **extra) -> SideNetwork:
    """A classification side network of the tiny bundles' shape with random weights (up included, so it acts)."""
    config = SideConfig(hidden_size=32, num_backbone_layers=4, shortcuts=SHORTCUTS, width=16, block=block,
                        attention_heads=4, task="classification", head="verbalizer", num_labels=2,
                        label_token_ids=LABELS, **extra)
    side = SideNetwork(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in side.parameters():
            p.normal_(0, 0.4)
    return side


SIDES = {
    "mlp-pivot": lambda: _side("mlp"),
    "attention-causal": lambda: _side("attention"),
    "attention-bidirectional": lambda: _side("attention", bidirectional=True),
    "ensemble-3": lambda: _side("attention", bidirectional=True, members=3),
}


@pytest.mark.parametrize("case", list(SIDES))
def test_side_network_equals_numpy(bundles, case, tmp_path):
    """classify (with the bundle's label rows on each side) and hidden, on the bundle's taps of a ragged batch."""
    directory = bundles["llama", "fp32"]
    bundle = Bundle.load(directory)
    ids, mask = _ragged()
    acts = np.stack(bundle.taps(ids, mask), axis=-2)  # (B, T, M, H)
    last = mask.sum(1) - 1
    SIDES[case]().save_pretrained(tmp_path)
    side = NpSideNetwork.from_pretrained(tmp_path)
    if side.token_wise:  # the device sends the pivot token only
        acts, mask, last = acts[np.arange(len(last)), last], None, None
    got = _node("side", tmp_path, directory, acts={"shape": list(acts.shape), "data": acts.ravel().tolist()},
                attention_mask=None if mask is None else mask.tolist(),
                last_index=None if last is None else last.tolist(), label_ids=LABELS)

    want = side.classify(acts, mask, last, lambda h: bundle.label_logits(h, LABELS))
    _assert_close(got["classify"], want)
    assert np.abs(want[:, 0] - want[:, 1]).max() > 0.05  # the scores tell the labels apart
    if side.members is not None:
        assert got["hidden"] is None and "no single hidden state" in got["hidden_error"]
        np.testing.assert_allclose(np.exp(want).sum(-1), 1.0, atol=1e-5)  # log of the members' mean probabilities
        return
    hidden = side.hidden(acts, mask)
    _assert_close(got["hidden"], hidden)  # every position, padding included
    assert np.abs(hidden - acts[..., -1, :]).max() > 0.1  # the side network acted
