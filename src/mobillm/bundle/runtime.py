"""Run a device bundle with ONNX Runtime, ``tokenizers`` and numpy — never torch or transformers (design §3).

:class:`Bundle` gives the device what :class:`~mobillm.device.taps.TappedBackbone` gives the torch device: the
shortcut layers' hidden states at every position (:meth:`Bundle.taps`), a generation step on a KV cache
(:meth:`Bundle.step`) and the frozen head, over the whole vocabulary (:meth:`Bundle.logits`) or a verbalizer's
label tokens (:meth:`Bundle.label_logits`). :class:`BundleTokenizer` produces the ids
and right-padded batches the torch batcher produces for the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from safetensors import safe_open
from tokenizers import Tokenizer

from mobillm.bundle.config import (
    DYNAMIC_INT8_FORMATS,
    GENERATE_NAME,
    HEAD_NAME,
    LM_HEAD_NAME,
    NORM_NAME,
    TAPS_NAME,
    TOKENIZER_NAME,
    BundleConfig,
    cache_names,
    tap_name,
)
from mobillm.exceptions import ConfigError, ModelLoadError
from mobillm.truncation import cut_text

__all__ = ["Bundle", "BundleTokenizer", "TokenBatch"]

Cache = list[np.ndarray]  # past key, past value per decoder layer: (B, kv, P, d) float32 each


@dataclass
class TokenBatch:
    """A right-padded batch, as :class:`mobillm.data.batching.EncodedBatch` holds it (numpy, int64)."""

    input_ids: np.ndarray  # (B, T)
    attention_mask: np.ndarray  # (B, T), 1 = real token
    last_index: np.ndarray  # (B,) position of each row's last real token

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class BundleTokenizer:
    """``tokenizer.json`` with the torch batcher's conventions: special tokens added, right padding with ``pad_id``."""

    def __init__(self, tokenizer: Tokenizer, pad_id: int):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer, self.pad_id = tokenizer, pad_id

    @classmethod
    def from_file(cls, path: str | Path, pad_id: int) -> "BundleTokenizer":
        return cls(Tokenizer.from_file(str(path)), pad_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def prompt_ids(self, prefix: str, texts: Sequence[str], suffix: str, max_length: int) -> list[list[int]]:
        """Ids of ``prefix + text + suffix`` for each text, the text cut from its end to fit ``max_length``
        (the classification prompts of :class:`mobillm.data.batching.Batcher`, with a fast tokenizer)."""
        if max_length < 1:
            raise ConfigError(f"max_length must be a positive number of tokens, got {max_length!r}")
        encodings = self.tokenizer.encode_batch([prefix + t + suffix for t in texts], add_special_tokens=True)
        start = len(prefix)
        return [
            cut_text(e.ids, e.offsets, e.special_tokens_mask, start, start + len(t), max_length)
            for t, e in zip(texts, encodings)
        ]

    def pad(self, rows: Sequence[Sequence[int]]) -> TokenBatch:
        """Right-pad token rows to the longest."""
        if not rows or any(not r for r in rows):
            raise ConfigError("cannot pad an empty batch or an empty row")
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.full((len(rows), int(lengths.max())), self.pad_id, dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, : len(row)] = row
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        return TokenBatch(ids, mask, lengths - 1)


class Bundle:
    """A loaded device bundle. The generation graph and the head are opened on first use (training needs neither)."""

    def __init__(self, directory: Path, config: BundleConfig, tokenizer: BundleTokenizer, threads: int):
        self.directory, self.config, self.tokenizer, self.threads = directory, config, tokenizer, threads
        self._taps = self._session(TAPS_NAME)
        self._generate: ort.InferenceSession | None = None
        self._head: ort.InferenceSession | None = None
        self._norm: ort.InferenceSession | None = None
        self._rows: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray | None]] = {}
        self.tap_names = [tap_name(s) for s in config.shortcuts]
        self.present_names = cache_names(config.cache_layers, "present")
        self.past_names = cache_names(config.cache_layers, "past")

    @classmethod
    def load(cls, directory: str | Path, threads: int = 1) -> "Bundle":
        """Open the bundle in ``directory`` (written by ``mobillm export``), running on ``threads`` CPU threads."""
        directory = Path(directory)
        config = BundleConfig.load(directory)
        missing = [n for n in (TAPS_NAME, TOKENIZER_NAME) if not (directory / n).is_file()]
        if missing:
            raise ModelLoadError(f"{directory}: bundle incomplete, missing {missing}; re-run `mobillm export`")
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        return cls(directory, config, BundleTokenizer.from_file(directory / TOKENIZER_NAME, config.pad_token_id), threads)

    def _session(self, name: str) -> ort.InferenceSession:
        path = self.directory / name
        if not path.is_file():
            raise ModelLoadError(f"{self.directory}: bundle has no {name}; re-run `mobillm export` "
                                 "(without --no-generate, for generation)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers etc. are not the user's concern
        # Device memory (SmolLM2-135M, B 16 / T 128, one thread; BENCHMARKS §19): the memory pattern pre-plans one
        # block per shape and costs 70-80 MiB of peak for no measured speed; int8-dynamic's pre-packed weights are
        # a second copy of them (-65 MiB more without, speed within noise)
        options.enable_mem_pattern = False
        if self.config.weights in DYNAMIC_INT8_FORMATS:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def taps(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        """(B, T) int64 ids and mask -> one (B, T, H) float32 hidden state per shortcut layer, bottom to top."""
        feed = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
        return self._taps.run(self.tap_names, feed)

    def step(self, input_ids: np.ndarray, cache: Cache | None = None) -> tuple[list[np.ndarray], Cache]:
        """Generation: taps (B, T, H) of the new tokens on top of ``cache``; returns ``(taps, cache)``.

        Rows are unpadded (every position real), as in :meth:`TappedBackbone.step`."""
        if self._generate is None:
            self._generate = self._session(GENERATE_NAME)
        input_ids = np.asarray(input_ids, np.int64)
        if cache is None:
            c = self.config
            empty = np.zeros((input_ids.shape[0], c.kv_heads, 0, c.head_dim), np.float32)
            cache = [empty] * len(self.past_names)
        outputs = self._generate.run(self.tap_names + self.present_names, {"input_ids": input_ids, **dict(zip(self.past_names, cache))})
        return outputs[: len(self.tap_names)], outputs[len(self.tap_names):]

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """The frozen head (final norm, LM head) on top hidden states: (N, H) -> (N, V) float32."""
        if self._head is None:
            self._head = self._session(HEAD_NAME)
        hidden = np.asarray(hidden, np.float32)
        return self._head.run(["logits"], {"hidden": hidden.reshape(-1, hidden.shape[-1])})[0]

    def label_logits(self, hidden: np.ndarray, token_ids: Sequence[int]) -> np.ndarray:
        """The frozen head on top hidden states, on the vocabulary rows ``token_ids`` only (a verbalizer's label
        tokens): (N, H) -> (N, len(token_ids)) float32, :meth:`logits`' columns ``token_ids``.

        Only those rows of the LM head are read (from ``lm_head.safetensors``, memory-mapped): the whole head is
        a second copy of the taps graph's tied input embedding (SmolLM2-135M: 113 MB; BENCHMARKS §12)."""
        if self._norm is None:
            self._norm = self._session(NORM_NAME)
        key = tuple(int(i) for i in token_ids)
        if key not in self._rows:
            self._rows[key] = self._head_rows(key)
        weight, bias = self._rows[key]
        hidden = np.asarray(hidden, np.float32)
        normed = self._norm.run(["normed"], {"hidden": hidden.reshape(-1, hidden.shape[-1])})[0]  # (N, H')
        logits = normed @ weight.T  # (N, len(token_ids))
        return logits if bias is None else logits + bias

    def _head_rows(self, token_ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        path = self.directory / LM_HEAD_NAME
        if not path.is_file():
            raise ModelLoadError(f"{self.directory}: bundle has no {LM_HEAD_NAME}; re-run `mobillm export`")
        vocab = self.config.vocab_size
        bad = [i for i in token_ids if not 0 <= i < vocab]
        if bad:
            raise ConfigError(f"label token ids {bad} are outside the bundle's vocabulary (0..{vocab - 1})")
        with safe_open(str(path), framework="numpy") as f:
            def take(name: str) -> np.ndarray:  # a row per id, each read on its own: slices are ranges
                tensor = f.get_slice(name)
                return np.concatenate([tensor[i:i + 1] for i in token_ids]).astype(np.float32)

            return take("weight"), take("bias") if "bias" in f.keys() else None  # (K, H'), (K,)
