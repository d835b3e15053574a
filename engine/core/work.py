"""Work per layer: floating-point operations and bytes moved, counted from the modules.

Each layer's work in a step is a linear function of the step's shape, so it is worked out once
per layer (when the session starts) as coefficients, and per step with a few multiplications:

    flops = a · positions + b · positions · context
    bytes = w + c · positions + d · batch · context

``positions`` = the positions the layer computes: batch × new positions, except for a head (LM head,
pooler, classifier), which computes what it is asked for (``logits_to_keep``; one per sequence for a
pooler), measured per step (``head_tokens``, engine/core/steps.py). ``context`` = the keys a block's
attention multiplies against (``kv_len``): cached + new positions for a dynamic cache, the window
for a sliding layer, ``max_cache_len`` for a static cache; cached + new without ``kv_len``.
``a``: matmuls (2 · in · out per Linear) and norms; ``b``: attention scores and their use
(4 · hidden per position and context position, counted dense: causal prefill does about half);
``w``: weight bytes read; ``c``: activations in and out; ``d``: the KV cache read (K and V).

Header columns (``work.columns``): a, b, w, c, d, ``last_only`` (the LM head: before ``head_tokens``
was recorded, a prefill's head was taken to compute one position per sequence), ``head`` (slot of the
layer in a step's ``head_tokens``, -1: not a head) and ``cache_layer`` (index in a step's ``kv_len``
list, -1: no attention). Recordings with six columns or without the step fields keep the old rule.

This module is numpy only (analysis and outputs apply a recording's work with it, never loading
torch); the coefficients are read from a model's modules in ``work_model.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class LayerWork:
    a: float = 0.0   # FLOPs per token
    b: float = 0.0   # FLOPs per token per context position (attention)
    w: float = 0.0   # bytes read once per step (weights)
    c: float = 0.0   # bytes per token (activations in and out)
    d: float = 0.0   # bytes per batch item per context position (KV cache)
    last_only: bool = False  # the LM head (the rule for steps without head_tokens: prefill = last position)
    head: int = -1           # slot in a step's head_tokens (-1: positions are batch × new positions)
    cache_layer: int = -1    # index in a step's kv_len list (-1: context = past + new positions)

    def as_list(self) -> list[float]:
        return [self.a, self.b, self.w, self.c, self.d, float(self.last_only), float(self.head),
                float(self.cache_layer)]


COLUMNS = ["a", "b", "w", "c", "d", "last_only", "head", "cache_layer"]
FORMULA = ("flops = a*positions + b*positions*context; bytes = w + c*positions + d*batch*context; "
           "positions = batch*seq_len, or head_tokens[head] for a head; context = kv_len (an int, or "
           "kv_len[cache_layer]), else past_len + seq_len; steps without head_tokens: a last_only layer "
           "computes one position per sequence in a prefill")

def _num(v: Any, default: float) -> float:
    return default if v is None else float(v)


def work_inputs(coeffs: np.ndarray, steps: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(batch [steps], positions [steps, layers], context [steps, layers]) of step records.

    ``coeffs``: [layers, 6 or 8] as ``header_coeffs`` gives. Vectorized over steps; only steps whose
    ``kv_len`` is a per-cache-layer list (hybrid models) take a Python pass each.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    n, m = c.shape[0], len(steps)
    batch = np.array([max(int(_num(s.get("batch"), 1)), 1) for s in steps], dtype=np.float64)
    tokens = np.array([_num(s.get("tokens"), 0) for s in steps], dtype=np.float64)
    tokens = np.where(tokens > 0, tokens, batch)
    seq = np.array([_num(s.get("seq_len"), 0) for s in steps], dtype=np.float64)
    seq = np.where(seq > 0, seq, np.maximum(1, tokens // batch))  # records without seq_len
    past = np.array([_num(s.get("past_len"), 0) for s in steps], dtype=np.float64)
    positions = np.repeat((batch * seq)[:, None], n, axis=1)
    context = np.repeat((past + seq)[:, None], n, axis=1)
    if n == 0 or m == 0:
        return batch, positions, context

    # Heads: measured positions, else (older recordings, a head that did not run) the last-only rule.
    prefill = np.array([s.get("kind") == "prefill" for s in steps], dtype=bool)
    last_only = c[:, 5] > 0
    positions[np.ix_(prefill, last_only)] = batch[prefill][:, None]
    slot = c[:, 6].astype(np.int64) if c.shape[1] > 6 else np.full(n, -1)
    measured = [s.get("head_tokens") for s in steps]
    cols = np.flatnonzero(slot >= 0)
    if cols.size and any(h for h in measured):
        width = int(slot.max()) + 1
        table = np.full((m, width), np.nan)
        for i, h in enumerate(measured):
            if h:
                row = [np.nan if v is None else float(v) for v in h[:width]]
                table[i, :len(row)] = row
        got = table[:, slot[cols]]
        positions[:, cols] = np.where(np.isnan(got), positions[:, cols], got)

    # Context: the keys attention spans (kv_len), for layers that read a cache layer.
    kv = [s.get("kv_len") for s in steps]
    if any(v is not None for v in kv):
        cl = c[:, 7].astype(np.int64) if c.shape[1] > 7 else np.zeros(n, dtype=np.int64)
        attn = np.flatnonzero(cl >= 0)
        if attn.size:
            scalar = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in kv])
            rows = np.flatnonzero(~np.isnan(scalar))
            context[np.ix_(rows, attn)] = scalar[rows][:, None]
            idx = cl[attn]
            for i, v in enumerate(kv):
                if isinstance(v, (list, tuple)):
                    vals = np.array([np.nan if x is None else float(x) for x in v] + [np.nan])
                    got = vals[np.minimum(idx, len(v))]  # out of range: NaN, the fallback
                    context[i, attn] = np.where(np.isnan(got), context[i, attn], got)
    return batch, positions, context


def apply_work(coeffs: np.ndarray, batch: np.ndarray, positions: np.ndarray,
               context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) from coefficients and inputs; ``batch`` broadcasts against [..., layers]."""
    c = np.asarray(coeffs, dtype=np.float64)
    b = np.asarray(batch, dtype=np.float64)
    if b.ndim and positions.ndim > b.ndim:
        b = b[..., None]
    flops = c[:, 0] * positions + c[:, 1] * positions * context
    moved = c[:, 2] + c[:, 3] * positions + c[:, 4] * b * context
    return flops, moved


def table_work(coeffs: np.ndarray, steps: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) [steps, layers] of step records."""
    batch, positions, context = work_inputs(coeffs, steps)
    return apply_work(coeffs, batch, positions, context)


def step_work(coeffs: np.ndarray, step: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) per layer for one step record; ``coeffs`` is [layers, 6 or 8] from the header."""
    flops, moved = table_work(coeffs, [step])
    return flops[0], moved[0]


def header_coeffs(header: dict[str, Any]) -> np.ndarray | None:
    """[layers, 8] coefficients from a header's ``work`` (six-column recordings get head = cache_layer = -1)."""
    work = header.get("work")
    if not work or not work.get("layers"):
        return None
    try:
        rows = np.asarray(work["layers"], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if rows.ndim != 2 or rows.shape[1] < 6:
        return None
    if rows.shape[1] < len(COLUMNS):
        pad = np.full((rows.shape[0], len(COLUMNS) - rows.shape[1]), -1.0)
        rows = np.concatenate([rows, pad], axis=1)
    return rows[:, :len(COLUMNS)]
