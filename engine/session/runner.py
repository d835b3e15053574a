"""Stream inputs through a loaded model under a Monitor: one encoder batch, or one generate() call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.inputs import batches
from llm_moments.engine.session.models import LoadedModel
from llm_moments.engine.session.monitor import NO_LAYER_TIMING, Monitor


class _StopOnEvent:
    """Ends generate() early once ``stop`` is set, so quitting never waits for a long generation."""

    def __init__(self, stop: threading.Event):
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)


def run_batch(loaded: LoadedModel, texts: list[str], max_new_tokens: int,
              stop: threading.Event | None = None) -> tuple[list[str] | None, int]:
    """Run one batch; return (generated texts or None, forward steps the model should have taken)."""
    tok = loaded.tokenizer
    max_length = min(getattr(tok, "model_max_length", 512) or 512, 512)
    if loaded.generative and getattr(loaded, "positions", None):  # prompt + new tokens share the positions
        max_length = max(1, min(max_length, loaded.positions - max_new_tokens))
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True,
              max_length=max_length).to(loaded.device)
    with torch.inference_mode():
        if not loaded.generative:
            loaded.model(**enc)
            return None, 1
        # Only what every decoder takes (the MiniLM tokenizer also returns token_type_ids).
        out = loaded.model.generate(
            input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask"),
            max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tok.pad_token_id, **_stopping(stop))
    if stop is not None and stop.is_set():
        max_new_tokens = out.shape[1] - enc["input_ids"].shape[1]  # cut short on purpose
    new = out[:, enc["input_ids"].shape[1]:]
    return tok.batch_decode(new, skip_special_tokens=True), max_new_tokens


def _stopping(stop: threading.Event | None) -> dict[str, Any]:
    if stop is None:
        return {}
    from transformers import StoppingCriteriaList

    return {"stopping_criteria": StoppingCriteriaList([_StopOnEvent(stop)])}


def stream(loaded: LoadedModel, texts: list[str], monitor: Monitor, *, batch_size: int = 1,
           max_new_tokens: int = 32, steps: int | None = None, stop: threading.Event | None = None,
           on_batch: Callable[[int], None] | None = None, agree: Callable[[bool], bool] | None = None) -> int:
    """Run batches until ``steps`` steps were taken (None: until ``stop`` is set); return batches run.

    A batch is never cut in the middle, so a decoder session ends after its last generate() call.
    If the model runs but the hooks see fewer steps than it took, that is reported once (CUDA graphs).
    ``agree`` (ranks of one sharded model): called with this rank's wish to stop before each batch,
    returns whether any rank wishes it; a batch then always runs to its end on every rank (a rank
    that left a generate() early would leave its peers inside a collective).
    """
    if max_new_tokens < 1:
        raise MomentsError("--max-new-tokens must be at least 1")
    n_batches = 0
    warned = False
    for batch in batches(texts, batch_size, loop=True):
        if steps is not None and monitor.steps_started >= steps:
            break
        wish = stop is not None and stop.is_set()
        if agree(wish) if agree is not None else wish:
            break
        before = monitor.steps_started
        outputs, expected = run_batch(loaded, batch, max_new_tokens, stop if agree is None else None)
        seen = monitor.steps_started - before
        if seen < expected and not warned:
            warned = True
            monitor.note_status(f"{NO_LAYER_TIMING}: saw {seen} of {expected} forward steps")
        monitor.note_text(batch, outputs)
        n_batches += 1
        if on_batch is not None:
            on_batch(n_batches)
    return n_batches
