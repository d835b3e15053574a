"""What a run needs before its first step: checked options, inputs, the loaded model, the monitor.

Shared by the headless CLI and the live UI's engine child (``stream``), so both start a session
the same way from the same parsed options.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from llm_moments.engine.errors import MomentsError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def rate_hz(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_run_options(p: argparse.ArgumentParser) -> None:
    from llm_moments.engine.session.presets import PRESETS  # torch-free: --help stays instant

    presets = "; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items())
    g = p.add_argument_group("model")
    g.add_argument("--model", default="minilm", metavar="NAME|DIR|ORG/ID",
                   help=f"preset, local Hugging Face model directory, or Hub id already in the local cache "
                        f"(never downloaded). Presets: {presets}. Default: minilm")
    g.add_argument("--device", default="auto", help="auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weights' dtype; auto: float32 on CPU, bfloat16 (or float16) on GPU")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model directory's own Python code to run (off by default)")
    g.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's)")
    g = p.add_argument_group("inputs")
    g.add_argument("--inputs", default=None, metavar="FILE",
                   help="one text per line, or JSON Lines with a \"text\" field; - for stdin. "
                        "Default: built-in sample texts, looped")
    g.add_argument("--batch-size", type=positive_int, default=1, help="texts per step (default 1)")
    g.add_argument("--max-new-tokens", type=positive_int, default=32,
                   help="decoders: tokens generated per batch, each a decode step after the prefill (default 32)")
    g = p.add_argument_group("measurement")
    g.add_argument("--depth", default="blocks", choices=["blocks", "sublayers", "leaves"],
                   help="blocks: embeddings, each transformer block, final norm/head (default); "
                        "sublayers: also attention, MLP and norms inside blocks; leaves: every leaf module")
    g.add_argument("--steps", type=positive_int, default=None,
                   help="stop after this many steps (a batch is finished first). Headless default 64; "
                        "live: until you quit")
    g.add_argument("--warmup", type=non_negative_int, default=1,
                   help="batches run before measuring, unhooked (default 1)")
    g.add_argument("--sample-hz", type=rate_hz, default=10.0, help="clock samples per second, at most 20 (default 10)")
    g.add_argument("--util-hz", type=rate_hz, default=5.0, help="utilization samples per second, at most 10 (default 5)")
    g.add_argument("--no-calibrate", action="store_true",
                   help="skip the roofline calibration (a matmul and a copy, ~2 s, cached per device)")
    g = p.add_argument_group("recording")
    g.add_argument("--record", default=None, metavar="FILE", help="write the session to FILE (JSON Lines, moments/1)")
    g.add_argument("--no-text", action="store_true", help="keep prompts and generated text out of the recording")


def run_options_argv(args: argparse.Namespace) -> list[str]:
    """The command-line words that give back ``args``' run options when parsed by a parser that has
    ``add_run_options``: derived from that parser's own actions, so a new run option reaches the live
    child without anyone listing it twice. ``--flag=value`` keeps a value that starts with ``-``."""
    probe = argparse.ArgumentParser(add_help=False)
    add_run_options(probe)
    argv: list[str] = []
    for action in probe._actions:  # argparse has no public list of a parser's actions
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(action, argparse._StoreFalseAction):
            argv += [] if value else [flag]
        elif type(action) is argparse._StoreAction and action.nargs is None:
            if value is not None:
                argv.append(f"{flag}={value}")
        else:  # say so at once rather than drop the option on the way to the child
            raise TypeError(f"run option {flag}: {type(action).__name__} (nargs={action.nargs!r}) "
                            "is not carried to the live engine; teach run_options_argv about it")
    return argv


def prepare_session(args: argparse.Namespace, on_progress: Callable[[str], None] | None = None):
    """Everything a session needs, checked in the order that fails fastest: record path, inputs, model."""
    from llm_moments.engine.session.inputs import read_texts
    from llm_moments.engine.core.recording import check_record_path

    if args.record:
        check_record_path(args.record)
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
