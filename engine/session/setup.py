"""What a run needs before its first step: checked options, inputs, the loaded model, the monitor.

Shared by the headless CLI and the live UI's engine child (``stream``), so both start a session
the same way from the same parsed options.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from llm_moments.engine.errors import MomentsError

# Upper bounds of the run options (a value beyond them is a typo, and some would only fail deep inside
# torch after the model loaded). The lower bounds are in the argument types below.
MAX_STEPS = 1_000_000_000
MAX_WARMUP = 10_000
MAX_BATCH = 4096
MAX_NEW_TOKENS = 1_000_000   # and below the model's position limit, checked before it loads
MAX_THREADS = 1024
MAX_RANKS = 64               # --tp × --pp: local ranks started by one `moments run`


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``lo`` to ``hi``."""
    def parse(text: str) -> int:
        value = _whole(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {value}" if lo == 1
                                             else f"must be {lo} or more, not {value}")
        if value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:,}, not {value:,}")
        return value
    parse.__name__ = "positive_int" if lo >= 1 else "non_negative_int"  # what it is, for tools that ask
    return parse


def rate_hz(text: str) -> float:
    """A finite number (the range is checked where the message can name the option: check_run_options)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return value


def _check_range(flag: str, value: float, lo: float, hi: float, unit: str) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise MomentsError(f"{flag} must be from {lo:g} to {hi:g} {unit}, not {value:g}")


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
    g.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None,
                   help="CPU threads for torch (default: torch's)")
    g = p.add_argument_group("inputs")
    g.add_argument("--inputs", default=None, metavar="FILE",
                   help="one text per line, or JSON Lines with a \"text\" field; - for stdin. "
                        "Default: built-in sample texts, looped")
    g.add_argument("--batch-size", type=bounded_int(1, MAX_BATCH), default=1,
                   help=f"texts per step, at most {MAX_BATCH} (default 1)")
    g.add_argument("--max-new-tokens", type=bounded_int(1, MAX_NEW_TOKENS), default=32,
                   help="decoders: tokens generated per batch, each a decode step after the prefill; the prompt "
                        "and these must fit the model's position limit (default 32)")
    g = p.add_argument_group("measurement")
    g.add_argument("--depth", default="blocks", choices=["blocks", "sublayers", "leaves"],
                   help="blocks: embeddings, each transformer block, final norm/head (default); "
                        "sublayers: also attention, MLP and norms inside blocks; leaves: every leaf module. "
                        "Typical cost per decode step (GPT-2 shape, one CPU thread): blocks ≈ 0.5 %%, sublayers "
                        "≈ 1–2 %%, leaves ≈ 2–5 %%; this machine's figure is printed before a headless run and "
                        "shown in the header")
    g.add_argument("--steps", type=bounded_int(1, MAX_STEPS), default=None,
                   help="stop after this many steps (a batch is finished first). Headless default 64; "
                        "live: until you quit")
    g.add_argument("--warmup", type=bounded_int(0, MAX_WARMUP), default=1,
                   help="batches run before measuring, unhooked (default 1)")
    g.add_argument("--sample-hz", type=rate_hz, default=10.0,
                   help="clock samples per second, from 0.1 to 20 (default 10)")
    g.add_argument("--util-hz", type=rate_hz, default=5.0,
                   help="utilization samples per second, from 0.1 to 10 (default 5)")
    g.add_argument("--ops", default=None, metavar="LAYER",
                   help="ops mode: time each operator LAYER (index or name) runs, for --ops-steps steps "
                        "(ops records); that layer runs several times slower while on. Off by default")
    g.add_argument("--ops-steps", type=bounded_int(1, 1000), default=8, metavar="N",
                   help="steps that --ops times (default 8)")
    g.add_argument("--no-calibrate", action="store_true",
                   help="skip the roofline calibration (a matmul and a copy, ~2 s, cached per device)")
    g = p.add_argument_group("sharding (local ranks)")
    g.add_argument("--tp", type=bounded_int(1, MAX_RANKS), default=1, metavar="N",
                   help="tensor parallel: start N local ranks (gloo on CPU, nccl on N GPUs), the model split "
                        "with transformers' DistributedConfig(tp_size=N); all ranks in one view. Needs a model "
                        "transformers can shard (tiny-llama, a Llama-like directory). Default 1")
    g.add_argument("--pp", type=bounded_int(1, MAX_RANKS), default=1, metavar="N",
                   help="pipeline parallel: N local ranks, each a stage (DistributedConfig(pp_size=N)); "
                        "with --tp, tp × pp ranks. Default 1")
    g = p.add_argument_group("recording")
    g.add_argument("--record", default=None, metavar="FILE",
                   help="write the session to FILE (JSON Lines, moments/1); a new file, mode 0600 unless "
                        "--no-text; an existing FILE is an error unless --force")
    g.add_argument("--no-text", action="store_true", help="keep prompts and generated text out of the recording")
    g.add_argument("--force", action="store_true",
                   help="replace an existing --record FILE (a regular file only; a symlink is never followed)")


def run_options_argv(args: argparse.Namespace) -> list[str]:
    """The command-line words that give back ``args``' run options when parsed by a parser that has
    ``add_run_options``: derived from that parser's own actions, so a new run option reaches the live
    child without anyone listing it twice."""
    return options_argv(args, add_run_options, "run")


def options_argv(args: argparse.Namespace, add_options: Any, what: str) -> list[str]:
    """The words that give back ``args``' options of the parser ``add_options`` builds, from its own
    actions. ``--flag=value`` keeps a value that starts with ``-`` or holds spaces in one word; an
    append option repeats its flag. An action of a kind not carried here is an error at once, rather
    than an option silently dropped on the way to the child."""
    probe = argparse.ArgumentParser(add_help=False)
    add_options(probe)
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
        elif type(action) is argparse._AppendAction and action.nargs is None:
            argv += [f"{flag}={v}" for v in value or ()]
        else:
            raise TypeError(f"{what} option {flag}: {type(action).__name__} (nargs={action.nargs!r}) "
                            "is not carried to the live engine; teach options_argv about it")
    return argv


def check_run_options(args: argparse.Namespace) -> list[str]:
    """Every check of a run's options that needs no model, in the order that fails fastest; returns
    the input texts. Each failure is a MomentsError (one line): record path, rates, inputs (read, with
    a size cap), model spec, device and dtype, and ``--max-new-tokens`` against the model's position
    limit, read from its config without loading weights."""
    from llm_moments.engine.core.recording import check_record_path
    from llm_moments.engine.session.inputs import read_texts

    ranks = getattr(args, "tp", 1) * getattr(args, "pp", 1)
    if args.record is not None and ranks <= 1:   # ranks record run.rank{R}.jsonl: checked by check_launch
        check_record_path(args.record, force=getattr(args, "force", False))
    from llm_moments.engine.core.sampler import MAX_CLOCK_HZ, MAX_UTIL_HZ, MIN_RATE_HZ  # the sampler's own limits

    _check_range("--sample-hz", args.sample_hz, MIN_RATE_HZ, MAX_CLOCK_HZ, "samples per second")
    _check_range("--util-hz", args.util_hz, MIN_RATE_HZ, MAX_UTIL_HZ, "samples per second")
    if args.model is not None and not str(args.model).strip():
        raise MomentsError("--model is empty: give a preset name, a model directory or an org/name Hub id")
    texts = read_texts(args.inputs)
    from llm_moments.engine.session.models import check_model_spec, position_limit

    if ranks > 1:   # before the model spec: the device rules differ (one GPU per rank)
        from llm_moments.engine.session.launch_checks import check_launch

        check_launch(args)
    else:
        check_model_spec(args.model, args.device, args.dtype)
    limit, generative = position_limit(args.model)
    if generative and limit is not None and args.max_new_tokens >= limit:
        raise MomentsError(f"--max-new-tokens {args.max_new_tokens} does not fit: {args.model} holds at most {limit} "
                           f"positions, prompt included; give at most {limit - 1}")
    return texts


def prepare_session(args: argparse.Namespace, on_progress: Callable[[str], None] | None = None):
    """Everything a session needs: the cheap checks first (check_run_options), then the model."""
    texts = check_run_options(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from llm_moments.engine.session.models import load_model

    if on_progress:
        on_progress(f"loading {args.model}")
    loaded = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    return texts, loaded


def make_monitor(args: argparse.Namespace, loaded: Any, listeners: Sequence[Callable] = (),
                 step_ms_hint: float | None = None):
    from llm_moments.engine.session.monitor import Monitor

    run_info = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens if loaded.generative else None,
                "inputs": args.inputs or "built-in samples", "warmup_batches": args.warmup,
                "threads": __import__("torch").get_num_threads()}
    return Monitor(loaded.model, depth=args.depth, record=args.record, sample_hz=args.sample_hz,
                   util_hz=args.util_hz, model_info=loaded.info, run_info=run_info,
                   roof=not getattr(args, "no_calibrate", False),
                   record_text=not args.no_text, listeners=list(listeners),
                   overwrite=bool(getattr(args, "force", False)), step_ms_hint=step_ms_hint)


def warm_up(args: argparse.Namespace, loaded: Any, texts: list[str]) -> float | None:
    """Run the unhooked warm-up batches; the median of their steps (ms), the monitor's cost estimate's
    denominator (None without warm-up)."""
    from llm_moments.engine.core.overhead import time_forwards
    from llm_moments.engine.session.inputs import batches
    from llm_moments.engine.session.runner import run_batch

    with time_forwards(loaded.model) as times:
        for _, batch in zip(range(args.warmup), batches(texts, args.batch_size, loop=True)):
            run_batch(loaded, batch, min(args.max_new_tokens, 4))
    return times.median_ms()
