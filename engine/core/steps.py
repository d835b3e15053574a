"""What a step is, read in hooks from python state only: its kind, its past, the keys attention spans,
and the positions each head computes. No tensor is read on the hot path, so there is never a sync.

**Kind and past** (``StepRule.begin``, in the root pre-hook). ``past_len`` = positions the model had
seen before this step. It comes from the cache the call passes (``cache=``, or the deprecated name
``past_key_values=``), through python ints that transformers' cache layers keep:

- ``DynamicLayer`` (dynamic and offloaded caches): the shape of its keys;
- sliding layers (dynamic or static) and quantized layers: their ``cumulative_length`` (int);
- a full-attention ``StaticLayer`` keeps its length only as a 0-d tensor on the cache's device:
  reading it on a GPU would sync. Such a cache gets a counter here: 0 while its layers are not
  initialized, then moved by each step's new positions; ``reset()`` and ``crop()`` are wrapped on
  that cache instance (the class is untouched; ``close`` takes the wrappers off) to keep it right.
  A static cache first seen already filled has an unknown past on a GPU (on a CPU the host scalar
  is read: no sync); then a 2-D attention mask, if passed, gives it (mask length - new positions).

``kind`` = ``prefill`` when the past is 0 (also every step of ``generate(use_cache=False)``, which
recomputes the whole sequence), ``decode`` when it is > 0, ``encode`` for a model that does not
generate; with the past unknown, ``decode`` if the step brings one position per sequence.

**Context** (``kv_len``): per cache layer, the keys attention multiplies against in this step,
``cache.get_mask_sizes(seq, layer)`` (python ints): ``past + seq`` for a dynamic layer; for a sliding
layer once full, ``window - 1 + seq``; for a static layer ``max_cache_len`` (eager and SDPA attention
multiply against the whole buffer, masked); for a static sliding layer the window. It is what the
attention FLOPs and the KV bytes read use. Without a cache attention spans the step's own positions.
Computed once per group of alike cache layers (usually one group, two for hybrid models).

**Head positions** (``HeadProbe``): the layers after the transformer blocks (LM head, pooler,
classifier, a final projection) compute only what they are asked for: ``logits_to_keep``, the first
token per sequence for a pooler. A pre-hook on the first linear module inside each reads
``numel / last dim`` of its input: a shape, never data.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

_INT_COUNTERS = ("cumulative_length_int", "cumulative_length")  # static sliding; dynamic sliding, quantized


# -- reading one call's shape and cache ---------------------------------------------------------------


def cache_of(kwargs: dict) -> Any:
    """The KV cache a forward call got: transformers >= 5.2x names it ``cache``; ``past_key_values`` is
    the deprecated name (renamed inside ``forward``, after the pre-hook ran: both are checked)."""
    cache = kwargs.get("cache")
    if cache is None:
        cache = kwargs.get("past_key_values")
    return cache


def step_shape(args: tuple, kwargs: dict) -> tuple[int, int]:
    """(batch, new positions) of a forward call, from the input's shape."""
    x = kwargs.get("input_ids")
    if x is None and args and torch.is_tensor(args[0]):
        x = args[0]
    if x is None:
        x = kwargs.get("inputs_embeds")
    if torch.is_tensor(x):
        if x.dim() >= 2:
            return int(x.shape[0]), int(x.shape[1])
        if x.dim() == 1:
            return 1, int(x.shape[0])
    return 1, 1


def _layers(cache: Any) -> Any:
    inner = getattr(cache, "self_attention_cache", None)  # EncoderDecoderCache: the decoder's own cache
    return getattr(inner if inner is not None else cache, "layers", None)


def _is_attention_layer(layer: Any) -> bool:
    # DummyLayer (KV shared with another layer) and pure linear-attention layers track no length.
    return hasattr(layer, "get_seq_length") and hasattr(layer, "get_mask_sizes") and hasattr(layer, "is_initialized")


def layer_past(layer: Any) -> int | None:
    """Positions cached in one cache layer, from python state only; None when only a tensor knows."""
    if not _is_attention_layer(layer):
        return None
    for attr in _INT_COUNTERS:
        v = getattr(layer, attr, None)
        if type(v) is int:
            return v
    if not layer.is_initialized:
        return 0
    if torch.is_tensor(getattr(layer, "cumulative_length", None)):
        return None  # a full-attention StaticLayer: its length is a device scalar
    keys = getattr(layer, "keys", None)  # DynamicLayer: the concatenated keys' shape
    if torch.is_tensor(keys):
        return int(keys.shape[-2]) if keys.dim() >= 2 and keys.numel() else 0
    return None


def python_past(cache: Any) -> int | None:
    """Cached positions of a cache, from python state only (shapes and ints); None when unknown."""
    if cache is None:
        return 0
    if isinstance(cache, (tuple, list)):  # legacy tuples of (key, value) per layer
        try:
            return int(cache[0][0].shape[-2]) if len(cache) else 0
        except (IndexError, TypeError, AttributeError):
            return None
    layers = _layers(cache)
    if layers is None:
        return None
    if len(layers) == 0:
        return 0  # DynamicCache() without a config: its layers appear at the first update
    for layer in layers:
        n = layer_past(layer)
        if n is not None:
            return n
    return None


def _device_counted(layers: Sequence[Any]) -> bool:
    """Only a device tensor knows this cache's length once it is filled (full-attention static layers)."""
    counted = False
    for layer in layers:
        if not _is_attention_layer(layer):
            continue
        if any(type(getattr(layer, a, None)) is int for a in _INT_COUNTERS):
            return False
        if torch.is_tensor(getattr(layer, "cumulative_length", None)):
            counted = True
    return counted


def _host_scalar(layers: Sequence[Any]) -> int | None:
    """The length of a static cache when its counter lives in host memory (CPU): no sync to read."""
    for layer in layers:
        v = getattr(layer, "cumulative_length", None)
        if torch.is_tensor(v):
            return int(v) if v.device.type == "cpu" else None
    return None


# -- per-cache state --------------------------------------------------------------------------------------


class _CacheInfo:
    """What the rule keeps about one cache object: its layer groups and, if needed, a position counter."""

    __slots__ = ("count", "counted", "first", "groups", "n_layers", "owned", "read", "ref", "reps", "uniform_ok",
                 "wrapped")

    def __init__(self, cache: Any, ref: weakref.ref, owned: frozenset[int] | None = None):
        self.ref = ref
        self.owned = owned  # cache layers this pipeline stage fills (None: all); the others stay empty
        self.wrapped: tuple[Any, Any] | None = None
        self.count: int | None = None
        self.layout(cache)

    def layout(self, cache: Any) -> None:
        layers = _layers(cache) or ()
        self.n_layers = len(layers)
        keys: dict[tuple, int] = {}
        reps: list[int] = []
        groups: list[int] = [-1] * len(layers)
        owned = self.owned
        # A pipeline stage fills only its own layers' cache: only those can tell the past; another
        # stage's layer takes the group of an owned layer of its kind (else none).
        order = range(len(layers)) if owned is None else (
            [j for j in range(len(layers)) if j in owned] + [j for j in range(len(layers)) if j not in owned])
        for j in order:
            layer = layers[j]
            if not _is_attention_layer(layer):
                continue
            key = (type(layer), bool(getattr(layer, "is_sliding", False)), getattr(layer, "sliding_window", None),
                   getattr(layer, "max_cache_len", None))
            g = keys.get(key)
            if g is None:
                if owned is not None and j not in owned:
                    continue
                g = keys[key] = len(reps)
                reps.append(j)
            groups[j] = g
        self.reps = tuple(reps)
        self.groups = tuple(groups)
        self.uniform_ok = -1 not in self.groups  # equal values may become one int (no layer without state)
        self.counted = _device_counted(layers)
        # How this cache's past is read each step, decided once from its first attention layer's class:
        # an int counter attribute, the keys' shape, or (a full static layer) nothing but is_initialized.
        # Every layer sees the same positions: read the one that tells them without a tensor.
        self.first, self.read = None, None
        best = 3
        for j in reps:
            layer = layers[j]
            attr = next((a for a in _INT_COUNTERS if type(getattr(layer, a, None)) is int), None)
            rank, read = (0, attr) if attr else (
                (2, "") if torch.is_tensor(getattr(layer, "cumulative_length", None)) else (1, "keys"))
            if rank < best:
                best, self.first, self.read = rank, layer, read

    def past(self) -> int | None:
        """Python-state past of the cache (as ``python_past``), without searching its layers again."""
        layer, read = self.first, self.read
        if layer is None:
            return 0
        if read:
            if read == "keys":
                if not layer.is_initialized:
                    return 0
                keys = layer.keys
                return int(keys.shape[-2]) if keys is not None and keys.dim() >= 2 and keys.numel() else 0
            return getattr(layer, read)
        return None if layer.is_initialized else 0


def expand_kv(kv: Any) -> int | list[int | None] | None:
    """A step's ``kv_len`` for the record: one int when every attention layer spans the same keys, else
    one value per cache layer (None for a layer without attention state). Runs on the worker thread."""
    if kv is None or type(kv) is int:
        return kv
    values, groups = kv
    return [None if g < 0 else values[g] for g in groups]


class StepRule:
    """``begin(args, kwargs) -> (kind, batch, seq, past_len, kv)`` in the root pre-hook; O(1), no tensor read.

    ``kv`` is None (no cache: attention spans the step's positions), an int (every attention layer spans
    that many keys) or a compact (values per group, group per cache layer) pair for ``expand_kv``.
    ``read_host_scalars``: read a static cache's length when it lives on the CPU and no counter knows it
    (tests turn it off to run the GPU path on a CPU). ``owned``: the cache layers a pipeline stage
    fills (its own blocks): past and context are read from those, never from another stage's empty ones.
    ``close()`` takes the wrappers off the caches.
    """

    def __init__(self, generative: bool, read_host_scalars: bool = True, owned: Any = None):
        self.generative = generative
        self.read_host_scalars = read_host_scalars
        # A pipeline stage: the cache layers it fills (its own blocks); None: every layer.
        self.owned = frozenset(owned) if owned is not None else None
        self._infos: dict[int, _CacheInfo] = {}
        self._last: _CacheInfo | None = None

    # -- the hot path ------------------------------------------------------------------------------
    def begin(self, args: tuple, kwargs: dict) -> tuple[str, int, int, int | None, Any]:
        batch, seq = step_shape(args, kwargs)
        if not self.generative:
            return "encode", batch, seq, 0, None
        cache = cache_of(kwargs)
        past: int | None
        kv: Any = None
        if cache is None:
            past = 0
        else:
            try:
                past, kv = self._from_cache(cache, seq)
            except Exception:  # a cache class we do not know: never fail the user's forward
                past, kv = None, None
            if past is None:  # a 2-D attention mask covers the past and the new positions
                am = kwargs.get("attention_mask")
                if torch.is_tensor(am) and am.dim() == 2 and am.shape[-1] >= seq:
                    past = int(am.shape[-1]) - seq
        if past is None:
            return ("decode" if seq == 1 else "prefill"), batch, seq, None, kv
        return ("decode" if past > 0 else "prefill"), batch, seq, past, kv

    def _from_cache(self, cache: Any, seq: int) -> tuple[int | None, Any]:
        layers = _layers(cache)
        if layers is None:
            return python_past(cache), None  # legacy tuples, or a cache class without layers
        info = self._last
        if info is None or info.ref() is not cache:
            info = self._info(cache)
        if info.n_layers != len(layers):
            info.layout(cache)  # a lazy DynamicCache grew its layers
        past = info.past()
        if info.counted:
            if info.wrapped is None:  # first sight of this cache
                self._wrap(cache, info)
            if past is None:  # filled: python_past saw an initialized static layer
                if info.count is not None:
                    past = info.count
                elif self.read_host_scalars:
                    past = _host_scalar(layers)
            if past is not None:
                info.count = past + seq
        reps = info.reps
        if not reps:
            return past, seq  # no layers yet (lazy DynamicCache): attention spans the new positions
        sizes = cache.get_mask_sizes
        if len(reps) == 1:
            return past, int(sizes(seq, reps[0])[0])
        values = tuple(int(sizes(seq, j)[0]) for j in reps)
        if info.uniform_ok and all(v == values[0] for v in values):
            return past, values[0]
        return past, (values, info.groups)

    # -- per-cache bookkeeping (first sight of a cache, not every step) -------------------------------
    def _info(self, cache: Any) -> _CacheInfo:
        key = id(cache)
        info = self._infos.get(key)
        if info is None or info.ref() is not cache:
            infos = self._infos

            def forget(ref: weakref.ref, _key: int = key) -> None:
                held = infos.get(_key)
                if held is not None and held.ref is ref:
                    del infos[_key]

            info = self._infos[key] = _CacheInfo(cache, weakref.ref(cache, forget), self.owned)
        self._last = info
        return info

    @staticmethod
    def _wrap(cache: Any, info: _CacheInfo) -> None:
        """Keep a counted cache's counter right across ``reset()`` and ``crop()`` (assisted decoding)."""
        reset, crop = getattr(cache, "reset", None), getattr(cache, "crop", None)
        if not callable(reset) or not callable(crop):
            info.wrapped = ()
            return

        def counted_reset(*args: Any, **kwargs: Any) -> Any:
            out = reset(*args, **kwargs)
            info.count = 0
            return out

        def counted_crop(tokens_to_remove: int, *args: Any, **kwargs: Any) -> Any:
            out = crop(tokens_to_remove, *args, **kwargs)
            if info.count is not None and tokens_to_remove <= 0:
                info.count = max(info.count - abs(tokens_to_remove), 0)
            return out

        try:
            cache.reset, cache.crop = counted_reset, counted_crop  # on the instance; the class is untouched
        except AttributeError:  # a cache with __slots__: the counter cannot follow reset / crop
            info.wrapped = ()
            return
        info.wrapped = (counted_reset, counted_crop)

    def close(self) -> None:
        """Take the ``reset`` / ``crop`` wrappers off every cache still alive; forget them all."""
        for info in list(self._infos.values()):
            cache = info.ref()
            if cache is not None and info.wrapped is not None:
                d = getattr(cache, "__dict__", {})
                for name, fn in zip(("reset", "crop"), info.wrapped):
                    if d.get(name) is fn:
                        del d[name]
            info.wrapped = None
        self._infos.clear()
        self._last = None


# -- which layers are heads, which cache layer a layer reads ---------------------------------------------


def _first_linear(module: nn.Module) -> nn.Module | None:
    for mod in module.modules():
        if isinstance(mod, nn.Linear):
            return mod
        if type(mod).__name__ == "Conv1D" and getattr(mod, "weight", None) is not None:  # GPT-2's Linear
            return mod
    return None


def layer_roles(model: nn.Module, layers: Sequence[Any]) -> tuple[list[int], list[int], list[int]]:
    """(head layer indices, head slot per layer, cache layer per layer).

    Heads: top-level layers after the last transformer block that hold a linear module; their
    positions are measured per step, and slot k of a step's ``head_tokens`` belongs to the k-th head
    (a head's children share its slot; -1: not a head). Cache layer: block j and its children read
    cache layer j (block order = cache order); -1 for everything else.
    """
    from llm_moments.engine.core.hooks import top_level_layers

    _, block_ids = top_level_layers(model)
    n = len(layers)
    parents = [getattr(l, "parent", None) for l in layers]
    top = [p is None for p in parents]
    cache_layer = [-1] * n
    ordinal = 0
    last_block = -1
    for i, l in enumerate(layers):
        if top[i] and id(l.module) in block_ids:
            cache_layer[i] = ordinal
            ordinal += 1
            last_block = i
    output = None
    if hasattr(model, "get_output_embeddings"):
        try:
            output = model.get_output_embeddings()
        except Exception:  # some models raise instead of returning None
            output = None
    heads: list[int] = []
    slot = [-1] * n
    for i, l in enumerate(layers):
        if not top[i] or id(l.module) in block_ids or _first_linear(l.module) is None:
            continue
        holds_output = output is not None and any(m is output for m in l.module.modules())
        if (block_ids and i > last_block) or holds_output:
            slot[i] = len(heads)
            heads.append(i)
    for i, p in enumerate(parents):
        if p is not None and 0 <= p < n:
            cache_layer[i], slot[i] = cache_layer[p], slot[p]
    return heads, slot, cache_layer


class HeadProbe:
    """Pre-hooks on the first linear module of each head layer: the positions it computes, per step.

    ``open()`` at step begin returns a fresh list that the hooks fill (None: the head did not run; two
    calls in one step add up); ``close()`` at step end points the hooks at a scratch list, so a head
    called between steps never touches a step's values. The list goes to the worker with the step.
    """

    def __init__(self, model: nn.Module, layers: Sequence[Any]):
        heads, _, _ = layer_roles(model, layers)
        self.modules = [_first_linear(layers[i].module) for i in heads]
        self.n = len(self.modules)
        self._idle: list[int | None] = [None] * self.n
        self.current: list[int | None] = self._idle
        self._handles: list[Any] = []

    def attach(self) -> HeadProbe:
        if self._handles or not self.n:
            return self
        for k, mod in enumerate(self.modules):
            def pre(m: nn.Module, a: tuple, _k: int = k, _probe: HeadProbe = self) -> None:
                if a and torch.is_tensor(a[0]):
                    x = a[0]
                    last = x.shape[-1] if x.dim() else 1
                    n = x.numel() // last if last else 0
                    cur = _probe.current
                    prev = cur[_k]
                    cur[_k] = n if prev is None else prev + n
            # prepended: it runs before the layer's timing hook, so its cost is outside the moment
            self._handles.append(mod.register_forward_pre_hook(pre, prepend=True))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.current = self._idle

    def open(self) -> list[int | None] | None:
        if not self.n:
            return None
        self.current = [None] * self.n
        return self.current

    def close(self) -> None:
        self.current = self._idle


def add_work_inputs(record: dict[str, Any], kv: Any, heads: list[int | None] | None) -> None:
    """Put a step's ``kv_len`` and ``head_tokens`` into its record (worker thread); absent when unknown."""
    kv_len = expand_kv(kv)
    if kv_len is not None:
        record["kv_len"] = kv_len
    if heads is not None:
        record["head_tokens"] = list(heads)


def owned_cache_layers(model: Any, layers: Sequence[Any]) -> list[int] | None:
    """The cache layers a pipeline stage fills (its present blocks); None when it owns all."""
    if all(l.present for l in layers):
        return None
    _, _, cache_layer = layer_roles(model, layers)
    return sorted({c for l, c in zip(layers, cache_layer) if c >= 0 and l.present and l.parent is None})
