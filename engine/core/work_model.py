"""Work coefficients read from a model's modules (torch): the other half of ``work.py``, which applies
them to steps with numpy only. Formulas and columns: see ``work.py``.

Sharded models: the coefficients are this rank's work, from the local shard shapes. A tensor-parallel
weight is a DTensor (its ``shape`` is the whole weight, ``to_local()`` this rank's part): Linear
FLOPs and weight bytes come from the local weight, attention's from the local share of the heads
(the ratio of a column-sharded projection's local to global rows), so at tp=2 each rank does about
half the unsharded work. Offloaded weights (on ``meta`` between calls) count by their shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from llm_moments.engine.core.dist import local_tensor
from llm_moments.engine.core.steps import layer_roles
from llm_moments.engine.core.work import COLUMNS, FORMULA, LayerWork

_NORM_FLOPS_PER_ELEMENT = 5  # mean, variance, normalize, scale, shift: an estimate, as is usual



def _is_sharded(t: Any) -> bool:
    return t is not None and hasattr(t, "placements") and callable(getattr(t, "to_local", None))


def _linear_shape(mod: nn.Module) -> tuple[int, int] | None:
    if isinstance(mod, nn.Linear):
        w = getattr(mod, "weight", None)
        if _is_sharded(w) and w.dim() == 2:
            out_f, in_f = local_tensor(w).shape  # this rank's rows (column-wise) or columns (row-wise)
            return int(in_f), int(out_f)
        return mod.in_features, mod.out_features
    # transformers' Conv1D (GPT-2) is a Linear with the weight transposed: weight [in, out]
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "weight") and mod.weight.dim() == 2:
        return int(mod.weight.shape[0]), int(mod.weight.shape[1])
    return None


def _param_bytes(mod: nn.Module) -> int:
    return sum(local_tensor(p).numel() * p.element_size() for p in mod.parameters(recurse=False))


def _head_share(mod: nn.Module) -> float:
    """Share of an attention module's heads this rank computes: 1 unless its projections are sharded."""
    for sub in mod.modules():
        w = getattr(sub, "weight", None) if isinstance(sub, nn.Linear) else None
        if _is_sharded(w) and w.dim() == 2:
            local, whole = local_tensor(w).shape[0], w.shape[0]
            if local != whole and whole:  # column-sharded (q/k/v): a slice of the heads
                return float(local) / float(whole)
    return 1.0


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
            dim = local_tensor(mod.weight).numel()
            work.a += _NORM_FLOPS_PER_ELEMENT * dim
            work.w += _param_bytes(mod)
            work.c += 2 * dim * act_bytes
        attn = _attention_shape(mod, config) if id(mod) in inner else None
        if attn is not None:
            hidden, kv_width = attn
            share = _head_share(mod)
            work.b += 4.0 * hidden * share
            work.d += 2.0 * kv_width * act_bytes * share
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
    works = [module_work(l.module, config, act_bytes, head) for l in layers]
    _, slots, cache_layers = layer_roles(model, layers)
    for w, slot, cl in zip(works, slots, cache_layers):
        w.head, w.cache_layer = slot, cl
    return works


def work_header(model: nn.Module, layers: Sequence[Any], generative: bool) -> dict[str, Any]:
    """The recording header's ``work``: the formula, the column names and one row per layer."""
    return {"formula": FORMULA, "columns": list(COLUMNS),
            "layers": [w.as_list() for w in layer_work(model, layers, generative)]}


def flop_counter_total(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs torch's FlopCounterMode counts for one call (a cross-check of the formulas, in tests)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args, **kwargs)
    return int(counter.get_total_flops())
