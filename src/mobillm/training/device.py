"""Where the server trains: ``--device auto|cpu|cuda|cuda:N`` resolved to a :class:`torch.device`."""

from __future__ import annotations

import re

import torch

from mobillm.exceptions import ConfigError

_SPEC = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def resolve_device(spec: str) -> torch.device:
    """``auto`` (the first CUDA device when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Asking for CUDA where there is none, or for a device index the machine does not have, is a
    :class:`ConfigError` naming ``--device``: a job never falls back to the CPU silently.
    """
    match = _SPEC.fullmatch(spec.strip().lower())
    if match is None:
        raise ConfigError(f"--device {spec!r}: choose auto, cpu, cuda or cuda:N")
    kind = match.group(0)
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if kind == "auto":
        return torch.device("cuda", 0)
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: this machine has no CUDA device that torch can use; pass --device cpu or auto")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)
