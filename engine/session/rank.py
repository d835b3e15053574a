"""One rank of ``moments run --tp N`` / ``--pp N`` (the engine child, engine/session/stream.py): joining the
world the launcher made, loading the model sharded, agreeing to stop at a batch boundary, leaving."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.launch_checks import LAUNCH_ENV, RANK_TIMEOUT_S, launch_flags, world_size

# -- a rank (the child) -------------------------------------------------------------------------------


@dataclass
class RankContext:
    rank: int
    local_rank: int
    world: int
    folder: Path
    device: str            # "cpu" | "cuda"
    backend: str
    control: Any = None    # the gloo group the stop agreement runs on (None: the default group)


def join_world(args: argparse.Namespace) -> RankContext | None:
    """Join the launcher's world (None for a one-rank run). Raises MomentsError when ``--tp`` /
    ``--pp`` reach a process that no ``moments run`` launched."""
    n = world_size(args)
    if n <= 1:
        return None
    spec = os.environ.get(LAUNCH_ENV)
    if not spec:
        raise MomentsError(f"{launch_flags(args)}: `moments stream` is one rank of `moments run {launch_flags(args)}`; "
                           "start that instead")
    info = json.loads(spec)
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if world != n:
        raise MomentsError(f"{launch_flags(args)} means {n} ranks, but the launcher started {world}")
    import torch
    import torch.distributed as dist

    device = info.get("device", "cpu")
    backend = "nccl" if device == "cuda" else "gloo"
    kw: dict[str, Any] = {}
    if device == "cuda":
        torch.cuda.set_device(local)
        kw["device_id"] = torch.device("cuda", local)
    elif not getattr(args, "threads", None):   # N ranks share the cores: no oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    folder = Path(info["dir"])
    store = dist.FileStore(str(folder / "store"), world)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=RANK_TIMEOUT_S), **kw)
    control = dist.new_group(backend="gloo") if backend != "gloo" else None
    return RankContext(rank, local, world, folder, device, backend, control)


def agree_stop(ctx: RankContext, mine: bool) -> bool:
    """Whether any rank wants to stop: one 1-integer all_reduce, called once per batch by every rank."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if mine else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.control)
    return bool(t.item())


def leave_world(ctx: RankContext | None) -> None:
    if ctx is None:
        return
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        dist.destroy_process_group()


def load_sharded(args: argparse.Namespace, ctx: RankContext):
    """This rank's shard of the model (``DistributedConfig(tp_size, pp_size)``) as a ``LoadedModel``.
    A preset is built once by rank 0 (same seed, random weights) into the launch folder."""
    import torch
    import torch.distributed as dist
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.distributed import DistributedConfig

    from llm_moments.engine.session import models as M

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    dev = torch.device("cuda", ctx.local_rank) if ctx.device == "cuda" else torch.device("cpu")
    dt = M.resolve_dtype(args.dtype, dev)
    spec = args.model
    random_weights = False
    if spec in M.PRESETS:
        where = ctx.folder / "model"
        if ctx.rank == 0:
            model, _, _, _ = M._build_preset(spec)
            model.save_pretrained(where)
            del model
        dist.barrier()
        tokenizer = AutoTokenizer.from_pretrained(M.minilm_dir())
        name, source, random_weights = spec, "preset", True
        kw: dict[str, Any] = {}
    else:
        path = Path(spec).expanduser()
        where = path if path.exists() else spec
        name, source = (str(path.resolve()), "directory") if path.exists() else (spec, "hub-cache")
        kw = {"local_files_only": True, "trust_remote_code": args.trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, distributed_config=DistributedConfig(tp_size=args.tp, pp_size=args.pp), dtype=dt, **kw).eval()
    except (OSError, ValueError) as exc:
        raise MomentsError(f"cannot load {spec} split {launch_flags(args)}: {M._first_line(exc)}") from None
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    config = model.config
    info = {"name": name, "source": source, "architecture": type(model).__name__,
            "model_type": getattr(config, "model_type", None), "parameters": M._count_params(model),
            "dtype": str(dt).replace("torch.", ""), "random_weights": random_weights, "generative": True,
            "split": {"tp": args.tp, "pp": args.pp}}
    positions = M._config_positions(config.to_dict())
    return M.LoadedModel(model, tokenizer, dev, dt, True, info, positions)
