"""Gaussian noise on the tapped activations before the codec: a defence against inversion by the server.

The noise is drawn **once per sample**: its seed is ``HMAC-SHA256(secret, "split:sample_id:layer")``, so a batch
resent after a dropped connection, a sample sent again in a later device epoch, or the server's activation cache
replaying it, all carry the same noise — the server can never average several draws of one sample away. The
secret stays on the device; without it the noise is unpredictable.

Strength ``sigma`` is relative to each row: the noise added to one token's hidden state ``h`` (H,) has standard
deviation ``sigma * rms(h)`` in every coordinate, ``rms(h) = sqrt(mean(h**2))``. A per-row scale makes one
``sigma`` mean the same at every layer and position (hidden-state norms grow with depth and differ a lot between
the first token and the rest). Position ``t`` of a sample gets the same draw however the batch was padded and
whether all positions or only the pivot token are sent (the normal draws are a prefix-stable stream per sample).

This is no differential-privacy mechanism: the scale follows the data and nothing bounds the sensitivity, so no
epsilon is claimed. Its effect is measured by ``mobillm privacy-audit`` (docs/privacy.md).

It works on numpy arrays (the bundle runtime) and torch tensors (the torch runtime) alike, and imports torch
only for the latter: the same sample gets the same draws on either.

The secret: ``$MOBILLM_NOISE_SECRET`` (hex or any text) or else the file ``noise_secret`` in the device's
output directory, created with 32 random bytes on first use (mode 0600); keep that directory to resume a job.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from mobillm.exceptions import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["NOISE_SECRET_ENV", "NOISE_SECRET_FILE", "ActivationNoise", "device_noise", "load_secret"]

NOISE_SECRET_ENV = "MOBILLM_NOISE_SECRET"
NOISE_SECRET_FILE = "noise_secret"
Array = TypeVar("Array", np.ndarray, "torch.Tensor")


def load_secret(directory: str | Path) -> bytes:
    """The device's noise secret: ``$MOBILLM_NOISE_SECRET`` or ``directory/noise_secret`` (created if missing)."""
    if value := os.environ.get(NOISE_SECRET_ENV):
        return value.encode()
    path = Path(directory) / NOISE_SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    secret = path.read_bytes()
    if len(secret) < 16:
        raise ConfigError(f"{path} holds {len(secret)} bytes; a noise secret needs at least 16 (delete it to make a new one)")
    return secret


class ActivationNoise:
    """Per-sample Gaussian noise of relative strength ``sigma`` (see the module docstring)."""

    def __init__(self, sigma: float, secret: bytes):
        if not sigma > 0:
            raise ConfigError(f"noise strength must be > 0 (got {sigma}); use --noise 0 for no noise")
        if len(secret) < 16:
            raise ConfigError("the noise secret needs at least 16 bytes")
        self.sigma, self._secret = float(sigma), bytes(secret)

    def _draws(self, split: str, sample_id: int, layer: int, positions: int, width: int) -> np.ndarray:
        """Standard normal draws (positions, width) of one sample and layer; a prefix of a longer request."""
        key = f"mobillm-noise:{split}:{sample_id}:{layer}".encode()
        seed = int.from_bytes(hmac.new(self._secret, key, hashlib.sha256).digest()[:16], "little")
        return np.random.default_rng(seed).standard_normal((positions, width), dtype=np.float32)

    def draws(self, split: str, sample_ids: Sequence[int], layer: int, shape: tuple[int, ...],
              last_index: Sequence[int] | None = None) -> np.ndarray:
        """Standard normal draws of ``shape``: (B, T, H) all positions, or (B, H) pivot tokens at ``last_index``."""
        if len(shape) == 2 and last_index is None:
            raise ValueError("pivot activations (B, H) need last_index to place each row's noise")
        rows = []
        for b, sample in enumerate(int(i) for i in sample_ids):
            if len(shape) == 2:  # the pivot's draw is the same as position last_index's in the all-positions mode
                rows.append(self._draws(split, sample, layer, int(last_index[b]) + 1, shape[-1])[-1])
            else:
                rows.append(self._draws(split, sample, layer, shape[1], shape[-1]))
        return np.stack(rows)

    def apply(self, x: Array, split: str, sample_ids, layer: int, last_index=None) -> Array:
        """``x`` plus noise: (B, T, H) all positions, or (B, H) pivot tokens at ``last_index`` (B,); numpy
        arrays or torch tensors (``sample_ids`` and ``last_index`` of either kind)."""
        ids = sample_ids.tolist()
        index = None if last_index is None else last_index.tolist()
        z = self.draws(split, ids, layer, tuple(x.shape), index)  # (B, H) or (B, T, H)
        if isinstance(x, np.ndarray):
            x = x.astype(np.float32, copy=False)
            rms = np.sqrt(np.square(x).mean(axis=-1, keepdims=True))
            return x + self.sigma * rms * z
        import torch

        x = x.float()
        rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
        return x + self.sigma * rms * torch.from_numpy(z)

    def encoder(self, codec_encode: Callable[[Array], dict], split: str, sample_ids, last_index) -> Callable[[Array], dict]:
        """An ``encode`` for :class:`~mobillm.device.taps.TappedBackbone` (or the bundle runtime's taps): noise,
        then the codec; called once per shortcut layer, bottom to top, within one forward pass."""
        layers = itertools.count()
        return lambda x: codec_encode(self.apply(x, split, sample_ids, next(layers), last_index))


def device_noise(sigma: float, directory: str | Path) -> ActivationNoise | None:
    """The noise of ``--noise sigma`` with the device's secret (:func:`load_secret`); ``None`` for ``sigma == 0``."""
    return ActivationNoise(sigma, load_secret(directory)) if sigma else None
