"""Generation prompts on a bundle: :meth:`mobillm.data.lm.LMBatcher.prompt_ids` without transformers.

With a chat template (``bundle.json``'s ``chat_template``) the prompt becomes a user turn followed by the assistant
cue, rendered by jinja2 in a sandbox with the settings transformers renders chat templates with, then tokenized
without special tokens (the template writes them); without one it is the plain text, special tokens added.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mobillm.bundle.runtime import Bundle
from mobillm.exceptions import ConfigError

__all__ = ["prompt_ids", "render_user_turn"]


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=4)
def _compile(chat_template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(chat_template)


def render_user_turn(chat_template: str, prompt: str, special_tokens: dict[str, str]) -> str:
    """The text of one user turn holding ``prompt`` and the assistant cue (``add_generation_prompt``)."""
    try:
        return _compile(chat_template).render(
            messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, **special_tokens)
    except jinja2.exceptions.TemplateError as err:
        raise ConfigError(f"the bundle's chat template failed on this prompt: {err}") from err


def prompt_ids(bundle: Bundle, prompt: str) -> list[int]:
    """Token ids that cue the response, as the torch device's ``LMBatcher.prompt_ids`` gives them."""
    c, tokenizer = bundle.config, bundle.tokenizer
    if c.chat_template and prompt:
        names = {"bos_token": c.bos_token_id, "eos_token": c.eos_token_ids[0] if c.eos_token_ids else None}
        special = {k: tokenizer.tokenizer.id_to_token(i) for k, i in names.items() if i is not None}
        return tokenizer.encode(render_user_turn(c.chat_template, prompt, special), add_special_tokens=False)
    return tokenizer.encode(prompt)
