"""`mobillm predict / evaluate / generate --runtime onnx --bundle DIR`: the downloaded side network on a device
bundle, against the same commands on the torch runtime (tiny Llama and OPT, fp32 bundles), and with neither torch
nor transformers in the process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VOCAB, tiny_model, write_toy_sentiment
from helpers import TINY_WORDS, make_tiny_tokenizer
from test_install import base_distributions
from typer.testing import CliRunner

from mobillm.backbone import FrozenHead, label_token_ids, load_pretrained
from mobillm.bundle.prompt import prompt_ids
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.cli import app
from mobillm.data import Batcher, Example, PromptTemplate, default_template
from mobillm.data.lm import LMBatcher
from mobillm.device.generate import Generator, Sampling
from mobillm.device.inference import evaluate_tapped, tap_batches
from mobillm.device.taps import TappedBackbone
from mobillm.export import export_bundle
from mobillm.recipes.bundle_infer import BundleInference
from mobillm.scoring import loss_logits
from mobillm.sidenet import SideConfig, SideNetwork
from mobillm.wire.codecs import decode_layers, get_codec

SHORTCUTS = [2, 4]
#: a chat template in the tiny tokenizer's words, with the special-token variable transformers passes it
CHAT = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} .{% endfor %}"
        "{% if add_generation_prompt %} Label :{% endif %}")
TEXTS = ["a good movie", "the plot was boring and bad", "i love this film , really great fun", "awful acting"]
#: (block, codec, gate temperature) of the classification side networks
CLASSIFIERS = [("mlp", "int8", 1.0), ("attention", "nf4", 0.1)]
GENERATORS = [("attention", "none"), ("mlp", "int8")]
#: every id of the tiny models' vocabulary a word, so that generated text shows (4 special tokens first)
WORDS = [*TINY_WORDS, *(f"w{i}" for i in range(VOCAB - 4 - len(TINY_WORDS)))]

#: runs one command; then prints the distributions its imports came from and whether torch or transformers came in
DEVICE = """
import importlib.metadata as md, json, sys
before = set(sys.modules)
from mobillm.cli import app
code = app(sys.argv[1:], standalone_mode=False)
owners = md.packages_distributions()
imported = {d for m in set(sys.modules) - before for d in owners.get(m.partition(".")[0], [])}
print("DISTS " + json.dumps(sorted(imported)))
print("MODULES " + json.dumps(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
sys.exit(code or 0)
"""


def _randomize(side: SideNetwork, seed: int) -> SideNetwork:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in side.parameters():
            p.normal_(0, 0.4)
    return side.eval()


def _side_config(**fields) -> SideConfig:
    return SideConfig.parse(dict(hidden_size=32, num_backbone_layers=4, shortcuts=SHORTCUTS, width=16, **fields))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Per family: a saved tiny model (with a chat template), its fp32 bundle, and saved side networks."""
    root = tmp_path_factory.mktemp("infer")
    data = write_toy_sentiment(root / "data", n_train=8, n_eval=40)
    out: dict = {"data": data}
    for family in ("llama", "opt"):
        model_dir = root / family / "model"
        tiny_model(family).save_pretrained(model_dir)
        tokenizer = make_tiny_tokenizer(WORDS, bos=family == "llama")
        tokenizer.chat_template = CHAT
        tokenizer.save_pretrained(model_dir)
        model, tokenizer = load_pretrained(str(model_dir))
        export_bundle(model, tokenizer, root / family / "bundle", SHORTCUTS, source=str(model_dir))
        template = default_template(["negative", "positive"])
        sides = {}
        for i, (block, codec, temperature) in enumerate(CLASSIFIERS):
            config = _side_config(block=block, codec=codec, gate_temperature=temperature,
                                  label_token_ids=label_token_ids(tokenizer, template.label_words),
                                  label_names=["negative", "positive"], prompt_template=template.template)
            sides[block] = _randomize(SideNetwork(config), seed=i).save_pretrained(root / family / f"cls-{block}")
        for i, (block, codec) in enumerate(GENERATORS):
            config = _side_config(block=block, codec=codec, task="causal-lm", head="lm", num_labels=0)
            sides[f"lm-{block}"] = _randomize(SideNetwork(config), seed=10 + i).save_pretrained(root / family / f"lm-{block}")
        out[family] = {"model": model_dir, "bundle": root / family / "bundle", "sides": sides}
    return out


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _no_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DEVICE, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("block", [b for b, _, _ in CLASSIFIERS])
def test_label_logits_equal_the_torch_device(setup, family, block):
    """The bundle's side-network logits equal the torch device's on the same texts (fp32 bundle, codec round trip)."""
    case = setup[family]
    side = SideNetwork.from_pretrained(case["sides"][block])
    model, tokenizer = load_pretrained(str(case["model"]))
    cfg = side.config
    batcher = Batcher(tokenizer, PromptTemplate(cfg.prompt_template, [" " + n for n in cfg.label_names]))
    batch = batcher.encode([Example(t, 0) for t in TEXTS], list(range(len(TEXTS))))
    codec, backbone, head = get_codec(cfg.codec), TappedBackbone(model, cfg.shortcuts), FrozenHead.from_model(model)
    tapped = list(tap_batches(backbone, codec, [batch], cfg.pivot_only))
    masks = (None, None) if cfg.pivot_only else (batch.attention_mask, batch.last_index)
    with torch.no_grad():
        want, _ = loss_logits(side, head, decode_layers(codec, tapped[0].taps), batch.labels, *masks)
    local = BundleInference.load(case["bundle"], case["sides"][block], "classification")
    classifier = local.classifier(128)
    tokens, _, encoded = classifier.tap(TEXTS)
    got = classifier.side_logits(local.side, encoded, tokens)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
    assert np.abs(want.numpy()[:, 1] - want.numpy()[:, 0]).max() > 0.01  # the labels' logits differ: a real test
    assert local.predict(TEXTS, 128) == evaluate_tapped(side, head, codec, tapped).predictions


@pytest.mark.parametrize("block", [b for b, _, _ in CLASSIFIERS])
def test_predict_and_evaluate_equal_the_torch_runtime(setup, family, block):
    case = setup[family]
    side, model, bundle = str(case["sides"][block]), str(case["model"]), str(case["bundle"])
    want = _cli("predict", *TEXTS, "--side-network", side, "--model", model)
    got = _cli("predict", *TEXTS, "--side-network", side, "--runtime", "onnx", "--bundle", bundle)
    assert got == want and got.count("\n") == len(TEXTS)
    common = ["--side-network", side, "--data", str(setup["data"]), "--batch-size", "16"]
    scores = {}
    for split in ("test", "validation"):
        want = _cli("evaluate", *common, "--model", model, "--split", split)
        got = _cli("evaluate", *common, "--runtime", "onnx", "--bundle", bundle, "--threads", "2", "--split", split)
        assert got == want, (split, got, want)  # every score, printed to 4 decimals
        scores[split] = dict(kv.split("=") for kv in got.split())
    assert scores["test"]["n"] == "40"


@pytest.mark.parametrize("block", [b for b, _ in GENERATORS])
def test_generate_writes_the_torch_runtimes_tokens(setup, family, block):
    case = setup[family]
    side_dir = case["sides"][f"lm-{block}"]
    model, tokenizer = load_pretrained(str(case["model"]))
    batcher = LMBatcher(tokenizer)
    local = BundleInference.load(case["bundle"], side_dir, "causal-lm")
    for prompt in ("a good movie", ""):  # the chat template's turn, and a bare BOS (plain-text examples)
        assert prompt_ids(local.bundle, prompt) == batcher.prompt_ids(prompt), prompt
    side = SideNetwork.from_pretrained(side_dir)
    generator = Generator(TappedBackbone(model, SHORTCUTS), side, FrozenHead.from_model(model), get_codec(side.config.codec),
                          {batcher.eos_id})
    want = list(generator.generate(batcher.prompt_ids("a good movie"), Sampling(max_new_tokens=10)))
    got = list(local.generate("a good movie", 10))
    assert got == want and len(got) >= 2
    common = ["a good movie", "--side-network", str(side_dir), "--max-new-tokens", "10"]
    for extra in ([], ["--base"]):
        want_text = _cli("generate", *common, "--model", str(case["model"]), *extra)
        got_text = _cli("generate", *common, "--runtime", "onnx", "--bundle", str(case["bundle"]), *extra)
        assert got_text == want_text and want_text.strip(), extra
    assert _cli("generate", *common, "--runtime", "onnx", "--bundle", str(case["bundle"]), "--base") != \
        _cli("generate", *common, "--runtime", "onnx", "--bundle", str(case["bundle"]))  # --base is another model


def test_onnx_commands_never_import_torch(setup):
    case = setup["opt"]
    bundle = ["--runtime", "onnx", "--bundle", str(case["bundle"])]
    runs = {
        "predict": _no_torch("predict", *TEXTS, "--side-network", str(case["sides"]["attention"]), *bundle),
        "evaluate": _no_torch("evaluate", "--side-network", str(case["sides"]["mlp"]), "--data", str(setup["data"]), *bundle),
        "generate": _no_torch("generate", "a good movie", "--side-network", str(case["sides"]["lm-mlp"]),
                              "--max-new-tokens", "4", *bundle),
    }
    base = base_distributions() | {"mobillm"}
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr[-3000:])
        lines = run.stdout.splitlines()
        assert lines[-1] == "MODULES []", (name, run.stdout[-2000:])  # neither torch nor transformers, ever
        imported = {d.lower().replace("_", "-") for d in json.loads(lines[-2].removeprefix("DISTS "))}
        assert "onnxruntime" in imported and imported <= base, (name, imported - base)  # the base install suffices
        assert len(lines) >= 3 and lines[0].strip(), name  # it printed its answer first
    assert runs["predict"].stdout.splitlines()[0].split("\t")[1] == TEXTS[0]
    assert "accuracy=" in runs["evaluate"].stdout


def _refusal(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


def test_mismatched_side_networks_and_options_are_refused(setup, tmp_path):
    llama, opt = setup["llama"], setup["opt"]
    on = lambda case: ["--runtime", "onnx", "--bundle", str(case["bundle"])]  # noqa: E731
    cls = str(llama["sides"]["mlp"])

    def altered(name: str, **fields) -> str:
        """A copy of the llama classifier with other config fields."""
        (tmp_path / name).mkdir()
        config = SideConfig.from_pretrained(cls).model_dump() | fields
        (tmp_path / name / "side_config.json").write_text(json.dumps(config))
        (tmp_path / name / "side_network.safetensors").write_bytes(Path(cls, "side_network.safetensors").read_bytes())
        return str(tmp_path / name)

    # another backbone's width, other shortcut layers, another tokenizer
    assert "trained on another backbone (H=64" in _refusal("predict", "x", "--side-network", altered("wide", hidden_size=64),
                                                           *on(llama))
    message = _refusal("evaluate", "--side-network", altered("other", shortcuts=[1, 4]), "--data", str(setup["data"]),
                       *on(llama))
    assert "--bundle" in message and "mobillm export --shortcuts 1,4" in message
    message = _refusal("predict", "x", "--side-network", altered("tokens", label_token_ids=[7, 8]), *on(llama))
    assert "reads label tokens [7, 8]" in message and "trained on another model" in message
    # the command's task, and the runtime's options
    assert "use mobillm generate" in _refusal("predict", "x", "--side-network", str(opt["sides"]["lm-mlp"]), *on(opt))
    assert "use mobillm predict / evaluate" in _refusal("generate", "x", "--side-network", cls, *on(llama))
    assert "--runtime torch" in _refusal("evaluate", "--side-network", str(opt["sides"]["lm-mlp"]), "--data",
                                         str(setup["data"]), *on(opt))
    assert "give --bundle DIR" in _refusal("predict", "x", "--side-network", cls, "--runtime", "onnx")
    assert "add --runtime onnx or drop --bundle" in _refusal("generate", "x", "--bundle", str(llama["bundle"]))
    assert "decodes greedily" in _refusal("generate", "x", "--side-network", str(llama["sides"]["lm-mlp"]),
                                          "--temperature", "0.8", *on(llama))
    assert "--max-new-tokens must be >= 1" in _refusal("generate", "x", "--side-network", str(llama["sides"]["lm-mlp"]),
                                                       "--max-new-tokens", "0", *on(llama))


def test_numpy_side_network_reads_the_gate_temperature(setup):
    """sigmoid(alpha / T): a side network trained with the LST gate temperature runs as trained."""
    side = SideNetwork.from_pretrained(setup["llama"]["sides"]["attention"])
    assert side.config.gate_temperature == 0.1
    acts = torch.randn(2, 5, 2, 32) * 3
    with torch.no_grad():
        want = side.hidden(acts).numpy()
    got = NpSideNetwork(side.config.model_dump(), {k: v.numpy() for k, v in side.state_dict().items()}).hidden(acts.numpy())
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.real
def test_smollm2_chat_template_renders_as_transformers(smollm2):
    """SmolLM2-Instruct's own chat template: the bundle's jinja2 rendering tokenizes to the torch device's prompt."""
    from mobillm.bundle.prompt import render_user_turn

    _, tokenizer = smollm2
    special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token}
    backend = tokenizer.backend_tokenizer
    for prompt in ("What is the sentiment of this review?\n\nA gorgeous, witty film.", "héllo — ünïcode"):
        got = backend.encode(render_user_turn(tokenizer.chat_template, prompt, special), add_special_tokens=False).ids
        assert got == LMBatcher(tokenizer).prompt_ids(prompt) and len(got) > 10, prompt
