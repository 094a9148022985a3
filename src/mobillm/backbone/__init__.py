"""The frozen backbone as both sides see it: loading (aliases, GGUF, directories, hub ids, device checkpoints),
the shortcut layers, the frozen head and the fingerprint. Nothing here trains."""

from mobillm.backbone.head import FrozenHead, fingerprint, label_token_ids
from mobillm.backbone.loading import (
    ALIASES,
    DEFAULT_MODEL,
    ModelSource,
    decoder_layers,
    load_pretrained,
    package_dir,
    public_model_id,
    resolve_model,
)
from mobillm.backbone.shortcuts import (
    DEFAULT_NUM_SHORTCUTS,
    default_shortcuts,
    parse_shortcuts,
    uniform_shortcuts,
    validate_shortcuts,
)

__all__ = [
    "ALIASES", "DEFAULT_MODEL", "DEFAULT_NUM_SHORTCUTS", "FrozenHead", "ModelSource", "decoder_layers",
    "default_shortcuts", "fingerprint", "label_token_ids", "load_pretrained", "package_dir", "parse_shortcuts",
    "public_model_id", "resolve_model", "uniform_shortcuts", "validate_shortcuts",
]
