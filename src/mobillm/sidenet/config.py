"""The side network's configuration: everything needed to rebuild it, nothing about where it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mobillm.configs import Config
from mobillm.files import SIDE_CONFIG_NAME

Task = Literal["classification", "causal-lm"]
HeadKind = Literal["verbalizer", "linear", "lm"]
Init = Literal["random", "backbone"]

#: Every side block type and whether it is token-wise, without importing the torch blocks (a device without torch
#: validates configs too); :func:`mobillm.sidenet.blocks.register_block` adds a new type here.
BLOCK_TOKEN_WISE: dict[str, bool] = {"mlp": True, "attention": False}
#: The most ladders one side network may hold (``members``): each costs the server its training and the device its
#: forward pass and download.
MAX_MEMBERS = 16


def _version() -> str:
    from mobillm import __version__

    return __version__


class SideConfig(Config):
    """Shape of the ladder of parallel adapters (design §2). Saved as ``side_config.json``."""

    hidden_size: int = Field(gt=0, description="backbone width H")
    num_backbone_layers: int = Field(gt=0, description="L, to validate the shortcut layers")
    shortcuts: list[int] = Field(min_length=1, description="1-based backbone layers tapped, increasing")
    width: int = Field(64, gt=0, description="adapter width r (the paper's adapter hidden size)")
    # 'attention' won on SST-2 validation accuracy (BENCHMARKS.md); 'mlp' sends only the pivot token (~T x fewer bytes).
    block: str = Field("attention", description="side block type: 'attention' (token-mixing) or 'mlp' (token-wise)")
    attention_heads: int = Field(4, gt=0, description="heads of the 'attention' block")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bidirectional: bool = Field(
        False, description="classification: the 'attention' blocks attend to every real position, later ones too "
        "(LS-LLaMA, Li et al. 2023, arXiv 2310.01208; LLM2Vec, arXiv 2404.05961); False: causal, as the backbone")
    init: Init = Field(
        "random", description="side blocks and down_i: random, or a magnitude-pruned copy of the shortcut layers (LST; "
        "sidenet.init, needs the backbone's layer weights where the side network is created)")
    gate_temperature: float = Field(1.0, gt=0, description="T of the ladder gates mu_i = sigmoid(alpha_i / T) (LST: 0.1)")
    members: int = Field(
        1, ge=1, le=MAX_MEMBERS, description="classification: K ladders from K random initialisations trained side by "
        "side on the same taps, each on its own loss, predicting the mean of their class probabilities (deep "
        "ensembles, Lakshminarayanan et al. 2017)")
    task: Task = "classification"
    head: HeadKind = "verbalizer"
    num_labels: int = Field(2, ge=0)
    label_token_ids: list[int] | None = Field(None, description="verbalizer: first token of each label word")
    label_names: list[str] = Field(default_factory=list, description="class names, index = label id")
    prompt_template: str | None = Field(None, description="the prompt the side network was trained on")
    codec: str = Field("none", description="activation codec it was trained on (local inference uses the same)")
    mobillm_version: str = Field(default_factory=_version)

    @model_validator(mode="after")
    def _check(self) -> "SideConfig":
        problems = []
        if self.block not in BLOCK_TOKEN_WISE:
            problems.append(f"block: {self.block!r} unknown — choose one of {sorted(BLOCK_TOKEN_WISE)}")
        if any(not 1 <= s <= self.num_backbone_layers for s in self.shortcuts) or self.shortcuts != sorted(set(self.shortcuts)):
            problems.append(f"shortcuts: {self.shortcuts} must increase strictly within 1..{self.num_backbone_layers}")
        if self.bidirectional and (self.task != "classification" or self.block != "attention"):
            problems.append("bidirectional: only the 'attention' blocks of a classification task can look ahead "
                            "(a causal LM predicts each token from the ones before it)")
        if self.task == "causal-lm" and self.head != "lm":
            problems.append("head: a causal-lm task needs head='lm'")
        if self.task == "classification" and self.head == "lm":
            problems.append("head: classification uses 'verbalizer' or 'linear'")
        if self.head == "verbalizer" and (self.label_token_ids is None or len(self.label_token_ids) != self.num_labels):
            problems.append(f"label_token_ids: a verbalizer head needs exactly num_labels={self.num_labels} token ids")
        if self.members > 1 and self.task != "classification":
            problems.append("members: an ensemble of ladders predicts classes (a causal LM generates from one ladder)")
        if self.members > 1 and self.init == "backbone":
            problems.append("members: init 'backbone' starts every ladder from the same copy, so they would stay one "
                            "network — use init 'random' for an ensemble")
        if self.block == "attention" and self.width % self.attention_heads:
            problems.append(f"attention_heads: width {self.width} must be divisible by {self.attention_heads}")
        if problems:
            raise ValueError("; ".join(problems))  # pydantic wraps it; parse() turns it into a ConfigError
        return self

    @property
    def token_wise(self) -> bool:
        """True when the side network reads each token alone, so classification needs only the pivot token."""
        return BLOCK_TOKEN_WISE[self.block]

    @property
    def pivot_only(self) -> bool:
        """True when the device sends the pivot token only: classification read by token-wise blocks."""
        return self.task == "classification" and self.token_wise

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SideConfig":
        """The config of a saved side network (``side_config.json``)."""
        return cls.read(Path(directory) / SIDE_CONFIG_NAME, f"{directory}: no {SIDE_CONFIG_NAME} (not a saved side network)")
