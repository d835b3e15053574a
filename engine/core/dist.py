"""Ranks and sharding engines (design §10): everything a monitor needs to know about a model split
over processes or devices.

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

The timers for the waits these add are in ``engine.core.waits``.
"""

from __future__ import annotations

import os
import platform
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from llm_moments.engine.core.hooks import is_placeholder
from llm_moments.engine.core.timing import cuda_devices_in_use

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


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a plain tensor is its own shard)."""
    to_local = getattr(t, "to_local", None)
    if callable(to_local) and hasattr(t, "placements"):
        try:
            return to_local()
        except Exception:
            return t
    return t


def local_shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in local_tensor(t).shape)


def local_numel(t: torch.Tensor) -> int:
    return int(local_tensor(t).numel())


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


def input_handoffs(layers: Sequence[Any], placement: list[dict[str, Any]]) -> list[str | None]:
    """Per entry, the GPU its inputs come from when that is another GPU than its own, else None.

    The entry that runs just before an entry is taken to be its previous sibling (same parent; for a
    top-level entry the previous top-level entry), else its parent: where inputs come from in a model
    that runs its layers in order, as a ``device_map`` splits it. Absent and synthetic entries do not
    count. Decided once, from the placement, never per call."""
    out: list[str | None] = [None] * len(layers)
    last: dict[int | None, str] = {}
    for i, (layer, place) in enumerate(zip(layers, placement)):
        dev = place.get("device")
        if dev is None or layer.synthetic or not place.get("present", True):
            continue
        parent = layer.parent
        prev = last.get(parent)
        if prev is None and parent is not None:
            prev = placement[parent].get("device")
        last[parent] = dev
        if prev is not None and prev != dev and prev.startswith("cuda") and dev.startswith("cuda"):
            out[i] = prev
    return out


@dataclass
class Split:
    """How a model is split, decided once when a monitor is built (never per call)."""

    placement: list[dict[str, Any]]   # per layer entry: device, present, comm, offload (+ transfer_in)
    devices: list[str | None]         # per layer entry: where it computes
    handoff_from: list[str | None]    # per entry: the GPU its inputs come from, when another GPU
    engine: str | None                # what split it (sharding_engine), None for a whole model
    sharded: bool                     # the header lists placement per layer


def describe_split(model: nn.Module, layers: Sequence[Any], device: torch.device, world: tuple[int, int] | None,
                   multi_rank: bool) -> Split:
    """Placement of every entry; with layers on several GPUs (a device_map) the first layer on each
    GPU after another carries the inputs' transfer (``transfer_in``): each layer's events go on its
    own device, its cycles use its own device's clock (timing.MultiCudaTimer, sampler)."""
    placement = layer_placement(model, layers, device)
    devices = [p["device"] for p in placement]
    handoff = input_handoffs(layers, placement)
    multi_gpu = len(cuda_devices_in_use(devices, device)) > 1
    if multi_gpu:
        for place, src in zip(placement, handoff):
            if src is not None:
                place["transfer_in"] = True
    engine = sharding_engine(model, world[1] if world else 1)
    # Header layers carry device / present / comm / offload only when the model is split (absent:
    # the header's device, present, no collective, not offloaded).
    sharded = engine is not None or multi_rank or not all(l.present for l in layers) or multi_gpu
    return Split(placement, devices, handoff, engine, sharded)


__all__ = [
    "STYLE_COMM",
    "Split",
    "clock_origin",
    "describe_split",
    "execution_device",
    "input_handoffs",
    "is_multi_rank",
    "layer_placement",
    "local_numel",
    "local_shape",
    "local_tensor",
    "offloaded_hooks",
    "parallel_layout",
    "rank_info",
    "sharding_engine",
    "shared_session_id",
    "tp_module_styles",
    "world",
]
