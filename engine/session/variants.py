"""Variants of ``moments compare``: their specs (``"LABEL: RUN OPTIONS"``, checked before the model
loads) and the model object each one runs (shared weights where the variant leaves them alone).

See ``engine.session.compare`` for how they run.
"""


from __future__ import annotations

import argparse
import contextlib
import copy
import shlex
from dataclasses import dataclass, field
from typing import Any

from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.setup import add_run_options, check_run_options

# Run options a variant may set; every other run option is common to the session.
VARIANT_RUN_OPTIONS = ("dtype", "threads", "batch_size")
ATTN = ("eager", "sdpa")
CACHES = ("static", "dynamic")
QUANTIZE = ("int8-dynamic",)
MAX_VARIANTS = 16
MAX_ROUNDS = 100_000


def add_variant_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("variant options (inside --variant)")
    g.add_argument("--attn", choices=ATTN, default=None, help="attention implementation (attn_implementation)")
    g.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="int8-dynamic: torch.ao.quantization.quantize_dynamic of every nn.Linear (CPU)")
    g.add_argument("--drop-layers", default=None, metavar="SPEC",
                   help="skip these blocks: '10,11' or '8-11' (0-based block indices)")
    g.add_argument("--cache", choices=CACHES, default=None, help="generate()'s cache_implementation")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model's forward (no per-layer timing inside the compiled graph)")


def add_compare_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compare")
    g.add_argument("--variant", action="append", default=None, metavar="'LABEL: OPTIONS'", required=True,
                   help="a variant: a label, a colon, then its options (--dtype, --threads, --batch-size, --attn "
                        "eager|sdpa, --quantize int8-dynamic, --drop-layers SPEC, --cache static|dynamic, "
                        "--compile). Repeat; the first is the baseline. Example: --variant 'base:' "
                        "--variant 'int8: --quantize int8-dynamic'")
    g.add_argument("--rounds", type=int, default=24,
                   help="rounds; each runs every variant once on the same texts, order alternated (default 24)")
    g.add_argument("--margin", type=float, default=0.02,
                   help="practical-equivalence margin: a row is called faster / slower only when its whole "
                        "interval lies below 1 - MARGIN / above 1 + MARGIN (default 0.02; 0 to 0.5)")


class _VariantParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise MomentsError(message)


def _variant_parser() -> argparse.ArgumentParser:
    p = _VariantParser(prog="--variant", add_help=False, allow_abbrev=False)
    add_run_options(p)
    add_variant_options(p)
    for action in p._actions:  # only what the spec gives shows up in the namespace
        action.default = argparse.SUPPRESS
    return p


@dataclass
class Variant:
    label: str
    spec: str                          # the options as written
    given: dict[str, Any]              # the options the spec gave
    args: argparse.Namespace           # common options overlaid with the variant's
    drop: list[int] = field(default_factory=list)

    @property
    def model_key(self) -> tuple:
        """Variants with equal keys share one model object."""
        a = self.args
        return (a.dtype if "dtype" in self.given else None, a.quantize, tuple(self.drop), bool(a.compile))


def parse_drop(spec: str) -> list[int]:
    """'10,11' / '8-11' / '3,8-11' → sorted block indices; a bad spec is a MomentsError."""
    out: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            raise MomentsError(f"--drop-layers {spec!r}: an empty item (use e.g. 10,11 or 8-11)")
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise MomentsError(f"--drop-layers {spec!r}: {part!r} is not a block index or a range a-b") from None
        if a < 0 or b < a or b > 100_000:
            raise MomentsError(f"--drop-layers {spec!r}: {part!r} is not a range of block indices (0-based, low-high)")
        out.update(range(a, b + 1))
    return sorted(out)


def parse_variant(text: str, common: argparse.Namespace) -> Variant:
    label, sep, rest = str(text).partition(":")
    label = label.strip()
    if not sep:
        raise MomentsError(f"--variant {text!r}: write 'LABEL: OPTIONS' (a label, a colon, then its options)")
    if not label or not label.isprintable() or len(label) > 40:
        raise MomentsError(f"--variant {text!r}: the label must be 1 to 40 printable characters before the colon")
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        raise MomentsError(f"--variant {label}: {exc}") from None
    try:
        ns = _variant_parser().parse_args(words)
    except MomentsError as exc:
        raise MomentsError(f"--variant {label}: {exc}") from None
    given = vars(ns)
    common_only = [k for k in given if k not in VARIANT_RUN_OPTIONS and k not in _VARIANT_DESTS]
    if common_only:
        flag = "--" + common_only[0].replace("_", "-")
        raise MomentsError(f"--variant {label}: {flag} is common to every variant (the model, device, inputs, "
                           "steps and recording are the session's): give it before the variants")
    merged = argparse.Namespace(**{**vars(common), "attn": None, "quantize": None, "drop_layers": None,
                                   "cache": None, "compile": False, **given})
    drop = parse_drop(merged.drop_layers) if merged.drop_layers is not None else []
    return Variant(label, rest.strip(), given, merged, drop)


_VARIANT_DESTS = ("attn", "quantize", "drop_layers", "cache", "compile")


def _config_blocks(spec: str) -> int | None:
    """Blocks the model has, from its config without loading weights; None if it does not say."""
    from pathlib import Path

    from llm_moments.engine.session.models import _read_config, minilm_dir
    from llm_moments.engine.session.presets import PRESETS

    if spec in PRESETS:
        p = PRESETS[spec]
        if spec == "minilm":
            config = _read_config(minilm_dir() / "config.json") or {}
        else:
            return p.get("n_layer") or p.get("num_hidden_layers")
    else:
        path = Path(spec).expanduser()
        config = _read_config(path / "config.json") if path.is_dir() else None
    if not config:
        return None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        v = config.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def check_compare_options(args: argparse.Namespace) -> tuple[list[str], list[Variant]]:
    """Every check of a compare that needs no model: the run options, then each variant. Returns
    (texts, variants). Each failure is one line (MomentsError)."""
    if args.steps is not None:
        raise MomentsError("--steps: a compare runs --rounds rounds (each variant once per round, on the same texts)")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        raise MomentsError(f"--rounds must be from 1 to {MAX_ROUNDS:,}, not {args.rounds}")
    margin = getattr(args, "margin", 0.02)
    if not 0 <= margin <= 0.5:  # NaN fails too
        raise MomentsError(f"--margin must be from 0 to 0.5 (a fraction: 0.02 is 2 %), not {margin}")
    specs = args.variant or []
    if len(specs) < 2:
        raise MomentsError("give at least two --variant 'LABEL: OPTIONS' (the first is the baseline)")
    if len(specs) > MAX_VARIANTS:
        raise MomentsError(f"at most {MAX_VARIANTS} variants, not {len(specs)}")
    variants = [parse_variant(s, args) for s in specs]
    labels = [v.label for v in variants]
    dup = next((l for l in labels if labels.count(l) > 1), None)
    if dup is not None:
        raise MomentsError(f"--variant {dup}: two variants have this label; labels must differ")
    texts = check_run_options(args)
    from llm_moments.engine.session.models import position_limit, resolve_device, resolve_dtype

    _, generative = position_limit(args.model)
    device = resolve_device(args.device)
    blocks = _config_blocks(args.model)
    for v in variants:
        a = v.args
        dt = resolve_dtype(a.dtype, device)
        if a.quantize and device.type != "cpu":
            raise MomentsError(f"--variant {v.label}: --quantize int8-dynamic runs on CPU only (this session's "
                               f"device is {device})")
        if a.quantize and str(dt) != "torch.float32":
            raise MomentsError(f"--variant {v.label}: --quantize int8-dynamic needs float32 weights, not "
                               f"{str(dt).replace('torch.', '')}")
        if a.cache and generative is False:
            raise MomentsError(f"--variant {v.label}: --cache is generate()'s; {args.model} does not generate")
        if v.drop and blocks is not None:
            if v.drop[-1] >= blocks:
                raise MomentsError(f"--variant {v.label}: --drop-layers {a.drop_layers}: {args.model} has blocks "
                                   f"0 to {blocks - 1}")
            if len(v.drop) >= blocks:
                raise MomentsError(f"--variant {v.label}: --drop-layers {a.drop_layers} drops every block")
    return texts, variants


# -- model objects ------------------------------------------------------------------------------


def _tensors(model: Any) -> list[Any]:
    return list(model.parameters()) + list(model.buffers())


def structural_copy(model: Any) -> Any:
    """A new module tree (and config) whose parameters and buffers are the same tensors."""
    memo = {id(t): t for t in _tensors(model)}
    return copy.deepcopy(model, memo)


def own_bytes(model: Any, base: Any) -> int:
    """Bytes of the tensors ``model`` holds that ``base`` does not share (quantized packed weights too)."""
    import torch

    shared = {t.untyped_storage().data_ptr() for t in _tensors(base) if t.device.type != "meta"}
    seen: set[int] = set()
    total = 0
    for t in _tensors(model):
        ptr = t.untyped_storage().data_ptr()
        if ptr in shared or ptr in seen:
            continue
        seen.add(ptr)
        total += t.numel() * t.element_size()
    for m in model.modules():
        wb = getattr(m, "_weight_bias", None)
        if callable(wb):  # a dynamically quantized Linear: packed int8 weight + float bias
            try:
                w, b = wb()
            except Exception:
                continue
            for t in (w, b):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def _block_list(model: Any) -> tuple[Any, str, Any]:
    """(the parent module, attribute name, the ModuleList) of the model's blocks."""
    from llm_moments.engine.core.hooks import _block_list as find

    found = find(model)
    if found is None:
        raise MomentsError("--drop-layers: no list of blocks found in this model")
    path, blocks = found
    parent = model.get_submodule(".".join(path[:-1])) if len(path) > 1 else model
    return parent, path[-1], blocks


def drop_blocks(model: Any, drop: list[int]) -> int:
    """Remove blocks ``drop`` from the model's block list; fix what transformers reads (the config's
    layer count and layer_types, each kept block's ``layer_idx`` for the cache). Returns blocks kept."""
    from torch import nn

    parent, name, blocks = _block_list(model)
    n = len(blocks)
    if drop and drop[-1] >= n:
        raise MomentsError(f"--drop-layers: the model has blocks 0 to {n - 1}")
    kept = [b for i, b in enumerate(blocks) if i not in set(drop)]
    if not kept:
        raise MomentsError("--drop-layers drops every block")
    setattr(parent, name, nn.ModuleList(kept))
    configs = {id(c): c for c in (getattr(m, "config", None) for m in model.modules()) if c is not None}
    for config in configs.values():
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(config, key, None), int) and getattr(config, key) == n:
                with contextlib.suppress(Exception):
                    setattr(config, key, len(kept))
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == n:
            config.layer_types = [t for i, t in enumerate(types) if i not in set(drop)]
    for new_idx, block in enumerate(kept):
        for m in block.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = new_idx
    return len(kept)


def quantize_int8(model: Any) -> int:
    """Dynamic int8 quantization of every nn.Linear, in place; returns how many were quantized."""
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    n = sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    return n


@dataclass(eq=False)
class ModelObject:
    """One model object and the variants that run it."""

    model: Any
    labels: list[str]
    own_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    orig_name: dict[int, str] = field(default_factory=dict)   # id(module) → name in the loaded model
    compiled: bool = False
    dtype: Any = None
    monitor: Any = None
    layer_map: list[int] = field(default_factory=list)        # monitor layer j → session layer index
    ranges: list[list[Any]] = field(default_factory=list)     # [first index, end or None, label, round]
    base_attn: str | None = None
    eager_forward: Any = None            # the forward an instance attribute held before compile (None: the class's)
    compile_failure: str | None = None   # the one line said when torch.compile failed here
    late_compiles: int = 0               # compiles during measured steps (a shape the warm-up did not run)

    def compiled_again(self) -> None:
        """The compiled forward compiled a new graph. In warm-up that is the point; once the monitor
        runs, that step's time includes compiling: said once, as a status tagged with the variant."""
        mon = self.monitor
        if mon is None or not mon.started or mon.stopped:
            return
        self.late_compiles += 1
        if self.late_compiles == 1:
            mon.note_status(f"{', '.join(self.labels)}: torch.compile compiled again during a measured step (an "
                            "input shape the warm-up did not run): that step's time includes compiling")


COMPILE_NOTE = "torch.compile: step times only, no per-layer timing inside the compiled forward"


def compile_forward(obj: ModelObject) -> None:
    """Replace the object's forward by ``torch.compile`` of it. Dynamic shapes: one graph serves
    every sequence length and cache length (a prefill, a first and a later decode step are the graphs a
    decoder needs, all compiled in warm-up). The model's own __call__ still runs the monitor's step
    hooks around it, outside the graph: step times are real. Compiling is lazy: a failure shows at
    the first call (warm-up, ``uncompile``)."""
    import functools
    import types

    import torch
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    model = obj.model
    obj.eager_forward = model.__dict__.get("forward")
    eager = model.forward

    def call(*args: Any, **kwargs: Any) -> Any:
        return eager(*args, **kwargs)

    # Dynamo keeps its graphs on the code object of the frame it compiles. Copies of one model share
    # forward's code, and the graph of one (an int8 copy's stops at its first graph break, guarded
    # only on what it traced before) would serve another, which then runs in pieces. A code object
    # of its own per model object keeps each variant's graphs apart.
    call = types.FunctionType(call.__code__.replace(co_name=f"compiled_forward_{id(obj):x}"), call.__globals__,
                              call.__name__, None, call.__closure__)
    compiled = torch.compile(call, dynamic=True)
    stats = counters["stats"]
    # Frames that run on their own after a graph break (an int8 copy's blocks) share their code with
    # every copy of the model, and dynamo's graphs per code object stop at its recompile limit (8),
    # past which it runs them eager without a word: each compiled object brings its own room.
    key = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, key, getattr(dynamo_config, key) + 8)

    @functools.wraps(eager)  # generate() reads forward's signature
    def forward(*args: Any, **kwargs: Any) -> Any:
        before = stats["unique_graphs"]   # two dict reads a step: how a late compile is noticed
        out = compiled(*args, **kwargs)
        if stats["unique_graphs"] != before:
            obj.compiled_again()
        return out

    model.forward = forward
    obj.compiled = True
    obj.notes.append(COMPILE_NOTE)


def compile_error_line(exc: BaseException) -> str:
    """One line from a compile error (inductor's are pages long): its type and first line."""
    inner = getattr(exc, "inner_exception", None)
    text = next((l.strip() for l in str(exc).splitlines() if l.strip()), "")
    if not text and inner is not None:
        text = next((l.strip() for l in str(inner).splitlines() if l.strip()), "")
    text = text if len(text) <= 200 else text[:199] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def uncompile(obj: ModelObject, why: str) -> str:
    """torch.compile failed on this machine (no compiler, an unsupported op; ``why``: one line): the
    object runs its eager forward from now on, with per-layer timing. Returns the one line that says
    so (also kept as ``compile_failure`` and in the notes)."""
    model = obj.model
    model.__dict__.pop("forward", None)
    if obj.eager_forward is not None:
        model.forward = obj.eager_forward
    obj.compiled = False
    obj.notes = [n for n in obj.notes if n != COMPILE_NOTE]
    obj.notes.append(f"torch.compile failed here ({why}): runs uncompiled, per-layer timing kept")
    obj.compile_failure = f"{', '.join(obj.labels)}: torch.compile failed here, running uncompiled: {why}"
    return obj.compile_failure


def step_hooks_only(obj: ModelObject) -> None:
    """A compiled object's monitor keeps the model's own pre / post hooks (the step: they run in
    __call__, outside the compiled forward) and loses every hook inside it: those were not there when
    the graph was traced, so they would never fire (or break the graph) and the layers would read as
    zeros. Its layers are "no per-layer timing" in the analysis (no hook fired in its steps)."""
    mon = obj.monitor
    hooks = mon.hooks
    for handle in hooks._handles[1:-1]:
        handle.remove()
    hooks._handles = [hooks._handles[0], hooks._handles[-1]]
    mon._head_probe.detach()
    # Expected, and said in the variant's notes: not the monitor's "steps ran but no layer hook fired"
    mon.steps_without_hooks = 1


def build_object(loaded: Any, v: Variant) -> ModelObject:
    """The model object for variant ``v`` (a new one: the caller shares it among equal model keys)."""
    from llm_moments.engine.session.models import resolve_dtype

    base = loaded.model
    a = v.args
    dt = resolve_dtype(a.dtype, loaded.device) if "dtype" in v.given else loaded.dtype
    if dt == loaded.dtype and not a.quantize and not v.drop and not a.compile:
        return ModelObject(base, [], dtype=dt)
    notes: list[str] = []
    if dt != loaded.dtype:
        model = copy.deepcopy(base)           # weights of its own
        if dt != loaded.dtype:
            model = model.to(dtype=dt)
            notes.append(f"weights in {str(dt).replace('torch.', '')} (own copy)")
    else:  # its own module tree, the loaded weights (int8: only the quantized Linears' packed weights are new)
        model = structural_copy(base)
    model.eval()
    if a.quantize:
        n = quantize_int8(model)
        notes.append(f"{n} nn.Linear quantized to int8 (dynamic)" if n else
                     "no nn.Linear to quantize in this model: it runs as before")
    orig = {id(m): name for name, m in model.named_modules()}  # names as in the loaded model, before drops
    if v.drop:
        kept = drop_blocks(model, v.drop)
        notes.append(f"blocks {a.drop_layers} dropped ({kept} kept)")
    obj = ModelObject(model, [], own_bytes(model, base), notes, orig, False, dt)
    if a.compile:
        compile_forward(obj)
    return obj


def set_attn(model: Any, impl: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(impl)
    else:
        model.config._attn_implementation = impl


def attn_of(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None
