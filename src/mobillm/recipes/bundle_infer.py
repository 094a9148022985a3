"""``mobillm predict / evaluate / generate --runtime onnx --bundle DIR``: the downloaded side network run locally on
a device bundle, with neither torch nor transformers in the process (design §3).

:class:`BundleClassifier` is the classification arithmetic the bundle's device job scores with too
(:mod:`mobillm.recipes.bundle_device`): the prompts tokenized as the torch batcher does, the taps through the
codec's round trip as the server saw them, the numpy side network, the verbalizer rows of the bundle's head.
:class:`BundleInference` pairs a bundle with a saved side network and refuses a pair that does not belong together.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from mobillm.bundle.generate import BundleGenerator
from mobillm.bundle.prompt import prompt_ids
from mobillm.bundle.runtime import Bundle, TokenBatch
from mobillm.bundle.sidenet import NpSideNetwork
from mobillm.data import load_dataset
from mobillm.data.order import batch_chunks
from mobillm.data.templates import PromptTemplate
from mobillm.device.noise import ActivationNoise
from mobillm.exceptions import ConfigError
from mobillm.files import SIDE_WEIGHTS_NAME
from mobillm.metrics import classification_scores
from mobillm.recipes.options import require_task
from mobillm.sidenet.config import SideConfig
from mobillm.wire.np_codecs import NpCodec, get_np_codec

__all__ = ["BundleClassifier", "BundleInference"]


class BundleClassifier:
    """A classification side network's prompts on a bundle: taps as the device sends them, label logits as the
    torch device scores them."""

    def __init__(self, bundle: Bundle, config: SideConfig, template: PromptTemplate, codec: NpCodec, max_length: int):
        self.bundle, self.config, self.template, self.codec, self.max_length = bundle, config, template, codec, max_length
        self.pivot = config.pivot_only
        self.label_ids = np.array(config.label_token_ids, np.int64)

    def tap(self, texts: Sequence[str], noise: ActivationNoise | None = None, split: str = "train",
            sample_ids: np.ndarray | None = None) -> tuple[TokenBatch, list[np.ndarray], list[dict[str, np.ndarray]]]:
        """``(token batch, raw taps (B, T, H) per shortcut layer, encoded taps as sent)``; the encoded ones hold
        only the pivot token, (B, H), when the side network is token-wise. With ``noise`` every encoded tap
        carries the sample's own draws (``split`` and ``sample_ids`` seed them, as on the torch device); the raw
        taps stay noise-free (the bare backbone's zero-shot view)."""
        tokenizer, t = self.bundle.tokenizer, self.template
        tokens = tokenizer.pad(tokenizer.prompt_ids(t.prefix, list(texts), t.suffix, self.max_length))
        taps = self.bundle.taps(tokens.input_ids, tokens.attention_mask)  # M x (B, T, H)
        rows = np.arange(len(tokens))
        sent = [tap[rows, tokens.last_index] for tap in taps] if self.pivot else taps  # (B, H) or (B, T, H)
        encode = self.codec.encode
        if noise is not None:
            if sample_ids is None:
                raise ValueError("noisy taps need the batch's sample ids (they seed each sample's draws)")
            encode = noise.encoder(encode, split, sample_ids, tokens.last_index if self.pivot else None)
        return tokens, taps, [encode(tap) for tap in sent]

    def label_logits(self, hidden: np.ndarray) -> np.ndarray:
        """(B, H) top hidden states -> (B, num_labels): the frozen head's rows of the label tokens."""
        return self.bundle.label_logits(hidden, self.label_ids)

    def side_logits(self, side: NpSideNetwork, encoded: list[dict[str, np.ndarray]], tokens: TokenBatch) -> np.ndarray:
        """(B, num_labels) of the side network reading the decoded taps, at each row's pivot token."""
        acts = np.stack([self.codec.decode(e) for e in encoded], axis=-2)  # (B, [T,] M, H)
        return side.classify(acts, None if self.pivot else tokens.attention_mask, tokens.last_index, self.label_logits)


class BundleInference:
    """A bundle and a downloaded side network (``side_config.json`` + ``side_network.safetensors``) made for it."""

    def __init__(self, bundle: Bundle, config: SideConfig, side: NpSideNetwork):
        self.bundle, self.config, self.side = bundle, config, side
        self.codec: NpCodec = get_np_codec(config.codec)

    @classmethod
    def load(cls, bundle_dir: Path, side_network: Path, task: str | None, threads: int = 1) -> "BundleInference":
        """Open both and check that the side network was trained on the bundle's backbone and shortcut layers."""
        config = SideConfig.from_pretrained(side_network)
        require_task(config, task, side_network)
        bundle = Bundle.load(bundle_dir, threads=threads)
        c = bundle.config
        if (config.hidden_size, config.num_backbone_layers) != (c.hidden_size, c.num_layers):
            raise ConfigError(
                f"--side-network {side_network} was trained on another backbone (H={config.hidden_size}, "
                f"L={config.num_backbone_layers}) than the bundle --bundle {bundle_dir} holds (H={c.hidden_size}, "
                f"L={c.num_layers}, {c.model}): give the bundle exported from the side network's model")
        if config.shortcuts != c.shortcuts:
            raise ConfigError(
                f"--side-network {side_network} reads layers {config.shortcuts}, the bundle --bundle {bundle_dir} taps "
                f"{c.shortcuts}: export the bundle with `mobillm export --shortcuts {','.join(map(str, config.shortcuts))}`")
        if config.head == "linear":
            raise ConfigError(f"--side-network {side_network} has a linear classifier head, which the bundle runtime "
                              "does not run: use --runtime torch")
        if config.head == "verbalizer":  # the label words' tokens tell another model's tokenizer apart
            words = [" " + n for n in config.label_names]  # default_template's label words
            ids = [(bundle.tokenizer.encode(w, add_special_tokens=False) or [-1])[0] for w in words]
            if ids != config.label_token_ids:
                raise ConfigError(
                    f"--side-network {side_network} reads label tokens {config.label_token_ids} for {words}, the "
                    f"tokenizer of the bundle --bundle {bundle_dir} ({c.model}) gives {ids}: the side network was "
                    "trained on another model; give the bundle exported from its model")
        side = NpSideNetwork(config.model_dump(), load_file(str(Path(side_network) / SIDE_WEIGHTS_NAME)))
        return cls(bundle, config, side)

    def classifier(self, max_length: int) -> BundleClassifier:
        cfg = self.config
        template = PromptTemplate(template=cfg.prompt_template, label_words=[" " + n for n in cfg.label_names])
        return BundleClassifier(self.bundle, cfg, template, self.codec, max_length)

    def predict(self, texts: Sequence[str], max_length: int) -> list[int]:
        """The label id of each text (one batch), as ``mobillm predict`` on the torch runtime."""
        classifier = self.classifier(max_length)
        tokens, _, encoded = classifier.tap(texts)
        return classifier.side_logits(self.side, encoded, tokens).argmax(-1).tolist()

    def evaluate(self, data: str, split: str, *, text_column: str, label_column: str, no_header: bool, seed: int,
                 batch_size: int, max_length: int) -> dict[str, float]:
        """Classification scores on one split of ``data`` (the torch runtime's ``Evaluator.scores``)."""
        if self.config.task != "classification":
            raise ConfigError("--runtime onnx evaluates classification side networks; score a causal-lm one with "
                              "--runtime torch (`mobillm generate --runtime onnx` runs it)")
        dataset = load_dataset(data, text_column=text_column, label_column=label_column, no_header=no_header, seed=seed)
        examples = getattr(dataset, split)
        classifier = self.classifier(max_length)
        predictions: list[int] = []
        for chunk in batch_chunks(len(examples), batch_size, shuffle=False, seed=0):
            tokens, _, encoded = classifier.tap([examples[i].text for i in chunk])
            predictions += classifier.side_logits(self.side, encoded, tokens).argmax(-1).tolist()
        return classification_scores(predictions, [e.label for e in examples], self.config.num_labels)

    def generate(self, prompt: str, max_new_tokens: int, base: bool = False) -> Iterator[int]:
        """New token ids, greedily, up to and including an end-of-sequence token. ``base``: the bare backbone
        (the side network's ``up`` zeroed: a fresh side network's output, the top tap itself)."""
        if max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
        ids = prompt_ids(self.bundle, prompt)
        if not ids:
            raise ConfigError("the prompt is empty and the tokenizer adds no BOS token: give a prompt")
        side = self.side
        if base:
            zeroed = {k: np.zeros_like(side.state[k]) for k in ("up.weight", "up.bias")}
            side = NpSideNetwork(side.config, {**side.state, **zeroed})
        return BundleGenerator(self.bundle, side, self.codec).generate(ids, max_new_tokens)

    @property
    def eos_ids(self) -> set[int]:
        return set(self.bundle.config.eos_token_ids)
