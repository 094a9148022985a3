"""A job's folder on the server, and resuming from it: everything a restarted server needs is here.

    hello.json                the Hello the job was started with (no token)
    done.json                 the device epochs the device finished sending
    checkpoint.safetensors    the last epoch checkpoint (:mod:`mobillm.server.checkpoint`)
    metrics.jsonl             the job's metrics log
    cache/                    the activation cache, one file per batch (:mod:`mobillm.server.cache`)
    side_network/             the trained side network, when training finished
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from mobillm.exceptions import ProtocolError
from mobillm.files import METRICS_NAME, write_atomic
from mobillm.server.cache import ActivationCache
from mobillm.server.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from mobillm.training.loop import FitState
from mobillm.training.side_trainer import SideTrainer
from mobillm.wire.errors import ErrorCode
from mobillm.wire.messages import Batch, Hello, decode_message

HELLO_NAME, DONE_NAME = "hello.json", "done.json"


@dataclass(frozen=True)
class HeldBatch:
    """A batch a previous server process left in the cache."""

    seq: int
    split: str
    epoch: int
    nbytes: int
    samples: int


class JobDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def side_network_dir(self) -> Path:
        return self.path / "side_network"

    def start_fresh(self, hello: Hello) -> None:
        """A new run of the job: nothing of the last one is kept; the Hello is stored for a later resume."""
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        for name in (CHECKPOINT_NAME, DONE_NAME, METRICS_NAME):
            (self.path / name).unlink(missing_ok=True)
        write_atomic(self.path / HELLO_NAME, hello.model_dump_json(exclude={"token", "resume"}))

    def stored_hello(self) -> Hello | None:
        """The Hello the job on disk was started with (None: no job here)."""
        path = self.path / HELLO_NAME
        if not path.is_file():
            return None
        try:
            return Hello.model_validate_json(path.read_text())
        except ValidationError:
            raise ProtocolError(ErrorCode.BAD_HEADER, f"{path} was written by another mobillm version; start the job "
                                              "afresh (connect without resume) or use another job name") from None

    def done_epochs(self) -> set[int]:
        path = self.path / DONE_NAME
        return set(json.loads(path.read_text())) if path.is_file() else set()

    def mark_done(self, epochs: set[int]) -> None:
        write_atomic(self.path / DONE_NAME, json.dumps(sorted(epochs)))

    def save_checkpoint(self, trainer: SideTrainer, state: FitState, samples_trained: int) -> None:
        save_checkpoint(self.path / CHECKPOINT_NAME, trainer, state, samples_trained)

    def load_checkpoint(self, trainer: SideTrainer) -> tuple[FitState | None, int]:
        """Restore ``trainer`` from the last epoch checkpoint: its fit state and samples trained ((None, 0): none)."""
        path = self.path / CHECKPOINT_NAME
        return load_checkpoint(path, trainer) if path.is_file() else (None, 0)

    def restore_cache(self, cache: ActivationCache) -> list[HeldBatch]:
        """The cached batches up to the first gap, in order; those past it are deleted (the device resends them)."""
        last = -1
        for seq in cache.restore():
            if seq != last + 1:
                break
            last = seq
        cache.drop_from(last + 1)
        held = []
        for seq in range(last + 1):
            data = cache.get(seq)
            frame = decode_message(data)
            batch: Batch = frame.header
            held.append(HeldBatch(seq, batch.split, batch.epoch, len(data), len(frame.tensors["sample_ids"])))
        return held
