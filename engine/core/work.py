"""Work per layer: floating-point operations and bytes moved, counted from the modules.

Each layer's work in a step is a linear function of the step's shape, so it is worked out once
per layer (when the session starts) as coefficients, and per step with a few multiplications:

    flops = a · tokens + b · tokens · context
    bytes = w + c · tokens + d · batch · context

``tokens`` = batch × new positions; ``context`` = cached + new positions (what attention reads).
``a``: matmuls (2 · in · out per Linear) and norms; ``b``: attention scores and their use
(4 · hidden per token and context position, counted dense: causal prefill does about half);
``w``: weight bytes read; ``c``: activations in and out; ``d``: the KV cache read (K and V).
The head of a generative model sees only the last position of a prefill (transformers'
``logits_to_keep``): its tokens are the batch size there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported where modules are read: reading a recording's work needs numpy only
    from torch import nn

_NORM_FLOPS_PER_ELEMENT = 5  # mean, variance, normalize, scale, shift: an estimate, as is usual


@dataclass
class LayerWork:
    a: float = 0.0   # FLOPs per token
    b: float = 0.0   # FLOPs per token per context position (attention)
    w: float = 0.0   # bytes read once per step (weights)
    c: float = 0.0   # bytes per token (activations in and out)
    d: float = 0.0   # bytes per batch item per context position (KV cache)
    last_only: bool = False  # the LM head: prefill computes the last position only

    def as_list(self) -> list[float]:
        return [self.a, self.b, self.w, self.c, self.d, float(self.last_only)]


def _linear_shape(mod: nn.Module) -> tuple[int, int] | None:
    from torch import nn

    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features
    # transformers' Conv1D (GPT-2) is a Linear with the weight transposed: weight [in, out]
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "weight") and mod.weight.dim() == 2:
        return int(mod.weight.shape[0]), int(mod.weight.shape[1])
    return None


def _param_bytes(mod: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in mod.parameters(recurse=False))


def _attention_shape(mod: nn.Module, config: Any) -> tuple[int, int] | None:
    """(hidden, kv width) of an attention module's core, from the model config, or None."""
    name = type(mod).__name__
    if "Attention" not in name or config is None:
        return None
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not hidden or not heads:
        return None
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads * head_dim, kv_heads * head_dim


def module_work(module: nn.Module, config: Any = None, act_bytes: int = 4,
                head: nn.Module | None = None) -> LayerWork:
    """Coefficients of one timed layer: the sum over everything inside it."""
    from torch import nn

    work = LayerWork()
    # Attention is counted once, at the innermost module whose class is an attention (BERT's
    # BertAttention holds a BertSelfAttention: counting both would double b and d).
    attn_mods = [m for m in module.modules() if _attention_shape(m, config) is not None]
    inner = {id(m) for m in attn_mods
             if not any(c is not m and _attention_shape(c, config) is not None for c in m.modules())}
    for mod in module.modules():
        shape = _linear_shape(mod)
        if shape is not None:
            fan_in, fan_out = shape
            work.a += 2.0 * fan_in * fan_out  # the bias add is noise beside it (and FlopCounterMode skips it)
            work.w += _param_bytes(mod)
            work.c += (fan_in + fan_out) * act_bytes
            if mod is head:
                work.last_only = True
        elif isinstance(mod, nn.Embedding):
            work.c += 2 * mod.embedding_dim * act_bytes  # a gathered row in, the same row out
        elif "Norm" in type(mod).__name__ and getattr(mod, "weight", None) is not None:
            dim = mod.weight.numel()
            work.a += _NORM_FLOPS_PER_ELEMENT * dim
            work.w += _param_bytes(mod)
            work.c += 2 * dim * act_bytes
        attn = _attention_shape(mod, config) if id(mod) in inner else None
        if attn is not None:
            hidden, kv_width = attn
            work.b += 4.0 * hidden
            work.d += 2.0 * kv_width * act_bytes
    return work


def layer_work(model: nn.Module, layers: Sequence[Any], generative: bool) -> list[LayerWork]:
    """Coefficients for each timed layer (objects with ``.module``), in the layers' order."""
    config = getattr(model, "config", None)
    param = next(model.parameters(), None)
    act_bytes = param.element_size() if param is not None else 4
    head = None
    if generative and hasattr(model, "get_output_embeddings"):
        try:
            head = model.get_output_embeddings()
        except Exception:
            head = None
    return [module_work(l.module, config, act_bytes, head) for l in layers]


def step_work(coeffs: np.ndarray, step: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) per layer for one step record; ``coeffs`` is [layers, 6] from the header."""
    batch = int(step.get("batch") or 1)
    # Records without seq_len still have tokens = batch × seq_len.
    seq = int(step.get("seq_len") or max(1, int(step.get("tokens") or batch) // batch))
    past = int(step.get("past_len") or 0)
    tokens = np.full(len(coeffs), float(batch * seq))
    if step.get("kind") == "prefill":
        tokens[coeffs[:, 5] > 0] = batch  # the head: last position only
    context = float(past + seq)
    flops = coeffs[:, 0] * tokens + coeffs[:, 1] * tokens * context
    moved = coeffs[:, 2] + coeffs[:, 3] * tokens + coeffs[:, 4] * batch * context
    return flops, moved


def header_coeffs(header: dict[str, Any]) -> np.ndarray | None:
    work = header.get("work")
    if not work or not work.get("layers"):
        return None
    return np.asarray(work["layers"], dtype=np.float64)


def flop_counter_total(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs torch's FlopCounterMode counts for one call (a cross-check of the formulas, in tests)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args, **kwargs)
    return int(counter.get_total_flops())
