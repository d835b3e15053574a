"""What a run needs before its first step: checked options, inputs, the loaded model, the monitor.

Shared by the headless CLI and the live UI's engine child (``stream``), so both start a session
the same way from the same parsed options.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from llm_moments.engine.errors import MomentsError


def prepare_session(args: argparse.Namespace, on_progress: Callable[[str], None] | None = None):
    """Everything a session needs, checked in the order that fails fastest: record path, inputs, model."""
    from llm_moments.engine.session.inputs import read_texts
    from llm_moments.engine.core.recording import check_writable

    if args.record:
        check_writable(args.record)
    texts = read_texts(args.inputs)
    if not (0 < args.sample_hz <= 20):
        raise MomentsError(f"--sample-hz must be more than 0 and at most 20, not {args.sample_hz}")
    if not (0 < args.util_hz <= 10):
        raise MomentsError(f"--util-hz must be more than 0 and at most 10, not {args.util_hz}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from llm_moments.engine.session.models import load_model

    if on_progress:
        on_progress(f"loading {args.model}")
    loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    return texts, loaded


def make_monitor(args: argparse.Namespace, loaded: Any, listeners: Sequence[Callable] = ()):
    from llm_moments.engine.session.monitor import Monitor

    run_info = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens if loaded.generative else None,
                "inputs": args.inputs or "built-in samples", "warmup_batches": args.warmup,
                "threads": __import__("torch").get_num_threads()}
    return Monitor(loaded.model, depth=args.depth, record=args.record, sample_hz=args.sample_hz,
                   util_hz=args.util_hz, model_info=loaded.info, run_info=run_info,
                   roof=not getattr(args, "no_calibrate", False),
                   record_text=not args.no_text, listeners=list(listeners))


def warm_up(args: argparse.Namespace, loaded: Any, texts: list[str]) -> None:
    from llm_moments.engine.session.inputs import batches
    from llm_moments.engine.session.runner import run_batch

    for _, batch in zip(range(args.warmup), batches(texts, args.batch_size, loop=True)):
        run_batch(loaded, batch, min(args.max_new_tokens, 4))
