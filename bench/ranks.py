"""Overhead of the monitor per rank in a tensor-parallel session (issue #9), measured the way design §9
says: two gloo ranks on this machine run a tiny random Llama with ``DistributedConfig(tp_size=2)``;
each round times a block of decode steps (driven by hand with the KV cache) monitored and plain, in
alternating order (ABAB / BABA), and reports per rank the median of the per-pair ratios, beside an
A/A (plain against plain) of the same estimator. Both ranks time the same blocks (a barrier starts
each), so a collective's wait is inside both sides alike.

    .venv/bin/python bench/ranks.py [--rounds 40] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

IDS = [[5, 9, 13, 17, 21, 25, 29, 33]]


def _tiny_llama(where: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=256)
    LlamaForCausalLM(cfg).eval().save_pretrained(where)
    return str(where)


def _rank(rank: int, store: str, model_dir: str, out: str, rounds: int, steps: int) -> None:
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, DynamicCache
    from transformers.distributed import DistributedConfig

    from llm_moments import Monitor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    model = AutoModelForCausalLM.from_pretrained(model_dir, distributed_config=DistributedConfig(tp_size=2)).eval()
    ids = torch.tensor(IDS)

    def block(monitored: bool) -> float:
        mon = Monitor(model, roof=False).start() if monitored else None
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            tok = model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(steps):
                tok = model(input_ids=tok, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            dt = (time.perf_counter() - t0) / steps
        if mon is not None:
            mon.stop()
        return dt

    for _ in range(3):  # warm-up, unrecorded
        block(False)
        block(True)
    pairs: dict[str, list[tuple[float, float]]] = {"monitored/plain": [], "A/A": []}
    for r in range(rounds):
        for key, a in (("monitored/plain", True), ("A/A", False)):
            if r % 2:
                ta = block(a)
                tb = block(False)
            else:
                tb = block(False)
                ta = block(a)
            pairs[key].append((ta, tb))
    Path(out, f"rank{rank}.json").write_text(json.dumps(pairs))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="ABAB rounds per comparison (default 40)")
    ap.add_argument("--steps", type=int, default=3, help="decode steps per side (default 3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _tiny_llama(Path(tmp) / "model")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
        t0 = time.monotonic()
        mp.spawn(_rank, args=(str(Path(tmp) / "store"), model_dir, tmp, args.rounds, args.steps), nprocs=2)
        print(f"tp=2 on two gloo ranks, tiny Llama (4 × 64, random weights), {args.rounds} rounds of "
              f"{args.steps} decode steps a side, {time.monotonic() - t0:.0f} s")
        print(f"{'rank':<6}{'comparison':<18}{'median ratio':>14}{'p25–p75':>18}{'plain step ms':>15}")
        for rank in (0, 1):
            pairs = json.loads(Path(tmp, f"rank{rank}.json").read_text())
            for key, rows in pairs.items():
                ratios = sorted(a / b for a, b in rows)
                q = statistics.quantiles(ratios, n=4)
                plain = statistics.median(b for _, b in rows) * 1e3
                print(f"{rank:<6}{key:<18}{statistics.median(ratios):>14.4f}{q[0]:>10.3f}–{q[2]:.3f}{plain:>15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
