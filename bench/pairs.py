"""Paired overhead measurement shared by bench/overhead.py and scripts/gpu_check.py (design §9).

* ``Decoder`` drives a decoder by hand with its KV cache: one prefill, then one token per forward
  call, and ``reset()`` crops the cache back to the prompt so the sequence length stays bounded.
  No generate(): nothing but the model's forward runs between the timestamps.
* ``run_rounds`` runs many short pairs: in each round, every configuration times one side with its
  instrumentation on (M) and one plain side (P), in the order MP on even rounds and PM on odd ones
  (ABAB / BABA, so slow drift cancels), configurations shuffled per round. Switching a
  configuration on or off (attaching hooks, draining the monitor's worker, starting a profiler)
  happens between sides, outside the timed span.
* ``ratio_stats``: the median of the per-pair ratios M / P, its p25–p75, and a bootstrap 95 % CI.

Only the model's device decides whether ``sync`` waits for CUDA; it runs outside the timed steps'
hooks, before the first and after the last step of a side.
"""

from __future__ import annotations

import inspect
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def _out_cache(out: Any) -> Any:
    """The KV cache a forward returned (transformers 5 names it ``cache``, 4.x ``past_key_values``)."""
    for name in ("cache", "past_key_values"):
        try:
            value = getattr(out, name, None)
        except Exception:
            value = None
        if value is not None:
            return value
    return None


class Decoder:
    """Prefill once, then decode one token per call with the KV cache, cropped back on ``reset``."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str, prompt_len: int = 32,
                 batch: int = 1, seed: int = 0):
        self.model = model
        self.device = torch.device(device)
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        vocab = int(getattr(model.config, "vocab_size", 1000))
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (batch, prompt_len + 1), generator=gen)
        self.prompt = ids[:, :prompt_len].to(self.device)
        self.token = ids[:, prompt_len:].to(self.device)  # the same next token every step
        self.prompt_len = prompt_len
        self.cache: Any = None
        self.croppable = False

    def prefill(self) -> None:
        out = self.model(input_ids=self.prompt, use_cache=True)
        cache = _out_cache(out)
        if cache is None:
            raise RuntimeError(f"{type(self.model).__name__} returned no KV cache with use_cache=True")
        self.cache = cache
        # A Cache object grows in place and is cropped back; a legacy tuple is never mutated, so
        # passing the prefill's tuple every step keeps the length bounded by itself.
        self.croppable = hasattr(cache, "crop") and hasattr(cache, "get_seq_length")

    def step(self) -> Any:
        return self.model(input_ids=self.token, use_cache=True, **{self.cache_kw: self.cache})

    def steps(self, k: int) -> None:
        for _ in range(k):
            self.step()

    def length(self) -> int | None:
        return int(self.cache.get_seq_length()) if self.croppable else None

    def reset(self) -> None:
        """Crop the cache back to the prompt (a negative crop removes that many positions in
        transformers 4.x and 5.x alike)."""
        if self.croppable:
            extra = int(self.cache.get_seq_length()) - self.prompt_len
            if extra > 0:
                self.cache.crop(-extra)


def make_sync(device: torch.device | str) -> Callable[[], None]:
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Config:
    """One instrumentation to compare with plain: ``enable`` before its side, ``disable`` after."""

    name: str
    enable: Callable[[], None] = lambda: None
    disable: Callable[[], None] = lambda: None
    modules: int | None = None          # hooked modules, for the per-module cost
    info: dict[str, Any] = field(default_factory=dict)
    ratios: list[float] = field(default_factory=list)
    plain_ns: list[int] = field(default_factory=list)   # per side
    on_ns: list[int] = field(default_factory=list)


def time_side(decoder: Decoder, k: int, sync: Callable[[], None]) -> int:
    """ns for k decode steps from the current cache, then crop it back (untimed)."""
    sync()
    t0 = time.perf_counter_ns()
    decoder.steps(k)
    sync()
    t1 = time.perf_counter_ns()
    decoder.reset()
    return t1 - t0


def run_pair(cfg: Config, decoder: Decoder, k: int, sync: Callable[[], None], on_first: bool,
             record: bool = True) -> None:
    def on_side() -> int:
        cfg.enable()
        try:
            return time_side(decoder, k, sync)
        finally:
            cfg.disable()

    if on_first:
        t_on = on_side()
        t_plain = time_side(decoder, k, sync)
    else:
        t_plain = time_side(decoder, k, sync)
        t_on = on_side()
    if record:
        cfg.on_ns.append(t_on)
        cfg.plain_ns.append(t_plain)
        cfg.ratios.append(t_on / t_plain)


def run_rounds(configs: Sequence[Config], decoder: Decoder, *, rounds: int, k: int,
               sync: Callable[[], None], warmup_rounds: int = 0, seed: int = 0,
               deadline: float | None = None, progress: Progress | None = None) -> int:
    """Run ``warmup_rounds`` unrecorded then up to ``rounds`` recorded rounds; returns rounds done.

    Stops early (between rounds) once ``time.monotonic()`` passes ``deadline``.
    """
    rng = random.Random(seed)
    order = list(configs)
    done = 0
    for r in range(warmup_rounds + rounds):
        if deadline is not None and r >= warmup_rounds and time.monotonic() > deadline:
            break
        if r == warmup_rounds and progress is not None:
            progress.restart()  # the ETA counts recorded rounds only
        rng.shuffle(order)
        on_first = r % 2 == 0
        for cfg in order:
            run_pair(cfg, decoder, k, sync, on_first, record=r >= warmup_rounds)
        if r >= warmup_rounds:
            done += 1
            if progress is not None:
                progress.update(done)
    if progress is not None:
        progress.close()
    return done


def ratio_stats(ratios: Sequence[float], boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Median of per-pair ratios with p25 / p75 and a bootstrap 95 % CI of the median."""
    r = np.asarray(ratios, dtype=np.float64)
    if r.size == 0:
        return {"pairs": 0, "median": None, "p25": None, "p75": None, "ci95": None}
    p25, med, p75 = np.percentile(r, [25, 50, 75])
    ci = None
    if r.size >= 5:
        rng = np.random.default_rng(seed)
        meds = np.median(r[rng.integers(0, r.size, (boot, r.size))], axis=1)
        lo, hi = np.percentile(meds, [2.5, 97.5])
        ci = [float(lo), float(hi)]
    return {"pairs": int(r.size), "median": float(med), "p25": float(p25), "p75": float(p75), "ci95": ci}


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, else a line every ~10 %."""

    def __init__(self, label: str, total: int, stream: Any = None, quiet: bool = False):
        self.label, self.total = label, max(1, int(total))
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.quiet = quiet
        self.t0 = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._open = False

    def restart(self) -> None:
        self.t0 = time.monotonic()

    def update(self, n: int) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        elapsed = now - self.t0
        eta = elapsed / n * (self.total - n) if n else 0.0
        text = f"{self.label}: {n}/{self.total}  {elapsed:5.0f} s elapsed, ~{eta:4.0f} s left"
        if self.tty:
            if now - self._last_draw >= 0.25 or n >= self.total:
                self.stream.write("\r" + text + "\x1b[K")
                self.stream.flush()
                self._last_draw = now
                self._open = True
        else:
            decile = int(10 * n / self.total)
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(text + "\n")
                self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def note(message: str) -> None:
    """One progress line on stderr."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
