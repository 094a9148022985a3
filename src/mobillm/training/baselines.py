"""On-device PEFT baselines: full fine-tuning, LoRA (PEFT) and BitFit, with the same head and data.

Every baseline gets the fair optimisation the side network has: the LM head is applied only at the
pivot token and only to the label words' rows (never the whole vocabulary at every position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobillm.backbone import decoder_layers
from mobillm.train_config import TrainConfig


def prepare_baseline(model: nn.Module, config: TrainConfig) -> tuple[nn.Module, list[nn.Parameter]]:
    """Make the method's parameters trainable; return ``(model, trainable params)``."""
    model.requires_grad_(False)
    if config.method == "full":
        model.requires_grad_(True)
    elif config.method == "lora":
        from peft import LoraConfig, get_peft_model  # lazy: the device path never needs peft

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=config.lora_targets)
        model = get_peft_model(model, lora)
    elif config.method == "bitfit":
        _enable_bitfit(model)
    else:
        raise ValueError(f"{config.method!r} is not a baseline method")
    return model, [p for p in model.parameters() if p.requires_grad]


def _enable_bitfit(model: nn.Module) -> None:
    """Train only the bias terms of the decoder's linear layers (BitFit, Ben Zaken et al. 2022).

    Llama-family models have no biases; there we add zero-initialised ones, which leaves the model's
    outputs unchanged at step 0 — the same starting point the method has on OPT/BERT.
    """
    for layer in decoder_layers(model):
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                if module.bias is None:
                    module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype))
                module.bias.requires_grad_(True)


def baseline_logits(model: nn.Module, input_ids, attention_mask, last_index, token_ids: torch.Tensor) -> torch.Tensor:
    """(B, num_labels) verbalizer logits at the pivot token, through the model's own (possibly tuned) stack."""
    decoder = model.get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    pivot = hidden[torch.arange(hidden.shape[0]), last_index]  # (B, H), already through the final norm
    if getattr(decoder, "project_out", None) is not None:
        pivot = decoder.project_out(pivot)
    return F.linear(pivot, model.get_output_embeddings().weight[token_ids])
