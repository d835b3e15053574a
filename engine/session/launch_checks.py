"""What ``moments run --tp N`` / ``--pp N`` needs to know before anything starts: the world size, the
device, whether transformers can split the model that way, and the rank recordings (engine/session/launch.py
starts the ranks; engine/session/rank.py is one rank)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from llm_moments.engine.errors import MomentsError

LAUNCH_ENV = "MOMENTS_LAUNCH"
RANK_TIMEOUT_S = 120.0     # a collective that waits longer than this fails (a peer hung or went away)


def world_size(args: argparse.Namespace) -> int:
    return int(getattr(args, "tp", 1) or 1) * int(getattr(args, "pp", 1) or 1)


def launch_flags(args: argparse.Namespace) -> str:
    parts = [f"--tp {args.tp}"] if getattr(args, "tp", 1) > 1 else []
    parts += [f"--pp {args.pp}"] if getattr(args, "pp", 1) > 1 else []
    return " ".join(parts)


def in_child() -> bool:
    return LAUNCH_ENV in os.environ


# -- checks (the parent, before anything starts) -------------------------------------------------------


def launch_device(args: argparse.Namespace) -> str:
    """``cpu`` or ``cuda`` for every rank (rank R on cuda:R); ``auto`` is CUDA only with a GPU per rank."""
    import torch

    n = world_size(args)
    spec = (args.device or "auto").strip().lower()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return "cuda" if gpus >= n else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec == "cuda":
        if gpus < n:
            raise MomentsError(f"{launch_flags(args)} on CUDA needs {n} GPUs, one per rank; {gpus} visible "
                               "(use --device cpu, or fewer ranks)")
        return "cuda"
    if spec.startswith("cuda:"):
        raise MomentsError(f"{launch_flags(args)}: rank R runs on cuda:R; pick the GPUs with CUDA_VISIBLE_DEVICES "
                           f"and give --device cuda, not {spec}")
    raise MomentsError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")


def _check_shape(args: argparse.Namespace, name: str, cfg: dict[str, Any]) -> None:
    tp, pp = args.tp, args.pp
    heads = cfg.get("num_attention_heads")
    kv = cfg.get("num_key_value_heads") or heads
    for what, n in (("attention heads", heads), ("key/value heads", kv)):
        if tp > 1 and isinstance(n, int) and n % tp:
            raise MomentsError(f"--tp {tp}: {name} has {n} {what}, which do not split into {tp} equal shards "
                               f"(use a --tp that divides {n})")
    layers = cfg.get("num_hidden_layers")
    if pp > 1 and isinstance(layers, int) and layers < pp:
        raise MomentsError(f"--pp {pp}: {name} has {layers} layers, fewer than the {pp} pipeline stages")


def _check_model(args: argparse.Namespace) -> None:
    """The model must be one transformers can shard (a tensor / pipeline plan in its config class)."""
    from llm_moments.engine.session.models import check_model_spec
    from llm_moments.engine.session.presets import PRESETS

    kind = check_model_spec(args.model, "cpu", args.dtype if args.dtype != "auto" else "auto")
    spec = args.model
    what = "tensor-parallel" if args.tp > 1 else "pipeline"
    if kind == "preset":
        preset = PRESETS[spec]
        if preset.get("arch") != "llama":
            llamas = ", ".join(k for k, v in PRESETS.items() if v.get("arch") == "llama")
            raise MomentsError(f"{launch_flags(args)}: {spec} cannot be split by transformers (no {what} plan for its "
                               f"architecture); use --model {llamas} or a Llama-like model directory")
        _check_shape(args, spec, preset)
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec, local_files_only=True, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MomentsError(f"cannot read the configuration of {spec}: {first}") from None
    sub = getattr(config, "get_text_config", lambda: config)()
    for size, attr in ((args.tp, "base_model_tp_plan"), (args.pp, "base_model_pp_plan")):
        if size > 1 and not (getattr(sub, attr, None) or getattr(config, attr, None)):
            flag = "--tp" if attr.endswith("tp_plan") else "--pp"
            raise MomentsError(f"{flag} {size}: {spec} ({getattr(config, 'model_type', '?')}) cannot be split by "
                               f"transformers: its configuration has no {attr}; use a Llama-like model")
    _check_shape(args, spec, sub.to_dict())


def check_launch(args: argparse.Namespace) -> str:
    """Every check of a multi-rank run that needs no rank: one MomentsError line each. Returns the
    ranks' device kind. In a rank (``MOMENTS_LAUNCH`` set) the parent's record checks are skipped."""
    n = world_size(args)
    child = in_child()
    if not child and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
        raise MomentsError(f"{launch_flags(args)} starts its own ranks, but this process is already one of "
                           f"{os.environ['WORLD_SIZE']} (torchrun?): use Monitor in your own script there")
    if getattr(args, "inputs", None) == "-":
        raise MomentsError(f"{launch_flags(args)}: --inputs - (stdin) cannot feed {n} ranks; give a file")
    device = launch_device(args)
    _check_model(args)
    if args.record is not None and not child:
        check_rank_records(args.record, n, force=getattr(args, "force", False))
    return device


def check_rank_records(base: str, n: int, force: bool = False) -> list[Path]:
    """``run.rank0.jsonl`` … ``run.rank{n-1}.jsonl``, each new (or replaceable with ``force``); a rank file
    of an earlier, larger session beside them is refused (a merged view would refuse the mix)."""
    from llm_moments.engine.core.rankfiles import rank_files, split_rank
    from llm_moments.engine.core.recording import check_record_path, rank_record_path

    b, tagged = split_rank(base)
    if tagged is not None:
        raise MomentsError(f"--record {base}: give the base name ({b.name}); each rank adds .rank{{R}} itself")
    paths = [check_record_path(rank_record_path(b, r), force=force) for r in range(n)]
    stale = [r for r in rank_files(b) if r >= n]
    if stale:
        raise MomentsError(f"--record {base}: {rank_record_path(b, stale[0]).name} of an earlier session is "
                           f"there too ({len(stale)} file{'s' if len(stale) > 1 else ''} beyond rank {n - 1}): "
                           "move them away first")
    return paths
