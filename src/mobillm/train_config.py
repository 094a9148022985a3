"""Training hyper-parameters, shared by ``mobillm train``, the server's sessions and the benchmarks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mobillm.configs import Config

Method = Literal["side", "lora", "bitfit", "full"]
Schedule = Literal["constant", "linear", "cosine", "rsqrt"]

#: Per-method defaults, chosen on SST-2 validation accuracy (see BENCHMARKS.md).
DEFAULT_LR: dict[str, float] = {"side": 1e-3, "lora": 5e-4, "bitfit": 1e-3, "full": 2e-5}
DEFAULT_EPOCHS: dict[str, int] = {"side": 6, "lora": 1, "bitfit": 1, "full": 1}


class TrainConfig(Config):
    """Optimisation settings. ``lr``/``epochs`` left at ``None`` take the method's default."""

    method: Method = "side"
    lr: float | None = Field(None, gt=0)
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    schedule: Schedule = "cosine"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    warmup_steps: int | None = Field(
        None, ge=0, description="warm-up length in steps, replacing warmup_ratio: with the 'constant' or 'rsqrt' "
        "schedule nothing then depends on the total number of steps (a device stream may stop at any time)")
    weight_decay: float = Field(0.0, ge=0)
    # 7 won on validation at N 1,000 and 2,000 on SST-2 and the packaged task (BENCHMARKS §18).
    ema_gamma: float | None = Field(
        7.0, ge=0, description="side network only: validate and ship a power-function EMA of its weights (Karras et al. "
        "2024, arXiv 2312.02696): after t steps the average weighs step s by about s^gamma, so its window is a fixed "
        "fraction of the steps so far and needs no total (0: the uniform average of every step; None: the last step's "
        "weights). The baselines ignore it")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="side network only: label smoothing of its cross-entropy (Szegedy et al. 2016)")
    token_dropout: float = Field(
        0.0, ge=0, lt=1, description="side network only, classification with token-mixing blocks: in each training "
        "step every real position but the pivot is hidden from the side blocks with this probability (word dropout, "
        "Iyyer et al. 2015, on the taps: the device's activations of a sentence become many views of it)")
    bagging: bool = Field(
        False, description="side network ensembles (SideConfig.members > 1): online bagging (Oza & Russell 2001) — "
        "member j weighs each training sample by a Poisson(1) draw fixed by (seed, j, sample id), so that the members "
        "see different bootstrap replicates of the device's stream, and of the cache's epochs alike")
    max_grad_norm: float = Field(1.0, gt=0)
    patience: int = Field(3, ge=1, description="evaluations without a validation gain before stopping")
    evals_per_epoch: int = Field(1, ge=1)
    idle_replays: int = Field(
        0, ge=0, description="server: while it waits for the device's next batch, train again on the batches of the "
        "live epoch received so far, each up to this many times (0: never; depends on timing, so not reproducible)")
    seed: int = 0
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def num_epochs(self) -> int:
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.method]
