"""A job's training checkpoint: one safetensors file, written at the end of every epoch (write, then rename).

It holds what resuming needs to continue *exactly* as if nothing had happened: the side network (and its weights'
average, with ``ema_gamma``), the AdamW moments, the learning-rate schedule's position, the best weights so far and
:class:`FitState` (epoch, step, best score, early-stopping count, history). Tensors go in the safetensors body;
the scalars in its metadata as JSON. Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from mobillm.files import write_atomic
from mobillm.training.loop import FitState
from mobillm.training.side_trainer import SideTrainer

CHECKPOINT_NAME = "checkpoint.safetensors"
_META = "mobillm_checkpoint"


def save_checkpoint(path: Path, trainer: SideTrainer, state: FitState, samples_trained: int) -> None:
    tensors = {f"side.{k}": v.detach().contiguous() for k, v in trainer.side.state_dict().items()}
    if trainer.average is not None:
        tensors.update({f"average.{k}": v.detach().contiguous() for k, v in trainer.average.state_dict().items()})
    optim = trainer.optimizer.state_dict()
    optim_scalars: dict[str, dict] = {}
    for index, slots in optim["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value.detach().contiguous()
            else:
                optim_scalars.setdefault(str(index), {})[name] = value
    if state.best_state is not None:
        tensors.update({f"best.{k}": v.detach().contiguous() for k, v in state.best_state.items()})
    scheduler = {k: v for k, v in trainer.scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = {
        "fit": {"epoch": state.epoch, "step": state.step, "best": state.best, "best_epoch": state.best_epoch,
                "history": state.history, "bad": state.bad, "stopped": state.stopped,
                "has_best": state.best_state is not None},
        "optimizer": {"param_groups": optim["param_groups"], "scalars": optim_scalars},
        "scheduler": scheduler, "step_count": trainer.step_count, "samples_trained": samples_trained,
    }
    write_atomic(path, save(tensors, metadata={_META: json.dumps(meta)}))


def load_checkpoint(path: Path, trainer: SideTrainer) -> tuple[FitState, int]:
    """Restore ``trainer`` (side network, optimizer, schedule, step) and return the fit state and samples trained."""
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()[_META])
    tensors = load_file(path)
    trainer.side.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("side.")})
    if trainer.average is not None:
        trainer.average.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("average.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    trainer.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    trainer.scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(trainer.optimizer.param_groups)})
    trainer.step_count = meta["step_count"]
    fit = meta["fit"]
    best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} if fit.pop("has_best") else None
    return FitState(**fit, best_state=best_state), meta["samples_trained"]
