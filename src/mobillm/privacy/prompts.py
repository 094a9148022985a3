"""The prompts an audit attacks: token ids exactly as the device sends them, which positions hold the user's text
(the template's words are public), and planted canaries — made-up names and digits inserted into public sentences.
Never real user data: the victim texts are a public corpus, the canaries are generated here."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mobillm.data import Batcher

__all__ = ["AuditPrompt", "make_canary", "plant_canaries", "tokenize_prompts"]

_SYLLABLES = ["zor", "vak", "quim", "bly", "tran", "dex", "olu", "marn", "fesk", "ithe", "grob", "wuln", "pax", "yre"]


@dataclass
class AuditPrompt:
    """One prompt: ``ids`` (T,) as sent, ``text_mask`` (T,) True at the user's text tokens, canary token spans."""

    text: str
    ids: list[int]
    text_mask: list[bool]
    canaries: list[tuple[int, int]] = field(default_factory=list)  # [start, end) token positions


def make_canary(rng: random.Random) -> str:
    """A made-up full name and a 4-digit number, e.g. ``"Quimvak Dexolu 4719"``."""
    name = lambda: "".join(rng.choice(_SYLLABLES) for _ in range(2)).capitalize()  # noqa: E731
    return f"{name()} {name()} {''.join(rng.choice('0123456789') for _ in range(4))}"


def plant_canaries(texts: list[str], seed: int = 0) -> list[tuple[str, tuple[int, int]]]:
    """Each text with one canary inserted at a word boundary: ``(text, (char_start, char_end))`` of the canary."""
    rng = random.Random(f"mobillm-canary:{seed}")
    out = []
    for text in texts:
        words = text.split(" ")
        at = rng.randint(0, len(words))
        canary = make_canary(rng)
        before = " ".join(words[:at])
        start = len(before) + (1 if before else 0)
        planted = " ".join([*words[:at], canary, *words[at:]])
        out.append((planted, (start, start + len(canary))))
    return out


def tokenize_prompts(batcher: Batcher, texts: list[str], canary_chars: list[tuple[int, int] | None] | None = None) -> list[AuditPrompt]:
    """The device's token ids of each text's prompt, with the text/template split and the canaries' token spans.

    A token belongs to the text (or to a canary) when its character span overlaps it; prompts that the batcher
    had to truncate are refused (their offsets would not match).
    """
    tokenizer, template = batcher.tokenizer, batcher.template
    ids = batcher.token_ids(texts)
    enc = tokenizer([template.format(t) for t in texts], return_offsets_mapping=True, add_special_tokens=True)
    prompts = []
    for n, text in enumerate(texts):
        if list(enc["input_ids"][n]) != ids[n]:
            raise ValueError(f"prompt {n} was truncated to --max-length; audit shorter texts")
        offsets = enc["offset_mapping"][n]
        begin = len(template.prefix)

        def overlaps(lo: int, hi: int) -> list[bool]:
            return [e > lo and s < hi and e > s for s, e in offsets]

        mask = overlaps(begin, begin + len(text))
        spans = []
        if canary_chars and canary_chars[n] is not None:
            lo, hi = canary_chars[n]
            inside = [i for i, hit in enumerate(overlaps(begin + lo, begin + hi)) if hit]
            spans.append((inside[0], inside[-1] + 1))
        prompts.append(AuditPrompt(text, ids[n], mask, spans))
    return prompts
