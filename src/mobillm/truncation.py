"""Fitting a classification prompt into ``max_length`` tokens by cutting its text (torch-free).

Shared by the torch batcher (:class:`mobillm.data.batching.Batcher`) and the bundle's tokenizer
(:mod:`mobillm.bundle.runtime`), so both devices feed the backbone the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from mobillm.exceptions import ConfigError


def too_small(max_length: int, fixed: int) -> ConfigError:
    """The error for a template that alone does not fit ``max_length``."""
    return ConfigError(
        f"max_length={max_length} leaves no room for text: the template alone takes {fixed} tokens; "
        "raise max_length or shorten the template"
    )


def cut_text(
    ids: Sequence[int], offsets: Sequence[tuple[int, int]], special: Sequence[int], start: int, end: int,
    max_length: int,
) -> list[int]:
    """``ids`` of one tokenized prompt whose text spans characters ``[start, end)``, cut to ``max_length``.

    Tokens are removed from the text's end, so the template's prefix and cue survive: the result is the full
    prompt with tokens removed from the middle. ``offsets`` and ``special`` (the special-tokens mask) come from
    the same fast tokenization as ``ids``.
    """
    n = len(ids)
    if n <= max_length:
        return list(ids)
    # [0, i): leading specials + prefix; [i, j): tokens touching the text; [j, n): suffix (+ specials)
    i = next((k for k in range(n) if not special[k] and offsets[k][1] > start), n)
    j = next((k for k in range(i, n) if special[k] or offsets[k][1] > end), n)
    keep = max_length - i - (n - j)
    if keep < 0:
        raise too_small(max_length, i + n - j)
    return list(ids[: i + keep]) + list(ids[j:])
