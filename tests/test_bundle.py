"""The device bundle (ONNX Runtime, no torch) against today's torch device path on tiny Llama and OPT models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VOCAB, tiny_model
from helpers import make_tiny_tokenizer

from mobillm.backbone import FrozenHead
from mobillm.bundle import BundleConfig
from mobillm.bundle.config import SMOOTHED_FORMATS
from mobillm.bundle.generate import BundleGenerator
from mobillm.bundle.runtime import Bundle
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.device.generate import Generator, Sampling
from mobillm.device.taps import TappedBackbone
from mobillm.exceptions import ConfigError, ModelLoadError
from mobillm.export import export_bundle, quantize_bundle
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.wire.codecs import get_codec
from mobillm.wire.np_codecs import get_np_codec

SHORTCUTS = [1, 3]  # the top shortcut (3) is below the last layer (4): the graphs stop there
#: relative error of the top tap (Frobenius, real positions) against torch fp32 on the tiny models; measured
#: 0.004-0.006 (int8), 0.011-0.015 (int8-dynamic: 7-bit weights; 0.060-0.072 with 8-bit weights on a CPU without
#: VNNI, whose int8 matmuls saturate), 0.06-0.09 (int4) and 0.105-0.108 (web: SmoothQuant'ed int4 and a 4-bit token
#: embedding, whose random Gaussian rows lose more to 4 bits than a trained model's); SmolLM2-135M: BENCHMARKS §19, §21
QUANT_BOUNDS = {"int8": 0.02, "int8-dynamic": 0.03, "int4": 0.15, "web": 0.2}


def _reference(family: str) -> tuple[torch.nn.Module, TappedBackbone]:
    model = tiny_model(family)  # seeded: the same weights as the exported one
    return model, TappedBackbone(tiny_model(family), SHORTCUTS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """fp32 bundles of the tiny Llama and OPT, exported once for the module."""
    out = {}
    for family in ("llama", "opt"):
        directory = tmp_path_factory.mktemp(f"bundle-{family}")
        export_bundle(tiny_model(family), make_tiny_tokenizer(bos=family == "llama"), directory, SHORTCUTS,
                      source=f"tiny-{family}")
        out[family] = directory
    return out


def _padded(left: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 4 rows of different lengths (7, 5, 2, 6), padded on the left or the right."""
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 5, 2, 6]
    ids = torch.full((4, 7), 1, dtype=torch.long)
    mask = torch.zeros(4, 7, dtype=torch.long)
    for b, n in enumerate(lengths):
        cols = slice(7 - n, 7) if left else slice(0, n)
        ids[b, cols] = torch.randint(4, VOCAB, (n,), generator=g)
        mask[b, cols] = 1
    return ids, mask


def _rel(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
    real = mask.astype(bool)
    return float(np.linalg.norm(got[real] - want[real]) / np.linalg.norm(want[real]))


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_fp32_taps_equal_tapped_backbone(exported, family, left):
    bundle = Bundle.load(exported[family])
    _, reference = _reference(family)
    ids, mask = _padded(left)
    want = [t.numpy() for t in reference(ids, mask)]
    got = bundle.taps(ids.numpy(), mask.numpy())
    assert [g.shape for g in got] == [(4, 7, 32)] * len(SHORTCUTS)
    real = mask.numpy().astype(bool)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g[real], w[real], atol=1e-5, rtol=0)
    assert bundle.config.fingerprint and bundle.config.shortcuts == SHORTCUTS and bundle.config.cache_layers == 3


def test_one_row_and_a_long_batch(exported, family):
    """Dynamic shapes: batch 1 of length 1, and a batch longer than the export's example."""
    bundle = Bundle.load(exported[family])
    _, reference = _reference(family)
    for shape in ((1, 1), (9, 40)):
        ids = torch.randint(4, VOCAB, shape)
        mask = torch.ones_like(ids)
        got, want = bundle.taps(ids.numpy(), mask.numpy())[-1], reference(ids, mask)[-1].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights", list(QUANT_BOUNDS))
def test_quantized_taps_within_their_bound(exported, family, weights, tmp_path):
    config = _quantized(exported, family, weights, tmp_path)
    assert config.weights == weights and BundleConfig.load(tmp_path).weights == weights
    bundle = Bundle.load(tmp_path)
    _, reference = _reference(family)
    ids, mask = _padded(left=False, seed=1)
    want = reference(ids, mask)[-1].numpy()
    error = _rel(bundle.taps(ids.numpy(), mask.numpy())[-1], want, mask.numpy())
    assert 0 < error < QUANT_BOUNDS[weights], error  # > 0: the weights really are quantized
    smaller = sum(f.stat().st_size for f in tmp_path.glob("*.onnx*"))  # the graphs and their external weights
    assert smaller < sum(f.stat().st_size for f in exported[family].glob("*.onnx*"))
    assert (tmp_path / "taps.onnx.data").is_file()  # mapped by ONNX Runtime, not copied out of the graph
    # every weight of the exported layers is quantized: no fp32 weight matmul (nor Gemm, which the quantizers skip)
    linears = sum(isinstance(m, torch.nn.Linear) for m in reference.decoder.layers.modules())
    assert _weight_matmuls(exported[family] / "taps.onnx") == {"fp32": linears}
    assert _weight_matmuls(tmp_path / "taps.onnx") == {"quantized": linears}
    # the web format gathers the token embedding's rows from 4-bit blocks; the others keep it fp32
    assert _op_count(tmp_path / "taps.onnx", "GatherBlockQuantized") == (weights == "web")
    assert all(path.stat().st_mode & 0o444 == 0o444 for path in tmp_path.iterdir())  # a web server may serve it


def test_the_web_format_quantizes_the_token_embedding_only(exported, family, tmp_path):
    """``web``: the token embedding 4-bit (a quarter of its fp32 bytes, and less), every other gather exact (OPT's
    learned positions too), and the head's rows still the fp32 ones (the page fetches the label rows from them)."""
    import onnx

    web, int4 = tmp_path / "web", tmp_path / "int4"
    _quantized(exported, family, "web", web)
    _quantized(exported, family, "int4", int4)
    hidden = tiny_model(family).config.hidden_size
    for graph_name in ("taps.onnx", "generate.onnx"):
        graph = onnx.load(str(web / graph_name), load_external_data=False).graph
        (node,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
        quantized = {t.name: tuple(t.dims) for t in graph.initializer}
        assert quantized[node.input[0]] == (VOCAB, hidden)  # (V, H), in 4-bit elements
        assert [onnx.helper.get_node_attr_value(node, a) for a in ("gather_axis", "quantize_axis", "block_size")] == [0, 1, 32]
        kept = [n for n in graph.node if n.op_type == "Gather" and n.input[0] in quantized]
        assert len(kept) == (family == "opt")  # OPT's learned positions: a float table gathered exactly
    assert _op_count(web / "head.onnx", "MatMulNBits") == 1  # generation's head: int4's, no embedding in it
    assert (web / "lm_head.safetensors").read_bytes() == (exported[family] / "lm_head.safetensors").read_bytes()
    saved = (int4 / "taps.onnx.data").stat().st_size - (web / "taps.onnx.data").stat().st_size
    assert saved > 0.75 * VOCAB * hidden * 4  # the embedding's fp32 bytes -> 4 bits (+ a scale, a zero point per 32)


def _quantized(exported: dict[str, Path], family: str, weights: str, directory: Path) -> BundleConfig:
    """A ``weights`` bundle of the tiny ``family`` model: quantized from its fp32 bundle, or exported from the model
    for the formats that smooth its weights first (SMOOTHED_FORMATS)."""
    if weights in SMOOTHED_FORMATS:
        return export_bundle(tiny_model(family), make_tiny_tokenizer(bos=family == "llama"), directory, SHORTCUTS,
                             weights=weights, source=f"tiny-{family}")
    return quantize_bundle(exported[family], directory, weights)


def _op_count(path: Path, op_type: str) -> int:
    import onnx

    return sum(n.op_type == op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def _weight_matmuls(path: Path) -> dict[str, int]:
    """Weight matmuls of a graph by kind: ``fp32`` (MatMul or Gemm on a constant), ``quantized`` (one
    MatMulNBits, or one MatMulInteger on an int8 weight)."""
    import collections

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    kinds = collections.Counter()
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.input[1] in constants:
            kinds["fp32"] += 1
        elif node.op_type in ("MatMulNBits", "MatMulInteger"):
            kinds["quantized"] += 1
    return dict(kinds)


def test_generation_step_equals_torch_step(exported, family):
    bundle = Bundle.load(exported[family])
    _, reference = _reference(family)
    prompt = torch.randint(4, VOCAB, (1, 6))
    want, cache = reference.step(prompt)
    got, np_cache = bundle.step(prompt.numpy())
    assert len(np_cache) == 2 * bundle.config.cache_layers
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)
    for token in (7, 11):
        want, cache = reference.step(torch.tensor([[token]]), cache)
        got, np_cache = bundle.step(np.array([[token]]), np_cache)
        assert got[0].shape == (1, 1, 32)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


def test_head_equals_frozen_head(exported, family):
    bundle = Bundle.load(exported[family])
    head = FrozenHead.from_model(tiny_model(family))
    hidden = torch.randn(5, 32)
    np.testing.assert_allclose(bundle.logits(hidden.numpy()), head(hidden).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_label_logits_read_only_the_label_rows(exported, family, weights, tmp_path):
    """A verbalizer's logits equal the torch head's on those rows, in fp32 and in a quantized bundle (the rows
    stay fp32), without opening the full head graph."""
    directory = exported[family] if weights == "fp32" else tmp_path
    if weights != "fp32":
        quantize_bundle(exported[family], directory, weights)
    bundle = Bundle.load(directory)
    head = FrozenHead.from_model(tiny_model(family))
    hidden, rows = torch.randn(5, 32), [9, 4, VOCAB - 1]
    want = head(hidden, torch.tensor(rows)).numpy()
    np.testing.assert_allclose(bundle.label_logits(hidden.numpy(), rows), want, atol=1e-5, rtol=0)
    assert bundle._head is None  # the whole vocabulary was never loaded
    with pytest.raises(ConfigError, match="outside the bundle's vocabulary"):
        bundle.label_logits(hidden.numpy(), [VOCAB])


def test_a_bundle_without_generation_classifies(tmp_path):
    export_bundle(tiny_model("opt"), make_tiny_tokenizer(bos=False), tmp_path, SHORTCUTS, generate=False)
    assert not (tmp_path / "head.onnx").exists() and not (tmp_path / "generate.onnx").exists()
    bundle = Bundle.load(tmp_path)
    hidden = torch.randn(2, 32)
    want = FrozenHead.from_model(tiny_model("opt"))(hidden, torch.tensor([5, 6])).numpy()
    np.testing.assert_allclose(bundle.label_logits(hidden.numpy(), [5, 6]), want, atol=1e-5, rtol=0)
    with pytest.raises(ModelLoadError, match="without --no-generate"):
        bundle.logits(hidden.numpy())


def _side(block: str, task: str = "causal-lm", random: bool = False, seed: int = 0, **extra) -> SideNetwork:
    head = {"causal-lm": "lm", "classification": "verbalizer"}[task]
    config = SideConfig(
        hidden_size=32, num_backbone_layers=4, shortcuts=SHORTCUTS, width=16, block=block, attention_heads=4,
        task=task, head=head, num_labels=0 if task == "causal-lm" else 2,
        label_token_ids=None if task == "causal-lm" else [5, 6], **extra,
    )
    side = SideNetwork(config).eval()
    if random:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in side.parameters():
                p.normal_(0, 0.4)
    return side


def _np_side(side: SideNetwork) -> NpSideNetwork:
    return NpSideNetwork(side.config.model_dump(), {k: v.numpy() for k, v in side.state_dict().items()})


def test_numpy_gelu_is_torchs_exact_gelu_to_float32_resolution():
    from mobillm.bundle.sidenet import _gelu

    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]]).astype(np.float32)
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()  # the erf form, nn.GELU()'s default
    got = _gelu(x)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-7)
    assert np.abs(got - torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()).max() > 1e-4


@pytest.mark.parametrize("block", ["mlp", "attention", "bidirectional"])
def test_numpy_side_network_equals_torch(block, tmp_path):
    side = (_side("attention", "classification", random=True, bidirectional=True) if block == "bidirectional"
            else _side(block, random=True))
    acts = torch.randn(3, 5, 2, 32) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        want = side.hidden(acts, mask).numpy()
        want_pivot = side.hidden(acts[:, 0]).numpy() if block == "mlp" else None
    side.save_pretrained(tmp_path)
    np_side = NpSideNetwork.from_pretrained(tmp_path)
    got = np_side.hidden(acts.numpy(), mask.numpy())
    real = mask.numpy().astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=0)
    assert np.abs(want).max() > 1 and np.abs(got - acts.numpy()[..., -1, :]).max() > 0.1  # the side net acted
    if want_pivot is not None:  # token-wise blocks also read the pivot token alone (B, M, H)
        np.testing.assert_allclose(np_side.hidden(acts.numpy()[:, 0]), want_pivot, atol=1e-5, rtol=0)


@pytest.mark.parametrize("codec", ["none", "int8"])
@pytest.mark.parametrize("block", ["mlp", "attention"])
@pytest.mark.parametrize("random", [False, True], ids=["zero-init", "random"])
def test_greedy_tokens_equal_torch_generator(exported, family, block, random, codec):
    side = _side(block, random=random, seed=3)
    model, reference = _reference(family)
    eos = {3}
    torch_gen = Generator(reference, side, FrozenHead.from_model(model), get_codec(codec), eos)
    bundle_gen = BundleGenerator(Bundle.load(exported[family]), _np_side(side), get_np_codec(codec), eos)
    prompt = [5, 9, 12, 7]
    want = list(torch_gen.generate(prompt, Sampling(max_new_tokens=12)))
    got = list(bundle_gen.generate(prompt, 12))
    assert got == want and len(got) >= 2


def test_generator_refuses_a_classifier_and_other_shortcuts(exported):
    bundle = Bundle.load(exported["llama"])
    with pytest.raises(ConfigError, match="causal-lm"):
        BundleGenerator(bundle, _np_side(_side("mlp", task="classification")), get_np_codec("none"))
    other = _side("mlp").config.model_dump() | {"shortcuts": [2, 3]}
    state = {k: v.numpy() for k, v in _side("mlp").state_dict().items()}
    with pytest.raises(ConfigError, match="--shortcuts"):
        BundleGenerator(bundle, NpSideNetwork(other, state), get_np_codec("none"))


def test_tokenizer_matches_the_torch_batcher(exported, family):
    from mobillm.data import Batcher, Example, PromptTemplate

    tokenizer = make_tiny_tokenizer(bos=family == "llama")
    template = PromptTemplate("Review : {text} Sentiment ( positive or negative ) :", ["negative", "positive"])
    texts = ["a good movie", "the plot was not very fun and the acting was bad , really bad", "awful"]
    batcher = Batcher(tokenizer, template, max_length=12)
    want = batcher.encode([Example(t, 0) for t in texts], [0, 1, 2])
    assert batcher.truncated >= 1  # a text was cut: the cut itself is compared
    bundle = Bundle.load(exported[family])
    got = bundle.tokenizer.pad(bundle.tokenizer.prompt_ids(template.prefix, texts, template.suffix, 12))
    np.testing.assert_array_equal(got.input_ids, want.input_ids.numpy())
    np.testing.assert_array_equal(got.attention_mask, want.attention_mask.numpy())
    np.testing.assert_array_equal(got.last_index, want.last_index.numpy())
    with pytest.raises(ConfigError, match="max_length=3"):
        bundle.tokenizer.prompt_ids(template.prefix, texts, template.suffix, 3)


def test_runtime_never_imports_torch(exported):
    """A fresh process runs the bundle's taps, head, side network and codecs with no torch or transformers."""
    code = f"""
import sys
import numpy as np
from mobillm.bundle.runtime import Bundle
from mobillm.bundle.generate import BundleGenerator
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.wire.np_codecs import get_np_codec
bundle = Bundle.load({str(exported['opt'])!r})
taps = bundle.taps(np.array([[5, 6, 7]]), np.ones((1, 3), np.int64))
bundle.logits(taps[-1][0])
bundle.label_logits(taps[-1][0], [5, 6])
get_np_codec("nf4").encode(taps[-1])
assert taps[-1].shape == (1, 3, 32)
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bad_bundles_are_refused(tmp_path, exported):
    with pytest.raises(ConfigError, match="mobillm export"):
        Bundle.load(tmp_path)
    (tmp_path / "bundle.json").write_text((exported["llama"] / "bundle.json").read_text())
    with pytest.raises(ModelLoadError, match="missing"):
        Bundle.load(tmp_path)
    (tmp_path / "bundle.json").write_text('{"model": "x"}')
    with pytest.raises(ConfigError, match="fingerprint"):
        Bundle.load(tmp_path)
    with pytest.raises(ConfigError, match="--weights"):
        export_bundle(tiny_model("llama"), make_tiny_tokenizer(), tmp_path / "b", SHORTCUTS, weights="int3")


def test_cli_export_from_a_device_checkpoint(tmp_path):
    """`mobillm export` writes a loadable bundle naming the model the checkpoint was made from; a checkpoint with
    quantized torch weights is refused (the bundle quantizes on its own, from fp32)."""
    from conftest import save_tiny_model
    from typer.testing import CliRunner

    from mobillm.cli import app

    runner = CliRunner()
    model_dir = str(save_tiny_model(tmp_path / "model", hidden=32))
    for fmt in ("fp32", "int8"):
        result = runner.invoke(app, ["convert", str(tmp_path / fmt), "--model", model_dir, "--weights", fmt])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(tmp_path / "b8"), "--model", str(tmp_path / "int8"), "--shortcuts", "2,4"])
    assert result.exit_code != 0 and "mobillm convert --weights fp32" in result.output
    result = runner.invoke(app, [
        "export", str(tmp_path / "bundle"), "--model", str(tmp_path / "fp32"), "--shortcuts", "2,4", "--weights", "int8",
    ])
    assert result.exit_code == 0, result.output
    assert "quantizing taps.onnx" in result.output and "int8 bundle, shortcuts [2, 4]" in result.output
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.config.model == model_dir and bundle.config.weights == "int8"
    assert [t.shape for t in bundle.taps(np.array([[5, 6, 7]]), np.ones((1, 3), np.int64))] == [(1, 3, 32)] * 2


def test_an_exported_bundle_is_readable_by_everyone(exported, tmp_path):
    """A web server running as another user reads the bundle it serves: no file (safetensors writes the LM head
    0600) nor the folder (a 0700 temp folder in the bundle cache) keeps its read bits from the group and others."""
    import stat

    staging = tmp_path / "staging"
    staging.mkdir(mode=0o700)
    quantize_bundle(exported["llama"], staging, "int8")
    for bundle in (exported["llama"], staging):
        assert stat.S_IMODE(bundle.stat().st_mode) & 0o555 == 0o555
        for path in bundle.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o444 == 0o444, path.name
