"""The side network the server trains and the device downloads: config, blocks, model.

Only the config is imported eagerly: it needs no torch, so a device without torch validates and sends it
(``from mobillm.sidenet.config import SideConfig``); the blocks and the model (torch) load on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mobillm.sidenet.config import SideConfig

if TYPE_CHECKING:
    from mobillm.sidenet.blocks import SIDE_BLOCKS, register_block
    from mobillm.sidenet.model import SideNetwork

__all__ = ["SIDE_BLOCKS", "SideConfig", "SideNetwork", "register_block"]

_LAZY = {"SIDE_BLOCKS": "mobillm.sidenet.blocks", "register_block": "mobillm.sidenet.blocks",
         "SideNetwork": "mobillm.sidenet.model"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mobillm.sidenet' has no attribute {name!r}")
