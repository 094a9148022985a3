"""SmoothQuant for a backbone's decoder layers: move the activations' outlier channels into the weights before
the activations are quantized to int8 (Xiao et al., "SmoothQuant", ICML 2023, arXiv 2211.10438) — or before the
weights are quantized to 4 bits, where an input channel's weight error is multiplied by that channel's activations,
so that flattening the outliers (at a smaller alpha) shrinks the error where it is amplified most.

A linear layer's input channel j is divided by ``s_j`` and the weights reading it multiplied by ``s_j``, folded
into what produces the input, so the model computes the same function (up to float rounding) while the
activation's range per tensor shrinks:

    input norm -> q, k, v        the norm's weight (and bias) / s, the projections' input columns * s
    post-attention norm -> MLP   the same, into gate + up (Llama) or fc1 (OPT)
    up (or fc1) -> down (fc2)    up's output rows / s, down's input columns * s; exact because SwiGLU's product
                                 is linear in up and OPT's ReLU is positively homogeneous

with ``s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)``. The maxima of the activations are calibrated on seeded
random token sequences, no data: the outlier channels of an LLM's activations are properties of the weights,
and on SmolLM2-135M random-token calibration gives the same tap error as 128 SST-2 sentences (BENCHMARKS §19).
"""

from __future__ import annotations

import torch
from torch import nn

from mobillm.backbone.loading import decoder_layers
from mobillm.exceptions import ModelLoadError

__all__ = ["SMOOTHING_ALPHA", "smooth_activations"]

#: migration strength for int8 activations: 0 leaves the activations as they are, 1 moves all their range into the
#: weights; 0.75 measured best of {0.5, 0.75} on SmolLM2-135M's taps (BENCHMARKS §19)
SMOOTHING_ALPHA = 0.75


def _pairs(layer: nn.Module) -> list[tuple[list[nn.Module], nn.Module, list[nn.Linear]]]:
    """``(producers, first consumer, consumers)`` of one decoder layer: the producers' output is the consumers'
    input (the first consumer is where the input is observed)."""
    attn = getattr(layer, "self_attn", None)
    qkv = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj")]
    if all(isinstance(p, nn.Linear) for p in qkv) and hasattr(layer, "input_layernorm"):  # Llama, Mistral, Qwen
        mlp = layer.mlp
        gate, up, down = (getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj"))
        if all(isinstance(p, nn.Linear) for p in (gate, up, down)):
            return [([layer.input_layernorm], qkv[0], qkv), ([layer.post_attention_layernorm], gate, [gate, up]),
                    ([up], down, [down])]
    fc1, fc2 = getattr(layer, "fc1", None), getattr(layer, "fc2", None)
    if all(isinstance(p, nn.Linear) for p in (*qkv, fc1, fc2)) and getattr(layer, "do_layer_norm_before", False):
        if isinstance(getattr(layer, "activation_fn", None), nn.ReLU):  # OPT (pre-norm variants, ReLU)
            return [([layer.self_attn_layer_norm], qkv[0], qkv), ([layer.final_layer_norm], fc1, [fc1]),
                    ([fc1], fc2, [fc2])]
    raise ModelLoadError(f"{type(layer).__name__}: SmoothQuant knows Llama-style (norm, q/k/v, gate/up/down) and "
                         "pre-norm OPT layers with ReLU; export this model with --weights int8-dynamic instead of "
                         "int8-smooth, or int4 instead of web (serve --web MODEL:int4)")


def _divide_outputs(module: nn.Module, s: torch.Tensor) -> None:
    """Scale what ``module`` produces per channel by 1 / s: a norm's weight and bias, a linear layer's rows."""
    weight = module.weight
    weight.div_(s if weight.dim() == 1 else s[:, None])
    if getattr(module, "bias", None) is not None:
        module.bias.div_(s)


@torch.no_grad()
def smooth_activations(model: nn.Module, alpha: float = SMOOTHING_ALPHA, batches: int = 8, batch_size: int = 16,
                    length: int = 48, seed: int = 0) -> None:
    """SmoothQuant ``model``'s decoder layers in place (see the module's docstring).

    Calibrates on ``batches`` seeded random sequences of ``length`` tokens."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    plan = [_pairs(layer) for layer in decoder_layers(model)]
    maxima: dict[int, torch.Tensor] = {}

    def observe(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1]).amax(0).float()  # (in,)
        key = id(module)
        maxima[key] = torch.maximum(maxima[key], x) if key in maxima else x

    hooks = [first.register_forward_pre_hook(observe) for layer in plan for _, first, _ in layer]
    try:
        generator = torch.Generator().manual_seed(seed)
        vocab = model.get_input_embeddings().weight.shape[0]
        for _ in range(batches):
            model(input_ids=torch.randint(0, vocab, (batch_size, length), generator=generator))
    finally:
        for hook in hooks:
            hook.remove()
    for layer in plan:
        for producers, first, consumers in layer:
            w = torch.cat([c.weight.abs() for c in consumers]).amax(0).float()  # (in,) max over the consumers' rows
            s = (maxima[id(first)].clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            for producer in producers:
                _divide_outputs(producer, s.to(producer.weight.dtype))
            for consumer in consumers:
                consumer.weight.mul_(s.to(consumer.weight.dtype))
