"""The Hello a device that is not Python (the web device, ``web/``) opens a classification job on a bundle with,
less what its data decides: ``mobillm template`` prints it, and the web device fills in the label names, the first
token of each label word and the prompt template (:data:`DATA_FIELDS`) from the file it reads, as
:func:`mobillm.data.templates.default_template` does here. Every default lives on the Python side, so the web
device never guesses one; the server validates the completed Hello as any other."""

from __future__ import annotations

from typing import Any

from mobillm import __version__
from mobillm.bundle.config import BundleConfig
from mobillm.exceptions import ConfigError
from mobillm.recipes.options import SideOptions
from mobillm.sidenet.config import SideConfig
from mobillm.train_config import TrainConfig

__all__ = ["DATA_FIELDS", "side_fields", "job_template"]

#: SideConfig's fields that the device's data decides: null in a template, filled in by the device.
DATA_FIELDS = ("num_labels", "label_token_ids", "label_names", "prompt_template")


def side_fields(bundle: BundleConfig, options: SideOptions) -> dict[str, Any]:
    """SideConfig's fields of a job on ``bundle`` that the bundle and the options decide."""
    return dict(
        hidden_size=bundle.hidden_size, num_backbone_layers=bundle.num_layers, shortcuts=bundle.shortcuts,
        width=options.width, block=options.block, codec=options.codec, init=options.side_init,
        gate_temperature=options.gate_temperature, bidirectional=options.side_bidirectional,
        members=options.side_members,
    )


def job_template(bundle: BundleConfig, options: SideOptions, device_epochs: int, config: TrainConfig) -> dict[str, Any]:
    """The template as JSON-ready data: the Hello's fields but ``job`` and ``token`` (the device's), ``side_config``
    with :data:`DATA_FIELDS` null and every other field in SideConfig's order, and the data options the device
    reads its file with. Raises ``ConfigError`` for options that make no valid side network on ``bundle``."""
    if options.task != "classification":
        raise ConfigError(f"--task {options.task}: the web device runs classification jobs")
    # two placeholder labels validate every option-decided field; the data's are then cleared
    side = SideConfig.parse(dict(side_fields(bundle, options), num_labels=2, label_token_ids=[0, 1]))
    side_config = {k: (None if k in DATA_FIELDS else v) for k, v in side.model_dump(mode="json").items()}
    return {
        "model": bundle.model,
        "fingerprint": bundle.fingerprint,
        "side_config": side_config,
        "train_config": config.model_dump(mode="json"),
        # whether the device sends the pivot token only (token-wise blocks) or every position with its mask
        "pivot_only": side.pivot_only,
        "device_epochs": device_epochs,
        "data": {
            "text_column": options.text_column, "label_column": options.label_column, "no_header": options.no_header,
            "max_length": options.max_length, "max_train_samples": options.max_train_samples,
            "max_eval_samples": options.max_eval_samples,
        },
        "bundle_weights": bundle.weights,
        "mobillm_version": __version__,
    }
