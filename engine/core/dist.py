"""Ranks, sharding engines and the waits they add (design §10): everything a monitor needs to know
about a model split over processes or devices, and the timers for the time it spends waiting.

**Where am I.** ``rank_info()`` reads the torch.distributed world (rank, local rank, world size,
host, backend); ``parallel_layout(model)`` the tensor / pipeline / data parallel sizes and this
rank's coordinates (from transformers' device mesh, else from the pipeline stage, else the world
size); ``sharding_engine(model)`` names what split the model: ``transformers-tp``,
``transformers-pp`` (``transformers-tp+pp`` for both), ``accelerate-device-map``, ``ddp``,
``fsdp``, ``replicated`` (several ranks, each with the whole model). ``shared_session_id()`` is
the one collective here: called once when a monitor starts (never per step), through the
process group's store when there is one (rank 0 writes, the others wait a bounded time), else a
broadcast.

**What each layer holds** (``layer_placement``): the device it computes on, whether this pipeline
stage owns it (``present``), the collective it holds from the tensor-parallel plan (``comm``:
row-wise → ``all_reduce``, gather-output → ``all_gather``; None otherwise) and where its weights
live between calls when accelerate offloads them (``offload``: ``"disk"`` | ``"cpu"``).

**Waits** (``SpanTimer`` + ``Instruments``). Time inside a collective, or inside a weight load, is
taken around the call that does it, not with a device sync: the transformers tensor-parallel
style objects' ``transform_inputs_pre_forward`` / ``transform_output_post_forward`` (every path
goes through them: the explicit ``dist.all_reduce`` of the no-grad fast path, DTensor
redistributes, grad mode), the pipeline stage's ``communicate`` / ``broadcast_from_last``, and
accelerate's ``AlignDevicesHook.pre_forward`` / ``post_forward`` of offloaded modules. Each wrapper
reads the hooks' stack of open layer entries and adds its span to the innermost open one; the
worker later adds each entry's own time to its ancestors (an entry's open ancestors are exactly
its parent chain, hooks.py), so a layer's ``comm_ms`` is the collective time inside it. On CPU a
span is two ``perf_counter_ns`` reads; on CUDA a pair of events from a pool recorded on the current
stream (a collective makes the current stream wait for it, so the pair spans the wait), resolved
by the worker at step end. Wrappers go on instance attributes and come off on ``close()``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import re
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from llm_moments.engine.core.hooks import OUTSIDE, ROOT, is_placeholder

# -- the process world --------------------------------------------------------------------------------


def _dist() -> Any:
    try:
        import torch.distributed as dist
    except ImportError:  # a torch built without distributed
        return None
    try:
        if dist.is_available() and dist.is_initialized():
            return dist
    except Exception:
        return None
    return None


def world() -> tuple[int, int] | None:
    """(global rank, world size) under an initialized torch.distributed, else None."""
    dist = _dist()
    if dist is None:
        return None
    try:
        return int(dist.get_rank()), int(dist.get_world_size())
    except Exception:
        return None


def is_multi_rank() -> bool:
    w = world()
    return w is not None and w[1] > 1


def rank_info() -> dict[str, Any]:
    """rank, local_rank, world_size, host, backend of this process (rank 0 of 1 without a world)."""
    dist = _dist()
    rank, size = world() or (0, 1)
    backend = None
    if dist is not None:
        try:
            backend = str(dist.get_backend())
        except Exception:
            backend = None
    local = os.environ.get("LOCAL_RANK")
    local_rank = int(local) if local is not None and local.strip().isdigit() else rank
    return {"rank": rank, "local_rank": local_rank, "world_size": size, "host": platform.node(),
            "backend": backend}


def clock_origin() -> dict[str, int]:
    """The monotonic clock and the wall clock read together: ``t_ns`` of any rank maps to wall time
    (same host: exact; across hosts: as good as their NTP)."""
    a = time.perf_counter_ns()
    wall = time.time_ns()
    b = time.perf_counter_ns()
    return {"perf_counter_ns": (a + b) // 2, "time_ns": wall, "read_ns": b - a}


# -- how the model is split ---------------------------------------------------------------------------

_DP_DIMS = ("dp", "fsdp", "dp_shard", "dp_replicate", "ddp", "cp")


def _mesh_dims(model: nn.Module) -> tuple[dict[str, int], dict[str, int]] | None:
    """({dim: size}, {dim: this rank's coordinate}) of transformers' device mesh, or None."""
    mesh = getattr(model, "_device_mesh", None)
    if mesh is None:
        return None
    try:
        names = tuple(mesh.mesh_dim_names or ())
        shape = tuple(int(s) for s in mesh.mesh.shape)
        coord = mesh.get_coordinate()
    except Exception:
        return None
    if len(names) != len(shape):
        return None
    sizes = dict(zip(names, shape))
    coords = dict(zip(names, (int(c) for c in coord))) if coord is not None else {}
    return sizes, coords


def parallel_layout(model: nn.Module, rank: int | None = None, world_size: int | None = None) -> dict[str, Any]:
    """Tensor / pipeline / data parallel sizes and this rank's coordinates in them.

    ``{"tp": 2, "pp": 1, "dp": 1, "tp_rank": r, "pp_rank": 0, "dp_rank": 0, "mesh": {...}}``: from the
    device mesh transformers builds (``("pp", "fsdp", "tp")``), else the pipeline stage, else every
    rank is a data-parallel replica.
    """
    if rank is None or world_size is None:
        rank, world_size = world() or (0, 1)
    tp, pp, tp_rank, pp_rank = 1, 1, 0, 0
    mesh_out: dict[str, int] | None = None
    dims = _mesh_dims(model)
    if dims is not None:
        sizes, coords = dims
        mesh_out = sizes
        tp, tp_rank = sizes.get("tp", 1), coords.get("tp", 0)
        pp, pp_rank = sizes.get("pp", 1), coords.get("pp", 0)
    else:
        tp = int(getattr(model, "_tp_size", None) or 1)
        stage = getattr(model, "_pp_stage", None)
        if stage is not None:
            pp, pp_rank = int(getattr(stage, "pp_size", 1)), int(getattr(stage, "pp_rank", 0))
        if tp > 1:
            tp_rank = rank % tp
    dp = max(1, world_size // max(1, tp * pp))
    dp_rank = rank // max(1, tp * pp) if dp > 1 else 0
    if dims is not None:
        dp_names = [n for n in dims[0] if n in _DP_DIMS]
        if dp_names:
            dp = 1
            for n in dp_names:
                dp *= dims[0][n]
            dp_rank = dims[1].get(dp_names[0], 0) if len(dp_names) == 1 else dp_rank
            dp = max(dp, world_size // max(1, tp * pp))
    out: dict[str, Any] = {"tp": tp, "pp": pp, "dp": dp, "tp_rank": tp_rank, "pp_rank": pp_rank,
                           "dp_rank": dp_rank}
    if mesh_out is not None:
        out["mesh"] = mesh_out
    return out


def _tp_size(model: nn.Module) -> int:
    dims = _mesh_dims(model)
    if dims is not None:
        return dims[0].get("tp", 1)
    return int(getattr(model, "_tp_size", None) or 1)


def has_offload_hooks(model: nn.Module) -> bool:
    return any(getattr(m, "_hf_hook", None) is not None for m in model.modules())


def sharding_engine(model: nn.Module, world_size: int | None = None) -> str | None:
    """Which engine split ``model`` (None: nothing did and there is one process)."""
    if world_size is None:
        world_size = (world() or (0, 1))[1]
    name = type(model).__name__
    if name == "DistributedDataParallel":
        return "ddp"
    if name.startswith("FullyShardedDataParallel") or type(model).__name__.startswith("FSDP"):
        return "fsdp"
    parts = []
    if _tp_size(model) > 1:
        parts.append("tp")
    if getattr(model, "_pp_stage", None) is not None:
        parts.append("pp")
    if parts:
        return "transformers-" + "+".join(parts)
    if getattr(model, "hf_device_map", None) and has_offload_hooks(model):
        return "accelerate-device-map"
    return "replicated" if world_size > 1 else None


_SESSIONS_STARTED = [0]  # per process: monitors started, in order (ranks start theirs in the same order)


def shared_session_id(timeout_s: float = 60.0) -> str:
    """An id that every rank of the world gets the same: rank 0 draws it, the others receive it.

    Called once when a monitor starts. Through the default process group's store (rank 0 sets a key
    named after the count of monitors this process started; the others wait at most ``timeout_s``),
    else ``broadcast_object_list``. Without a world, or when the exchange fails, a local id (the
    status then says the ranks may not match)."""
    _SESSIONS_STARTED[0] += 1
    mine = secrets.token_hex(8)
    dist = _dist()
    rank, size = world() or (0, 1)
    if dist is None or size <= 1:
        return mine
    key = f"llm_moments/session/{_SESSIONS_STARTED[0]}"
    store = None
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:
        store = None
    if store is not None:
        if rank == 0:
            store.set(key, mine)
            return mine
        store.wait([key], timedelta(seconds=timeout_s))
        got = store.get(key)
        return got.decode() if isinstance(got, bytes) else str(got)
    box = [mine if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


# -- what each layer holds ---------------------------------------------------------------------------

# The collective each tensor-parallel style runs in a forward (transformers 5.2x, distributed/
# tensor_parallel.py). Styles not listed hold none in a forward (colwise: replicated in, sharded out).
STYLE_COMM = {
    "rowwise": "all_reduce", "rowwise_split_input": "all_reduce", "rowwise_rep": "all_reduce",
    "packed_rowwise": "all_reduce",
    "colwise_gather_output": "all_gather", "colwise_rep": "all_gather",
    "embedding_rowwise": "all_reduce", "embedding_colwise": "all_gather",
    "all_reduce": "all_reduce", "moe_tp_experts": "all_reduce",
    "sequence_parallel": "redistribute",
}


def _plan_regex(pattern: str) -> re.Pattern:
    # "model.layers.*.mlp.down_proj": a star is one path segment
    return re.compile("^" + r"[^.]+".join(re.escape(p) for p in pattern.split("*")) + "$")


def tp_module_styles(model: nn.Module) -> dict[int, str]:
    """{id(module): style name} for the modules the tensor-parallel plan installed a forward on."""
    if _tp_size(model) <= 1:
        return {}
    plan = getattr(model, "tp_plan", None) or getattr(model, "_tp_plan", None) or {}
    try:
        items = [(str(k), str(v)) for k, v in dict(plan).items()]
    except Exception:
        return {}
    compiled = [(_plan_regex(k), v) for k, v in items]
    out: dict[int, str] = {}
    for name, mod in model.named_modules():
        if not getattr(mod, "_is_hooked", False) or not name:
            continue
        for rx, style in compiled:
            if rx.match(name):
                out[id(mod)] = style
                break
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor is its own shard)."""
    to_local = getattr(t, "to_local", None)
    if callable(to_local) and hasattr(t, "placements"):
        try:
            return to_local()
        except Exception:
            return t
    return t


def local_shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in _local(t).shape)


def local_numel(t: torch.Tensor) -> int:
    return int(_local(t).numel())


def _accelerate_hooks(mod: nn.Module) -> list[Any]:
    hook = getattr(mod, "_hf_hook", None)
    if hook is None:
        return []
    inner = getattr(hook, "hooks", None)  # SequentialHook
    return list(inner) if isinstance(inner, (list, tuple)) else [hook]


def _offload_where(hook: Any) -> str | None:
    """``"disk"`` or ``"cpu"`` for an accelerate hook that offloads its module's weights, else None."""
    if not getattr(hook, "offload", False):
        return None
    wm = getattr(hook, "weights_map", None)
    loader = getattr(wm, "dataset", wm)
    prefix = getattr(wm, "prefix", "") or ""
    index = getattr(loader, "index", None) or {}
    try:
        on_disk = any(str(k).startswith(prefix) for k in index)
    except Exception:
        on_disk = False
    return "disk" if on_disk else "cpu"


def offloaded_hooks(model: nn.Module) -> list[tuple[nn.Module, Any, str]]:
    """(module, accelerate hook, "disk" | "cpu") for every module whose weights are loaded per call."""
    out = []
    for mod in model.modules():
        for hook in _accelerate_hooks(mod):
            where = _offload_where(hook)
            if where is not None:
                out.append((mod, hook, where))
    return out


def _device_of(module: nn.Module, default: torch.device) -> str:
    for mod in module.modules():
        for hook in _accelerate_hooks(mod):
            dev = getattr(hook, "execution_device", None)
            if dev is not None:
                return str(torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev))
    for p in module.parameters():
        if p.device.type != "meta":
            return str(p.device)
    for b in module.buffers():
        if b.device.type != "meta":
            return str(b.device)
    return str(default)


def execution_device(model: nn.Module) -> torch.device | None:
    """The device accelerate computes the model on (its root hook's), when it dispatched the model."""
    for hook in _accelerate_hooks(model):
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    dmap = getattr(model, "hf_device_map", None)
    if isinstance(dmap, dict):
        for v in dmap.values():
            if v not in ("cpu", "disk", "meta"):
                return torch.device("cuda", v) if isinstance(v, int) else torch.device(v)
        return torch.device("cpu")
    return None


def layer_placement(model: nn.Module, layers: Sequence[Any], default_device: torch.device) -> list[dict[str, Any]]:
    """Per layer entry: ``device``, ``present``, ``comm``, ``offload`` (see the module's docstring).

    ``comm`` names the collectives the layer's subtree holds ("+"-joined when several kinds), None when
    none. A pipeline placeholder has ``present: false`` and no device."""
    styles = tp_module_styles(model)
    offload = {id(m): where for m, _, where in offloaded_hooks(model)}
    out = []
    for layer in layers:
        mod = layer.module
        synthetic = getattr(layer, "synthetic", False)
        present = getattr(layer, "present", True) and not is_placeholder(mod)
        comm_kinds: list[str] = []
        where: str | None = None
        if present and not synthetic:
            for sub in mod.modules():
                kind = STYLE_COMM.get(styles.get(id(sub), ""))
                if kind and kind not in comm_kinds:
                    comm_kinds.append(kind)
                w = offload.get(id(sub))
                if w == "disk" or (w == "cpu" and where is None):
                    where = w
        entry: dict[str, Any] = {
            "device": None if not present else (str(default_device) if synthetic else _device_of(mod, default_device)),
            "present": present,
            "comm": getattr(layer, "comm", None) if synthetic else ("+".join(comm_kinds) or None),
            "offload": where,
        }
        out.append(entry)
    return out


# -- timing the waits ---------------------------------------------------------------------------------


def innermost_entry(stack: list[int]) -> int:
    """The innermost open layer entry on the hooks' stack; ROOT (-1) inside a step with none open,
    OUTSIDE (-2) outside a step."""
    for k in reversed(stack):
        if k >= 0 or k in (ROOT, OUTSIDE):
            return k
    return OUTSIDE


class SpanTimer:
    """Spans of wrapped calls (collectives, weight loads) per layer entry, for one step at a time.

    ``span(fn)`` gives a wrapper of ``fn`` whose every call adds its duration to the innermost open
    entry of the hooks' ``stack`` (``outside_ns`` when a step runs but no entry is open; nothing
    between steps). ``begin_step`` / ``end_step`` / ``resolve`` as ``Timer``; ``resolve`` gives each
    entry's own time (ns) and ``outside`` — the worker adds descendants to ancestors.

    ``kind="cuda"``: each call records an event pair (from a pool of frames, grown only while it warms
    up) on the current stream; ``resolve`` waits for the step's last event only. ``event_factory`` /
    ``stream_fn`` replace torch.cuda's (tests).
    """

    def __init__(self, n_layers: int, stack: list[int], kind: str = "cpu",
                 event_factory: Callable[[], Any] | None = None, stream_fn: Callable[[], Any] | None = None):
        self.n_layers = n_layers
        self.stack = stack
        self.kind = kind
        self.active = True
        self._acc = [0] * n_layers
        self._outside = 0
        self.calls = 0
        if kind == "cuda":
            self._event_factory = event_factory or (lambda: torch.cuda.Event(enable_timing=True))
            self._stream_fn = stream_fn or torch.cuda.current_stream
            self._free: collections.deque = collections.deque()
            self._frame: list[Any] | None = None   # [events pool, cursor, spans]
            self.frames_created = 0

    # -- per step ---------------------------------------------------------------------------------
    def begin_step(self) -> None:
        if self.kind == "cuda":
            try:
                frame = self._free.popleft()
            except IndexError:
                self.frames_created += 1
                frame = [[], 0, []]
            frame[1] = 0
            frame[2] = []
            self._frame = frame
            return
        self._acc = [0] * self.n_layers
        self._outside = 0

    def end_step(self) -> Any:
        if self.kind == "cuda":
            frame, self._frame = self._frame, None
            return frame
        acc, out = self._acc, self._outside
        self._acc = [0] * self.n_layers
        self._outside = 0
        return (acc, out)

    def resolve(self, pending: Any) -> tuple[list[float], float]:
        """(own ns per entry, ns outside any entry) of an ended step; on CUDA waits for its last event."""
        if self.kind != "cuda":
            acc, out = pending
            return [float(x) for x in acc], float(out)
        acc = [0.0] * self.n_layers
        out = 0.0
        if pending is None:
            return acc, out
        spans = pending[2]
        if spans:
            spans[-1][2].synchronize()
        for i, a, b in spans:
            ns = a.elapsed_time(b) * 1e6
            if i >= 0:
                acc[i] += ns
            else:
                out += ns
        pending[2] = []
        self._free.append(pending)
        return acc, out

    def discard(self, pending: Any) -> None:
        if self.kind == "cuda" and pending is not None:
            pending[2] = []
            self._free.append(pending)

    # -- the wrappers (hot path) --------------------------------------------------------------------
    def span(self, fn: Callable) -> Callable:
        if self.kind == "cuda":
            return self._cuda_span(fn)
        timer = self
        stack = self.stack
        clock = time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not timer.active or stack[-1] == OUTSIDE:
                return fn(*args, **kwargs)
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = clock() - t0
                top = stack[-1]
                if top < 0:
                    top = innermost_entry(stack)
                if top >= 0:
                    timer._acc[top] += dt
                elif top == ROOT:
                    timer._outside += dt
                timer.calls += 1

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def _cuda_span(self, fn: Callable) -> Callable:
        timer = self
        stack = self.stack

        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = timer._frame
            if not timer.active or frame is None or stack[-1] == OUTSIDE:
                return fn(*args, **kwargs)
            stream = timer._stream_fn()
            a = timer._take(frame)
            a.record(stream)
            try:
                return fn(*args, **kwargs)
            finally:
                b = timer._take(frame)
                b.record(timer._stream_fn())
                top = stack[-1]
                if top < 0:
                    top = innermost_entry(stack)
                if top != OUTSIDE:
                    frame[2].append((top, a, b))
                timer.calls += 1

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def _take(self, frame: list[Any]) -> Any:
        pool = frame[0]
        if frame[1] == len(pool):
            pool.append(self._event_factory())  # only while the pool warms up
        ev = pool[frame[1]]
        frame[1] += 1
        return ev


def inclusive(own: Sequence[float], parents: Sequence[int | None]) -> list[float]:
    """Each entry's own time plus its descendants' (parents precede children in the layer list)."""
    n = len(own)
    total = list(own)
    for i in range(n):
        if not own[i]:
            continue
        j, hops = parents[i], 0
        while j is not None and 0 <= j < n and hops < n:  # a child's time is inside every ancestor
            total[j] += own[i]
            j, hops = parents[j], hops + 1
    return total


class _Patch:
    """One attribute replaced on an object; ``undo`` puts back exactly what was there."""

    __slots__ = ("had", "name", "new", "obj", "old")

    def __init__(self, obj: Any, name: str, new: Any):
        d = getattr(obj, "__dict__", {})
        self.obj, self.name, self.new = obj, name, new
        self.had = name in d
        self.old = d.get(name)
        setattr(obj, name, new)

    def undo(self) -> None:
        d = getattr(self.obj, "__dict__", {})
        if d.get(self.name) is not self.new:
            return  # someone wrapped over us: leave theirs (ours is switched off and passes through)
        if self.had:
            setattr(self.obj, self.name, self.old)
        else:
            with contextlib.suppress(AttributeError):
                delattr(self.obj, self.name)


PIPELINE_ENTRY = "(pipeline recv/send)"


class Instruments:
    """The wrappers a sharded session needs, installed once a monitor's hooks exist; ``close`` removes them.

    ``comm``: a SpanTimer over the tensor-parallel style transforms of the styles the model uses that
    hold a collective; ``load``: over offloaded accelerate hooks' pre/post_forward; ``pipeline_entry``:
    index of the synthetic layer entry timed around the pipeline stage's ``communicate`` and
    ``broadcast_from_last`` (through the moment timer itself, so it is a moment like any other), with
    ``pipeline_ms`` a host-side split per operation for the current step.
    """

    def __init__(self, model: nn.Module, layers: Sequence[Any], stack: list[int], timer: Any, device: torch.device):
        self.model = model
        self.layers = layers
        self.stack = stack
        self.timer = timer
        kind = "cuda" if device.type == "cuda" else "cpu"
        n = len(layers)
        self.comm: SpanTimer | None = None
        self.load: SpanTimer | None = None
        self.pipeline_entry: int | None = next((i for i, l in enumerate(layers)
                                                if getattr(l, "synthetic", False) and l.name == PIPELINE_ENTRY), None)
        self.pipeline_ms: dict[str, float] = {}
        self._patches: list[_Patch] = []
        self._timers: list[SpanTimer] = []
        try:
            self._install_tp(n, kind)
            self._install_offload(n, kind)
            self._install_pp()
        except BaseException:
            self.close()
            raise

    def _install_tp(self, n: int, kind: str) -> None:
        styles = tp_module_styles(self.model)
        used = {s for s in styles.values() if STYLE_COMM.get(s)}
        if not used:
            return
        try:
            from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES
        except Exception:
            return
        mapping = getattr(ALL_PARALLEL_STYLES, "_global_mapping", {})
        self.comm = SpanTimer(n, self.stack, kind)
        self._timers.append(self.comm)
        seen: set[int] = set()
        for name in sorted(used):
            style = mapping.get(name)
            if style is None or id(style) in seen:
                continue
            seen.add(id(style))
            for meth in ("transform_inputs_pre_forward", "transform_output_post_forward"):
                bound = getattr(style, meth, None)
                if callable(bound):
                    self._patches.append(_Patch(style, meth, self.comm.span(bound)))

    def _install_offload(self, n: int, kind: str) -> None:
        hooks = offloaded_hooks(self.model)
        if not hooks:
            return
        self.load = SpanTimer(n, self.stack, kind)
        self._timers.append(self.load)
        seen: set[int] = set()
        for _, hook, _ in hooks:
            if id(hook) in seen:
                continue
            seen.add(id(hook))
            for meth in ("pre_forward", "post_forward"):
                bound = getattr(hook, meth, None)
                if callable(bound):
                    self._patches.append(_Patch(hook, meth, self.load.span(bound)))

    def _install_pp(self) -> None:
        stage = getattr(self.model, "_pp_stage", None)
        i = self.pipeline_entry
        if stage is None or i is None:
            return
        stack, timer, split = self.stack, self.timer, self.pipeline_ms
        clock = time.perf_counter_ns

        def around(fn: Callable, label: Callable[[tuple], str]) -> Callable:
            def timed(*args: Any, **kwargs: Any) -> Any:
                if stack[-1] != ROOT:  # between steps, or inside a layer (its time is that layer's)
                    return fn(*args, **kwargs)
                stack.append(i)
                timer.start(i)
                t0 = clock()
                try:
                    return fn(*args, **kwargs)
                finally:
                    dt = clock() - t0
                    timer.stop(i)
                    stack.pop()
                    key = label(args)
                    split[key] = split.get(key, 0.0) + dt / 1e6

            timed.__wrapped__ = fn  # type: ignore[attr-defined]
            return timed

        def comm_label(args: tuple) -> str:
            op = str(args[0]) if args else "p2p"
            return {"recv_forward": "recv", "send_forward": "send"}.get(op, op)

        for meth, label in (("communicate", comm_label), ("broadcast_from_last", lambda a: "broadcast")):
            bound = getattr(stage, meth, None)
            if callable(bound):
                self._patches.append(_Patch(stage, meth, around(bound, label)))

    # -- per step (inference thread) ------------------------------------------------------------------
    def begin_step(self) -> None:
        for t in self._timers:
            t.begin_step()
        if self.pipeline_ms:
            self.pipeline_ms.clear()  # the pipeline wrappers hold this dict: cleared in place

    def end_step(self) -> tuple[Any, Any, dict[str, float] | None]:
        comm = self.comm.end_step() if self.comm is not None else None
        load = self.load.end_step() if self.load is not None else None
        split = None
        if self.pipeline_entry is not None:
            split = {k: round(v, 5) for k, v in self.pipeline_ms.items()}
            self.pipeline_ms.clear()
        return comm, load, split

    def discard(self, pending: tuple[Any, Any, Any]) -> None:
        comm, load, _ = pending
        if self.comm is not None:
            self.comm.discard(comm)
        if self.load is not None:
            self.load.discard(load)

    def close(self) -> None:
        for t in self._timers:
            t.active = False
        for p in reversed(self._patches):
            p.undo()
        self._patches = []


__all__ = [
    "PIPELINE_ENTRY",
    "STYLE_COMM",
    "Instruments",
    "SpanTimer",
    "clock_origin",
    "execution_device",
    "inclusive",
    "innermost_entry",
    "is_multi_rank",
    "layer_placement",
    "local_numel",
    "local_shape",
    "offloaded_hooks",
    "parallel_layout",
    "rank_info",
    "sharding_engine",
    "shared_session_id",
    "tp_module_styles",
    "world",
]
