"""Rank bodies for tests/test_dist.py, importable by torch.multiprocessing's spawned children.

One spawn runs every multi-rank scenario in turn on the same gloo world (importing transformers
costs seconds per process, so the ranks are started once): a tensor-parallel session (tp=2) with a
straggler on rank 1, then a pipeline session (pp=2). Each writes ``run.jsonl`` through a Monitor,
which makes one file per rank.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from pathlib import Path

import torch

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
IDS = [[1, 5, 9, 17, 33, 65, 3, 7]]
STRAGGLER_S = 0.020


def save_tiny_llama(path: str | os.PathLike, layers: int = 4) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**TINY, "num_hidden_layers": layers})).save_pretrained(path)
    return str(path)


class _Clock:
    name = "fake"

    def info(self):
        return {"name": "fake clock"}

    def read_fast(self):
        return {"clock_mhz": 1000.0}

    def read_slow(self):
        return {}


def init_world(rank: int, world: int, store_path: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)


def _tp(rank: int, model_dir: str, out: Path, new_tokens: int) -> None:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    from llm_moments import Monitor

    model = AutoModelForCausalLM.from_pretrained(model_dir, distributed_config=DistributedConfig(tp_size=2)).eval()
    ids = torch.tensor(IDS)
    with torch.no_grad():  # warm-up outside the session (first-call costs)
        model.generate(ids, max_new_tokens=2, do_sample=False)
    if rank == 1:  # the straggler: rank 1 computes 20 ms longer inside layers.1's MLP
        model.model.layers[1].mlp.register_forward_pre_hook(lambda m, a: time.sleep(STRAGGLER_S))
    dist.barrier()
    with Monitor(model, record=out / "tp" / "run.jsonl", clock_source=_Clock(), roof=False,
                 record_text=False) as mon, torch.no_grad():
        model.generate(ids, max_new_tokens=new_tokens, do_sample=False)
    # the style wrappers are process-global singletons: they must be gone after the session
    from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES

    left = [n for n, s in ALL_PARALLEL_STYLES._global_mapping.items()
            if "transform_output_post_forward" in vars(s) or "transform_inputs_pre_forward" in vars(s)]
    (out / "tp" / f"left.rank{rank}.txt").write_text(",".join(left))
    (out / "tp" / f"path.rank{rank}.txt").write_text(str(mon.recorder.path if mon.recorder else ""))
    del model


def _pp(rank: int, model_dir: str, out: Path, new_tokens: int) -> None:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    from llm_moments import Monitor

    model = AutoModelForCausalLM.from_pretrained(model_dir, distributed_config=DistributedConfig(pp_size=2)).eval()
    ids = torch.tensor(IDS)
    dist.barrier()
    with Monitor(model, depth="sublayers", record=out / "pp" / "sublayers.jsonl", clock_source=_Clock(),
                 roof=False, record_text=False), torch.no_grad():
        model.generate(ids, max_new_tokens=new_tokens, do_sample=False)


def main(rank: int, world: int, store_path: str, model_dir: str, out_dir: str, scenarios: tuple[str, ...],
         new_tokens: int = 4) -> None:
    out = Path(out_dir)
    init_world(rank, world, store_path)
    import torch.distributed as dist

    try:
        for name in scenarios:
            (out / name).mkdir(parents=True, exist_ok=True)
            {"tp": _tp, "pp": _pp}[name](rank, model_dir, out, new_tokens)
            dist.barrier()
    except BaseException:
        (out / f"error.rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
