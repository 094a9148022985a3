"""Prompt templates for classification: the text goes into ``{text}``; the model reads the prompt's last token.

The verbaliser ``label_words`` are the tokens whose logits score each label at that last ("pivot") token; they start
with a space because they follow the prompt's final ``:`` as the next word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mobillm.exceptions import ConfigError

__all__ = ["DEFAULT_LABEL_WORDS", "DEFAULT_TEMPLATE", "TEXT_FIELD", "PromptTemplate", "default_template"]

TEXT_FIELD = "{text}"
DEFAULT_TEMPLATE = "Review: {text}\nSentiment (positive or negative):"
DEFAULT_LABEL_WORDS = [" negative", " positive"]
_SENTIMENT_NAMES = {"negative", "neutral", "positive"}


@dataclass(frozen=True)
class PromptTemplate:
    """``template`` holds ``{text}`` exactly once; ``label_words[i]`` verbalises label ``i``."""

    template: str = DEFAULT_TEMPLATE
    label_words: list[str] = field(default_factory=lambda: list(DEFAULT_LABEL_WORDS))

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.template, str):
            problems.append(f"template must be a string containing {TEXT_FIELD}, got {self.template!r}")
        elif self.template.count(TEXT_FIELD) != 1:
            found = self.template.count(TEXT_FIELD)
            problems.append(f"template must contain {TEXT_FIELD} exactly once (found {found}): {self.template!r}")
        words = self.label_words
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
            problems.append(f"label_words must be a list of strings, got {words!r}")
        else:
            if len(words) < 2:
                problems.append(f"label_words needs one word per label (at least two), got {list(words)}")
            if any(not w.strip() for w in words):
                problems.append(f"label_words must not be empty or blank: {list(words)}")
            if len(set(words)) != len(words):
                problems.append(f"label_words must be distinct: {list(words)}")
            object.__setattr__(self, "label_words", list(words))
        if problems:
            raise ConfigError(problems)

    @property
    def prefix(self) -> str:
        """The template before ``{text}``."""
        return self.template.split(TEXT_FIELD)[0]

    @property
    def suffix(self) -> str:
        """The template after ``{text}``: the cue whose last token the classifier reads."""
        return self.template.split(TEXT_FIELD)[1]

    @property
    def num_labels(self) -> int:
        return len(self.label_words)

    def format(self, text: str) -> str:
        """The prompt for ``text`` (braces in the text are kept as they are)."""
        return self.prefix + text + self.suffix

    def check_labels(self, label_names: list[str]) -> PromptTemplate:
        """ConfigError unless there is exactly one label word per label name; returns self."""
        if len(self.label_words) != len(label_names):
            raise ConfigError(
                f"label_words has {len(self.label_words)} words {self.label_words} but the data set has "
                f"{len(label_names)} labels {list(label_names)}; give one word per label"
            )
        return self


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def default_template(label_names: list[str] | None = None) -> PromptTemplate:
    """A template listing the label names, with label words ``" " + name``.

    Binary sentiment (``["negative", "positive"]``) gets exactly :data:`DEFAULT_TEMPLATE`; other sentiment labels get
    ``"Review: {text}\\nSentiment (a, b or c):"`` and any other labels ``"Text: {text}\\nLabel (a, b or c):"``.
    """
    names = list(label_names) if label_names is not None else ["negative", "positive"]
    if len(names) < 2:
        raise ConfigError(f"a classification template needs at least two label names, got {names}")
    words = [" " + n for n in names]
    if sorted(names) == ["negative", "positive"]:
        return PromptTemplate(DEFAULT_TEMPLATE, words)
    if set(names) <= _SENTIMENT_NAMES:
        return PromptTemplate(f"Review: {TEXT_FIELD}\nSentiment ({_listing(names)}):", words)
    return PromptTemplate(f"Text: {TEXT_FIELD}\nLabel ({_listing(names)}):", words)
