"""The side network's forward pass in numpy, for a device without torch (the same maths as
:class:`mobillm.sidenet.SideNetwork`; a test holds them equal within 1e-5).

It reads a saved side network (``side_config.json`` + ``side_network.safetensors``) or a config dict and numpy
tensors. The config is read as a plain dict: :mod:`mobillm.sidenet`'s package imports torch (its block
registry), so its validated ``SideConfig`` is not available here; the server validated it when it trained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from mobillm.exceptions import ConfigError
from mobillm.files import SIDE_CONFIG_NAME, SIDE_WEIGHTS_NAME

_EPS_RMS = float(np.finfo(np.float32).eps)  # nn.RMSNorm(eps=None) in float32
_EPS_LN = 1e-5  # nn.LayerNorm's default
#: erf(x) = 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p x), x >= 0: Abramowitz & Stegun 7.1.26, absolute error
#: <= 1.5e-7 — float32's resolution — in numpy's vector arithmetic (``math.erf`` element by element took about half of
#: the side network's time; numpy has no erf and the device installs no scipy).
_ERF_P, _ERF_A = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + _EPS_LN) * weight + bias


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    y = x @ weight.T
    return y if bias is None else y + bias


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _erf(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    t = 1.0 / (1.0 + _ERF_P * a)
    poly = t * (_ERF_A[0] + t * (_ERF_A[1] + t * (_ERF_A[2] + t * (_ERF_A[3] + t * _ERF_A[4]))))
    return np.sign(x) * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    """nn.GELU() (the exact, erf form) in float64, returned in float32."""
    return (0.5 * x * (1.0 + _erf(x.astype(np.float64) / math.sqrt(2.0)))).astype(np.float32)


class NpSideNetwork:
    """Backbone taps (B, [T,] M, H) -> the corrected top hidden state (B, [T,] H), as ``SideNetwork.hidden``; an
    ensemble (``members`` K > 1, tensors ``members.j.*``) -> class log-probabilities, as ``SideNetwork.forward``."""

    def __init__(self, config: Mapping, state: Mapping[str, np.ndarray]):
        self.config = dict(config)
        count = int(self.config.get("members", 1))
        #: An ensemble's ladders, each a one-ladder NpSideNetwork (``None``: this is one ladder).
        self.members = None if count == 1 else [
            NpSideNetwork({**self.config, "members": 1},
                          {k.removeprefix(f"members.{j}."): v for k, v in state.items() if k.startswith(f"members.{j}.")})
            for j in range(count)]
        self.block = self.config.get("block", "attention")
        if self.block not in ("mlp", "attention"):
            raise ConfigError(f"side block {self.block!r}: the numpy side network runs 'mlp' and 'attention' blocks")
        self.heads = int(self.config.get("attention_heads", 4))
        self.width = int(self.config.get("width", 64))
        self.gate_temperature = float(self.config.get("gate_temperature", 1.0))
        self.causal = not self.config.get("bidirectional", False)
        self.num_layers = len(self.config["shortcuts"])
        # an ensemble's tensors live in its members only (one float32 copy on the device)
        self.state = {} if self.members else {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
        missing = [] if self.members else [k for k in ("gate", "up.weight", "up.bias") if k not in self.state]
        if missing:
            raise ConfigError(f"side network tensors missing: {missing}")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "NpSideNetwork":
        directory = Path(directory)
        config_path, weights_path = directory / SIDE_CONFIG_NAME, directory / SIDE_WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ConfigError(f"{directory}: expected {SIDE_CONFIG_NAME} and {SIDE_WEIGHTS_NAME} (a saved side network)")
        return cls(json.loads(config_path.read_text()), load_file(str(weights_path)))

    @property
    def token_wise(self) -> bool:
        return self.block == "mlp"

    def _mlp(self, prefix: str, x: np.ndarray) -> np.ndarray:
        s = self.state
        h = _layer_norm(x, s[f"{prefix}.norm.weight"], s[f"{prefix}.norm.bias"])
        h = _gelu(_linear(h, s[f"{prefix}.mlp.0.weight"], s[f"{prefix}.mlp.0.bias"]))
        return x + _linear(h, s[f"{prefix}.mlp.3.weight"], s[f"{prefix}.mlp.3.bias"])

    def _attention(self, prefix: str, x: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
        """Multi-head self-attention (causal unless the config is bidirectional) + MLP over (B, T, r), as
        ``AttentionBlock``."""
        s = self.state
        B, T, r = x.shape
        d = r // self.heads
        h = _layer_norm(x, s[f"{prefix}.norm1.weight"], s[f"{prefix}.norm1.bias"])
        qkv = _linear(h, s[f"{prefix}.attn.in_proj_weight"], s[f"{prefix}.attn.in_proj_bias"])  # (B, T, 3r)
        q, k, v = (qkv[..., i * r:(i + 1) * r].reshape(B, T, self.heads, d).transpose(0, 2, 1, 3) for i in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(d))  # (B, heads, T, T)
        blocked = np.triu(np.ones((T, T), dtype=bool), 1 if self.causal else T)[None, None]  # True = may not attend
        if attention_mask is not None:
            blocked = blocked | (np.asarray(attention_mask) == 0)[:, None, None, :]
        scores = np.where(blocked, -np.inf, scores)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights = weights / weights.sum(-1, keepdims=True)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, r)
        x = x + _linear(attended, s[f"{prefix}.attn.out_proj.weight"], s[f"{prefix}.attn.out_proj.bias"])
        return self._mlp(f"{prefix}.mlp", x)

    def classify(
        self, acts: np.ndarray, attention_mask: np.ndarray | None, last_index: np.ndarray | None,
        label_logits: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """(B, [T,] M, H) taps -> (B, C) scores: ``label_logits`` (the frozen head's label rows) of the corrected
        top hidden state at each row's pivot token (``last_index``, when every position was sent); an ensemble's
        are the log of its members' mean class probabilities."""
        if self.members is not None:
            logp = [_log_softmax(m.classify(acts, attention_mask, last_index, label_logits)) for m in self.members]
            return np.logaddexp.reduce(np.stack(logp), axis=0) - np.float32(math.log(len(logp)))
        hidden = self.hidden(acts, attention_mask)
        if hidden.ndim == 3:
            hidden = hidden[np.arange(len(hidden)), last_index]  # (B, H) at the pivot token
        return label_logits(hidden)

    def hidden(self, acts: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """(B, [T,] M, H) shortcut activations -> (B, [T,] H) corrected top hidden state (one ladder only)."""
        if self.members is not None:
            raise ConfigError(f"an ensemble of {len(self.members)} ladders has no single hidden state: use classify()")
        acts = np.asarray(acts, np.float32)
        if acts.shape[-2] != self.num_layers:
            raise ConfigError(f"activations of shape {acts.shape}: expected (..., {self.num_layers}, H)")
        if self.block == "attention" and acts.ndim != 4:
            raise ConfigError("the attention side block needs every position: activations of shape (B, T, M, H)")
        s = self.state
        mu = 1.0 / (1.0 + np.exp(-s["gate"] / self.gate_temperature))  # (M,) sigmoid(alpha_i / T)
        h = np.zeros((*acts.shape[:-2], self.width), np.float32)  # (B, [T,] r)
        for i in range(self.num_layers):
            a = acts[..., i, :]
            normed = a / np.sqrt((a * a).mean(-1, keepdims=True) + _EPS_RMS)
            x = mu[i] * h + (1 - mu[i]) * _linear(normed, s[f"down.{i}.weight"], s[f"down.{i}.bias"])
            h = self._mlp(f"blocks.{i}", x) if self.token_wise else self._attention(f"blocks.{i}", x, attention_mask)
        return acts[..., -1, :] + _linear(h, s["up.weight"], s["up.bias"])  # (B, [T,] H)
