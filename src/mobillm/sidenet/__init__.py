"""The side network the server trains and the device downloads: config, blocks, model."""

from mobillm.sidenet.blocks import SIDE_BLOCKS, register_block
from mobillm.sidenet.config import SideConfig
from mobillm.sidenet.model import SideNetwork

__all__ = ["SIDE_BLOCKS", "SideConfig", "SideNetwork", "register_block"]
