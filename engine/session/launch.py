"""``moments run --tp N`` / ``--pp N``: start N local ranks and show them as one session.

**Process layout.** The parent (the headless CLI, or the live UI) starts one engine process per rank,
each the same ``python -P -m llm_moments.engine stream <run options>`` child the live UI runs for
one process (engine/session/stream.py), told its place by the environment: ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` and ``MOMENTS_LAUNCH`` (a private temporary folder holding the
``FileStore`` the ranks meet through, and a preset's weights saved once by rank 0). Each child joins
the world (gloo on CPU, nccl with one GPU per rank), loads the model with transformers'
``DistributedConfig(tp_size=…, pp_size=…)``, and runs the session under its own ``Monitor``, which
records ``run.rank{R}.jsonl``.

**How records reach the parent.** Every rank writes its records as JSON lines on its own stdout
pipe; the parent reads each pipe on a thread of its own, tags each record with ``rank`` and puts it
in one buffer, which the UI drains once per frame (one fetch per frame, whatever the rank count).
No record crosses between ranks: the only cross-rank traffic the monitor adds is one 1-integer
``all_reduce`` per *batch* (never per step) on which all ranks agree to stop together, so a
Ctrl+C never leaves one rank inside a collective its peers have left.

**Ending.** A quit (``q``, Ctrl+C, SIGTERM, SIGHUP on the parent) is sent to every rank on its stdin;
the ranks agree at the next batch boundary and each writes its footer (``interrupted`` when it was
not the user's plain quit). The children run in sessions of their own, so a terminal's signals reach
the parent only. A rank that dies (killed, crashed) is said in one ``error`` record (``died``) and
the other ranks are stopped: asked first, then SIGINT, then killed after ``STOP_GRACE_S``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from llm_moments.engine.errors import MomentsError

LAUNCH_ENV = "MOMENTS_LAUNCH"
RANK_TIMEOUT_S = 120.0     # a collective that waits longer than this fails (a peer hung or went away)
STOP_GRACE_S = 20.0        # after a quit: then SIGINT, then (after as long again) SIGKILL
DEATH_EXITS = (0, 3, 130)  # exit statuses of a controlled end (completed, recording lost, interrupted)


def world_size(args: argparse.Namespace) -> int:
    return int(getattr(args, "tp", 1) or 1) * int(getattr(args, "pp", 1) or 1)


def _flags(args: argparse.Namespace) -> str:
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
            raise MomentsError(f"{_flags(args)} on CUDA needs {n} GPUs, one per rank; {gpus} visible "
                               "(use --device cpu, or fewer ranks)")
        return "cuda"
    if spec.startswith("cuda:"):
        raise MomentsError(f"{_flags(args)}: rank R runs on cuda:R; pick the GPUs with CUDA_VISIBLE_DEVICES "
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
            raise MomentsError(f"{_flags(args)}: {spec} cannot be split by transformers (no {what} plan for its "
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
        raise MomentsError(f"{_flags(args)} starts its own ranks, but this process is already one of "
                           f"{os.environ['WORLD_SIZE']} (torchrun?): use Monitor in your own script there")
    if getattr(args, "inputs", None) == "-":
        raise MomentsError(f"{_flags(args)}: --inputs - (stdin) cannot feed {n} ranks; give a file")
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
        raise MomentsError(f"{_flags(args)}: `moments stream` is one rank of `moments run {_flags(args)}`; "
                           "start that instead")
    info = json.loads(spec)
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if world != n:
        raise MomentsError(f"{_flags(args)} means {n} ranks, but the launcher started {world}")
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
        raise MomentsError(f"cannot load {spec} split {_flags(args)}: {M._first_line(exc)}") from None
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


# -- the parent: N children, one buffer ---------------------------------------------------------------


def _death(code: int | None, tail: list[str]) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    lines = [l.strip() for l in tail if l.strip()]
    return lines[-1] if lines else f"exit status {code}"


class RankGroup:
    """N engine processes, one per rank; their records, tagged with ``rank``, in one buffer.

    ``drain()`` never blocks; ``send(cmd)`` goes to every running rank; ``stop()`` ends them all (the
    footer says ``interrupted`` when asked so), waiting at most ``STOP_GRACE_S`` before SIGINT and as
    long again before SIGKILL. ``argv`` replaces the engine command (tests start fake ranks).
    """

    def __init__(self, args: argparse.Namespace, python: str = sys.executable, argv: list[str] | None = None,
                 device: str = "cpu", grace_s: float = STOP_GRACE_S):
        from llm_moments.engine.session.stream import to_argv

        self.n = world_size(args)
        self.argv = argv if argv is not None else [python, "-P", "-m", "llm_moments.engine", *to_argv(args)]
        self.device = device
        self.grace_s = grace_s
        self.folder: Path | None = None
        self.procs: dict[int, subprocess.Popen] = {}
        self.exit_codes: dict[int, int] = {}
        self.tails: dict[int, collections.deque[str]] = {}
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.stopping = False
        self.died: int | None = None              # the first rank that died
        self.errors: dict[int, str] = {}          # rank → its error record's message
        self.recording_lost: str | None = None
        self.recording_paths: dict[int, str] = {}
        self.last_record_at = time.monotonic()
        self.on_record: Callable[[dict[str, Any]], None] | None = None

    # -- start -------------------------------------------------------------------------------------
    def env(self, rank: int) -> dict[str, str]:
        assert self.folder is not None
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(self.n),
                   LOCAL_WORLD_SIZE=str(self.n), GROUP_RANK="0", ROLE_RANK=str(rank),
                   **{LAUNCH_ENV: json.dumps({"dir": str(self.folder), "device": self.device})})
        if self.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""   # transformers shards on the machine's accelerator: none here
        for key in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
            env.pop(key, None)
        return env

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="moments-ranks-"))
        for r in range(self.n):
            self.procs[r] = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                encoding="utf-8", errors="replace", env=self.env(r), bufsize=1, start_new_session=True)
            self.tails[r] = collections.deque(maxlen=20)
        for r in range(self.n):
            for target, name in ((self._read, "out"), (self._read_err, "err")):
                t = threading.Thread(target=target, args=(r,), name=f"moments-rank{r}-{name}", daemon=True)
                t.start()
                self._threads.append(t)

    def _put(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        self.last_record_at = time.monotonic()
        if self.on_record is not None:
            self.on_record(record)

    def _read(self, r: int) -> None:
        proc = self.procs[r]
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(record, dict):
                    continue
                record["rank"] = r
                rtype = record.get("type")
                if rtype == "error":
                    self.errors.setdefault(r, str(record.get("message")))
                elif record.get("recording_lost"):
                    self.recording_lost = f"rank {r}: {record.get('message') or 'recording stopped'}"
                elif rtype == "recording":
                    self.recording_paths[r] = str(record.get("path"))
                self._put(record)
        except (OSError, ValueError):
            pass
        code = self.exit_codes[r] = proc.wait()
        if code in DEATH_EXITS or self.stopping:
            return
        # A rank ended on its own, not as asked: its peers would wait for it inside a collective.
        with self._lock:
            first = self.died is None
            if first:
                self.died = r
        others = [k for k in self.procs if k != r and self.procs[k].poll() is None]
        if r not in self.errors:   # a failure it reported itself is shown already
            msg = f"rank {r} died: {_death(code, list(self.tails[r]))}"
            if first and others:
                msg += f"; stopping rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
            if r in self.recording_paths:
                msg += f" (its recording {self.recording_paths[r]} keeps the steps before, without a footer)"
            self._put({"type": "error", "rank": r, "died": True, "message": msg})
        if first:
            threading.Thread(target=self.stop, kwargs={"interrupted": True}, daemon=True).start()

    def _read_err(self, r: int) -> None:
        proc = self.procs[r]
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                self.tails[r].append(line)
        except (OSError, ValueError):
            pass

    # -- use ---------------------------------------------------------------------------------------
    def drain(self) -> list[dict[str, Any]]:
        out = []
        buf = self._buffer
        while buf:
            out.append(buf.popleft())
        return out

    @property
    def running(self) -> list[int]:
        return [r for r, p in self.procs.items() if p.poll() is None]

    def done(self) -> bool:
        return bool(self.procs) and all(p.poll() is not None for p in self.procs.values()) \
            and not any(t.is_alive() for t in self._threads)

    def send(self, cmd: dict[str, Any]) -> int:
        """Write ``cmd`` to every running rank; returns how many took it."""
        sent = 0
        line = json.dumps(cmd) + "\n"
        with self._lock:
            for p in self.procs.values():
                if p.poll() is None and p.stdin is not None:
                    try:
                        p.stdin.write(line)
                        p.stdin.flush()
                        sent += 1
                    except (BrokenPipeError, OSError, ValueError):
                        pass
        return sent

    def ask_stop(self, interrupted: bool = False) -> None:
        """Ask every rank to stop (returns at once); ``stop`` waits."""
        self.stopping = True
        self.send({"cmd": "quit", "reason": "interrupted"} if interrupted else {"cmd": "quit"})
        with self._lock:
            for p in self.procs.values():
                with contextlib.suppress(OSError, ValueError):
                    if p.stdin is not None:
                        p.stdin.close()

    def stop(self, timeout_s: float | None = None, interrupted: bool = False) -> None:
        with self._stop_lock:
            if not self.procs:
                return
            grace = self.grace_s if timeout_s is None else timeout_s
            self.ask_stop(interrupted)
            for sig in (signal.SIGINT, signal.SIGKILL):
                deadline = time.monotonic() + grace
                for p in self.procs.values():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(max(0.0, deadline - time.monotonic()))
                left = [p for p in self.procs.values() if p.poll() is None]
                if not left:
                    break
                for p in left:
                    with contextlib.suppress(OSError):
                        p.send_signal(sig)
                grace = min(grace, 10.0)
            for p in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            for t in self._threads:
                t.join(5)
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)

    def exit_code(self) -> int:
        """One status for the group: 1 when a rank died or failed; else 130 when any was interrupted;
        else 3 when a rank's recording was lost; else 0."""
        codes = list(self.exit_codes.values())
        if self.died is not None or any(c not in DEATH_EXITS for c in codes) or self.errors:
            return 1
        if 130 in codes:
            return 130
        if 3 in codes:
            return 3
        return 0


# -- headless ----------------------------------------------------------------------------------------


def run_headless(args: argparse.Namespace, interrupts: Any) -> int:
    """``moments run --tp N --headless``: the ranks' progress, then the merged summary (the report of
    the lowest rank with the per-rank section), from their recordings (a temporary set without
    --record). Exit status as ``RankGroup.exit_code``; 2 on a user error before anything starts."""
    import copy

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llm_moments.engine.output.sanitize import visible
    from llm_moments.engine.session.setup import check_run_options

    err = Console(stderr=True)
    check_run_options(args)
    device = launch_device(args)
    args = copy.copy(args)
    args.steps = args.steps or 64
    temp = None
    if args.record is None:
        temp = tempfile.mkdtemp(prefix="moments-run-")
        args.record = str(Path(temp) / "run.jsonl")
    n = world_size(args)
    group = RankGroup(args, device=device)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
    task = progress.add_task(f"measuring steps ({n} ranks)", total=args.steps)
    headers: set[int] = set()
    said_random = False
    interrupts.running = True     # from here a signal asks the ranks to stop; their footers say so
    asked = False
    try:
        group.start()
        with progress:
            while not group.done():
                if interrupts.stop.is_set() and not asked:
                    asked = True
                    progress.console.print("moments: stopping the ranks…", style="yellow", markup=False)
                    group.ask_stop(interrupted=True)
                for rec in group.drain():
                    rtype, r = rec.get("type"), rec.get("rank")
                    if rtype == "step" and r == 0:
                        progress.advance(task)
                    elif rtype == "header":
                        headers.add(r)
                        if not said_random and (rec.get("model") or {}).get("random_weights"):
                            said_random = True
                            progress.console.print(f"{visible(args.model)}: random weights — timings are real, "
                                                   "outputs are noise", style="yellow", markup=False, highlight=False)
                    elif rtype == "loading" and r == 0:
                        progress.update(task, description=f"{visible(rec.get('message'))} ({n} ranks)")
                    elif rtype == "status" and (r == 0 or rec.get("level") == "error"):
                        progress.console.print(f"moments: rank {r}: {visible(rec.get('message'))}", style="yellow",
                                               markup=False, highlight=False, soft_wrap=True)
                    elif rtype == "error":
                        progress.console.print(f"moments: {'' if rec.get('died') else f'rank {r}: '}"
                                               f"{visible(rec.get('message'))}", style="red", markup=False,
                                               highlight=False, soft_wrap=True)
                    if rtype == "header" and len(headers) == n:
                        progress.update(task, description=f"measuring steps ({n} ranks)")
                time.sleep(0.05)
    finally:
        group.stop(interrupted=asked)
    code = group.exit_code()
    if asked and code == 0:
        code = 130
    _print_merged(args, err, temp is not None)
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)
    if code == 130:
        err.print("moments: interrupted; the summary covers the steps before it", markup=False, highlight=False)
    return code


def _print_merged(args: argparse.Namespace, err: Any, temporary: bool) -> None:
    """The merged summary of the rank files, as ``moments report run.jsonl`` prints it."""
    from llm_moments.engine.analysis.ranks import RankScan
    from llm_moments.engine.analysis.report import analyze
    from llm_moments.engine.core.rankfiles import find_ranks
    from llm_moments.engine.core.recording import RecordingError
    from llm_moments.engine.output import ranks as out_ranks
    from llm_moments.engine.output.sanitize import visible
    from llm_moments.engine.output.text import render_json, render_text

    try:
        rs = find_ranks(args.record)
    except (RecordingError, MomentsError) as exc:
        err.print(f"moments: no merged summary: {visible(exc)}", markup=False, highlight=False)
        return
    if rs is None:
        err.print("moments: no rank recorded a step: no summary", markup=False, highlight=False)
        return
    try:
        sc = RankScan(rs)
        data = analyze(sc)
        ra = sc.result()
    except (RecordingError, MomentsError, ValueError) as exc:
        err.print(f"moments: no merged summary: {visible(exc)}", markup=False, highlight=False)
        return
    if args.format == "json":
        text = out_ranks.report_json(render_json(data.summary, data.rec.header, outliers=data.outliers), ra)
    else:
        text = (render_text(data.summary, data.rec.header, outliers=(data.outliers, data.outliers_total))
                + "\n" + out_ranks.render_text_section(ra))
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.write(text)
        sys.stdout.flush()
    if not temporary:
        names = ", ".join(visible(p.name) for p in rs.files.values())
        with contextlib.suppress(OSError, ValueError):
            print(f"recorded {len(rs.files)} ranks to {names} (in {visible(rs.base.parent)})", file=sys.stderr)


__all__ = ["LAUNCH_ENV", "RankContext", "RankGroup", "agree_stop", "check_launch", "check_rank_records",
           "join_world", "launch_device", "leave_world", "load_sharded", "run_headless", "world_size"]
