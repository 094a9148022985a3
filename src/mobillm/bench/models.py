"""The backbones the benchmarks load: device checkpoints and device bundles made once per (model, weight
format), in a process of their own so that the conversion's memory never counts against the process being
measured."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Callable

from mobillm.bench.io import results_dir

#: Benchmark model names -> what ``mobillm convert --model`` reads; ``opt-1.3b`` is built here, random.
MODELS = {"smollm2-135m": "smollm2-135m", "opt-1.3b": None}


def opt_1_3b():
    """OPT-1.3B's shape with random weights (memory only: no accuracy is read from it)."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, vocab_size=50272,
                       max_position_embeddings=2048, word_embed_proj_dim=2048, dropout=0.0, attention_dropout=0.0)
    return OPTForCausalLM(config).eval().requires_grad_(False)


def placeholder_tokenizer():
    """A four-token fast tokenizer for a random benchmark model that has none (``opt-1.3b``): a bundle must hold a
    ``tokenizer.json``, and the memory benchmark feeds random ids, so no text is ever tokenized with it. A real
    tokenizer's own memory (OPT's 50k-token BPE) is therefore not in such a bundle's rows."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}  # OPT's special ids
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def device_checkpoint(model: str, weights: str) -> Path:
    """``results/checkpoints/MODEL-WEIGHTS``, converted on first use."""
    if model not in MODELS:
        raise SystemExit(f"unknown benchmark model {model!r}: choose {', '.join(MODELS)}")
    path = results_dir("checkpoints") / f"{model}-{weights}"
    _make_once(path, "device_weights.json", f"converting {model} to {weights} device weights",
               lambda tmp: [model, weights, tmp])
    return path


def device_bundle(model: str, weights: str) -> Path:
    """``results/bundles/MODEL-WEIGHTS`` (``mobillm export``, default shortcuts, no generation graph), exported on
    first use; the quantized formats are made from the fp32 bundle, as ``mobillm export --weights`` makes them.
    ``opt-1.3b`` (random weights) gets :func:`placeholder_tokenizer`: its bundles are for memory only."""
    if model not in MODELS:
        raise SystemExit(f"unknown benchmark model {model!r}: choose {', '.join(MODELS)}")
    path = results_dir("bundles") / f"{model}-{weights}"

    def arguments(tmp: str) -> list[str]:  # the source is made first, when the bundle is missing only
        source = device_bundle(model, "fp32") if _from_fp32_bundle(weights) else device_checkpoint(model, "fp32")
        return ["bundle", model, weights, tmp, str(source)]

    _make_once(path, "bundle.json", f"exporting {model} to a {weights} device bundle", arguments)
    return path


def _make_once(path: Path, marker: str, doing: str, arguments: Callable[[str], list[str]]) -> None:
    """Unless ``path`` holds its ``marker`` file, run this module on ``arguments(tmp)`` in a child process, writing
    into a directory of its own, and move that into place as ``path`` in one rename: benchmarks started side by side
    (one per core) each convert, and none reads a half-written ``path``; the first rename wins, the others' copies
    are dropped. A ``path`` without its marker can only be what an interrupted conversion left, and is replaced."""
    if (path / marker).is_file():
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")  # the child creates it, with the usual permissions
    command = [sys.executable, "-m", "mobillm.bench.models", *arguments(str(tmp))]
    print(f"{doing} in {path} …", flush=True)
    if path.is_dir() and not (path / marker).is_file():  # (another process may have made it meanwhile)
        shutil.rmtree(path)
    try:
        subprocess.run(command, check=True,
                       env={**os.environ, "TQDM_DISABLE": "1"})  # transformers' GGUF bar, in every log
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(path)
    except OSError:  # another process's copy is in place (a rename onto a non-empty directory fails)
        if not path.is_dir():
            raise
        shutil.rmtree(tmp)


def _convert(model: str, weights: str, path: str) -> None:
    from mobillm.backbone import load_pretrained
    from mobillm.backbone.weights import save_device_model

    backbone, tokenizer = load_pretrained(MODELS[model]) if MODELS[model] else (opt_1_3b(), None)
    save_device_model(backbone, tokenizer, path, weights, source=model)


def _from_fp32_bundle(weights: str) -> bool:
    """Whether a bundle of ``weights`` is quantized from the fp32 bundle (not exported from the checkpoint)."""
    from mobillm.bundle.config import SMOOTHED_FORMATS

    return weights != "fp32" and weights not in SMOOTHED_FORMATS


def _export(model: str, weights: str, path: str, source: str) -> None:
    """A bundle from the fp32 device checkpoint ``source``, or a quantized one from the fp32 bundle ``source``."""
    from mobillm.export import quantize_bundle

    if _from_fp32_bundle(weights):
        quantize_bundle(source, path, weights, log=print)
        return
    from mobillm.backbone import decoder_layers, default_shortcuts, load_pretrained
    from mobillm.export import export_bundle

    backbone, tokenizer = load_pretrained(source)
    if MODELS[model] is None:  # a random benchmark model: no tokenizer of its own
        tokenizer = placeholder_tokenizer()
    export_bundle(backbone, tokenizer, path, default_shortcuts(len(decoder_layers(backbone))), weights, source=model,
                  log=print, generate=False)  # the benchmarks classify: the taps graph, the norm and the head's rows


if __name__ == "__main__":
    if sys.argv[1] == "bundle":
        _export(*sys.argv[2:6])
    else:
        _convert(*sys.argv[1:4])
