"""Choosing the shortcut layers the device taps (design §2): ``auto``, ``uniform``, or an explicit list."""

from __future__ import annotations

import math

from mobillm.exceptions import ConfigError

DEFAULT_NUM_SHORTCUTS = 6


def default_shortcuts(num_layers: int, count: int = DEFAULT_NUM_SHORTCUTS) -> list[int]:
    """Non-uniform shortcut layers, finer towards the top: ``round(L * sqrt(i / M))``, always incl. L."""
    count = max(1, min(count, num_layers))
    picks = sorted({max(1, round(num_layers * math.sqrt(i / count))) for i in range(1, count + 1)})
    return picks


def uniform_shortcuts(num_layers: int, count: int = DEFAULT_NUM_SHORTCUTS) -> list[int]:
    count = max(1, min(count, num_layers))
    return sorted({round(num_layers * i / count) for i in range(1, count + 1)})


def parse_shortcuts(value: str | list[int] | None, num_layers: int) -> list[int]:
    """Shortcut layers from CLI text: ``None``/``"auto"``, ``"uniform"``, ``"auto:4"``, or ``"12,17,30"``.

    Layer numbers are 1-based: layer ``s`` is the output of the ``s``-th decoder block.
    """
    if value is None or value == "" or value == "auto":
        return default_shortcuts(num_layers)
    if isinstance(value, str):
        kind, _, count = value.partition(":")
        if kind in ("auto", "uniform"):
            try:
                n = int(count) if count else DEFAULT_NUM_SHORTCUTS
            except ValueError:
                raise ConfigError(f"shortcuts: {value!r} — the count after ':' must be an integer") from None
            return (default_shortcuts if kind == "auto" else uniform_shortcuts)(num_layers, n)
        try:
            value = [int(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise ConfigError(
                f"shortcuts: {value!r} is not 'auto', 'uniform' or a comma-separated list of layer numbers"
            ) from None
    return validate_shortcuts(list(value), num_layers)


def validate_shortcuts(shortcuts: list[int], num_layers: int) -> list[int]:
    problems = []
    if not shortcuts:
        problems.append("shortcuts: the list is empty")
    bad = [s for s in shortcuts if not 1 <= s <= num_layers]
    if bad:
        problems.append(f"shortcuts: {bad} out of range — valid layers are 1..{num_layers}")
    dupes = sorted({s for s in shortcuts if shortcuts.count(s) > 1})
    if dupes:
        problems.append(f"shortcuts: duplicate layers {dupes}")
    if problems:
        raise ConfigError(problems)
    return sorted(shortcuts)
