"""What the device's forward passes cost (torch-free: the bundle runtime's device counts the same)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TapStats"]


@dataclass
class TapStats:
    """What the device spent: forward seconds, samples and encoded bytes."""

    seconds: float = 0.0
    samples: int = 0
    bytes: int = 0
