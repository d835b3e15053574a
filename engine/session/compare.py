"""``moments compare``: several variants of one model, run interleaved on the same inputs.

A variant is ``"LABEL: RUN OPTIONS"``; the first one is the baseline. Its options are parsed by a
parser built from the one run-option definition (``setup.add_run_options``) plus the variant options
below; a variant may set only what does not change the model itself or the session (the model,
device, inputs, depth, steps and recording are common). Every spec is checked before the model loads.

Rounds: in each round every variant runs the same texts (one side: the round's texts in batches of
the variant's ``--batch-size``), in the baseline-first order on even rounds and reversed on odd ones
(ABAB / BABA, so slow drift and order effects cancel; bench/pairs.py does it so). Switching a variant's
settings (threads, attention implementation) happens between sides, never inside a timed step.

Memory: variants share what they can. One tokenizer. A variant that only changes how the model runs
(threads, batch size, attention implementation, cache, compile) keeps the baseline's weights: threads /
batch / attn / cache variants run the loaded model object itself; ``--compile`` and ``--drop-layers``
get a module tree of their own whose parameters are the loaded ones (0 bytes of copies). ``--dtype``
and ``--quantize`` need weights of their own: their bytes are reported per variant. Variants whose
model options are equal share one model object.

Timing: one Monitor per distinct model object (hooks on one module fire once), each forwarding its
records to this session, which tags every step with its ``variant`` (and ``round``), maps the layer
arrays onto the session's layer list (a dropped block is ``null``), and writes one recording.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import shlex
import threading
import time
from collections.abc import Callable
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


def build_object(loaded: Any, v: Variant) -> ModelObject:
    """The model object for variant ``v`` (a new one: the caller shares it among equal model keys)."""
    import torch

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
    compiled = bool(a.compile)
    if compiled:
        model.forward = torch.compile(model.forward, dynamic=True)
        notes.append("torch.compile: no per-layer timing inside the compiled forward (step times only)")
    return ModelObject(model, [], own_bytes(model, base), notes, orig, compiled, dt)


def set_attn(model: Any, impl: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(impl)
    else:
        model.config._attn_implementation = impl


def attn_of(model: Any) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


# -- running ------------------------------------------------------------------------------------


def run_side(loaded: Any, model: Any, texts: list[str], batch_size: int, max_new_tokens: int,
             cache: str | None, stop: threading.Event | None) -> list[Any]:
    """Run ``texts`` in batches; per text its output: generated token ids (decoders) or a float32
    array of the last hidden state at its own tokens (and pooled output), for agreement."""
    import torch

    from llm_moments.engine.session.runner import _stopping

    tok = loaded.tokenizer
    max_length = min(getattr(tok, "model_max_length", 512) or 512, 512)
    if loaded.generative and getattr(loaded, "positions", None):
        max_length = max(1, min(max_length, loaded.positions - max_new_tokens))
    outs: list[Any] = []
    for i in range(0, len(texts), batch_size):
        batch = texts[i:i + batch_size]
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(loaded.device)
        with torch.inference_mode():
            if loaded.generative:
                kw = {"cache_implementation": cache} if cache else {}
                out = model.generate(input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask"),
                                     max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, **kw, **_stopping(stop))
                new = out[:, enc["input_ids"].shape[1]:].tolist()
                outs.extend(new)
            else:
                out = model(**enc)
                hidden = getattr(out, "last_hidden_state", None)
                pooled = getattr(out, "pooler_output", None)
                mask = enc["attention_mask"].bool()
                for j in range(len(batch)):
                    h = hidden[j][mask[j]].float().cpu().numpy() if hidden is not None else None
                    p = pooled[j].float().cpu().numpy() if pooled is not None else None
                    outs.append((h, p))
    return outs


class OutputAgreement:
    """Per variant: how its outputs differ from the baseline's on the same texts (first run of each)."""

    def __init__(self, generative: bool, baseline: str):
        self.generative, self.baseline = generative, baseline
        self.first: dict[str, dict[str, Any]] = {}

    def add(self, label: str, texts: list[str], outputs: list[Any]) -> None:
        seen = self.first.setdefault(label, {})
        for t, o in zip(texts, outputs):
            seen.setdefault(t, o)

    def result(self) -> dict[str, dict[str, Any]]:
        import numpy as np

        base = self.first.get(self.baseline, {})
        out: dict[str, dict[str, Any]] = {}
        for label, seen in self.first.items():
            common = [t for t in seen if t in base]
            if self.generative:
                same = total = 0
                for t in common:
                    a, b = base[t], seen[t]
                    total += max(len(a), len(b))
                    same += sum(1 for x, y in zip(a, b) if x == y)
                out[label] = {"measure": "token_agreement", "texts": len(common), "tokens": total,
                              "token_agreement": (same / total) if total else None}
            else:
                diff = pooled = None
                for t in common:
                    (ha, pa), (hb, pb) = base[t], seen[t]
                    if ha is not None and hb is not None and ha.shape == hb.shape:
                        d = float(np.max(np.abs(ha - hb))) if ha.size else 0.0
                        diff = d if diff is None else max(diff, d)
                    if pa is not None and pb is not None and pa.shape == pb.shape:
                        d = float(np.max(np.abs(pa - pb))) if pa.size else 0.0
                        pooled = d if pooled is None else max(pooled, d)
                out[label] = {"measure": "max_abs_diff", "texts": len(common),
                              "max_abs_diff_last_hidden": diff, "max_abs_diff_pooled": pooled}
        return out


PER_LAYER_KEYS_ZERO = ("layer_calls",)


class CompareSession:
    """Runs the variants interleaved; every record goes through ``listeners`` (and the recording)
    tagged with its variant. ``steps``: the session's step records, for the analysis."""

    def __init__(self, args: argparse.Namespace, variants: list[Variant], loaded: Any, texts: list[str],
                 listeners: list[Callable[[dict], None]] = ()):
        self.args, self.variants, self.loaded, self.texts = args, variants, loaded, texts
        self.listeners = list(listeners)
        self.baseline = variants[0].label
        self.objects: list[ModelObject] = []
        self.object_of: dict[str, ModelObject] = {}
        by_key: dict[tuple, ModelObject] = {}
        for v in variants:
            obj = by_key.get(v.model_key)
            if obj is None:
                obj = build_object(loaded, v)
                if obj.model is loaded.model:  # the loaded object itself: one monitor for all that run it
                    obj = next((o for o in self.objects if o.model is loaded.model), obj)
                by_key[v.model_key] = obj
                if obj not in self.objects:
                    self.objects.append(obj)
            obj.labels.append(v.label)
            self.object_of[v.label] = obj
        self.agreement = OutputAgreement(loaded.generative, self.baseline)
        self.steps: list[dict[str, Any]] = []
        self.header: dict[str, Any] | None = None
        self.recorder = None
        self._lock = threading.Lock()
        self._pending: list[tuple[int, dict]] = []
        self._index = 0
        self.default_threads: int | None = None
        self.statuses: list[str] = []
        self.recording_lost: str | None = None

    # -- variants' settings between sides ---------------------------------------------------------
    def _apply(self, v: Variant) -> None:
        import torch

        threads = v.args.threads or self.default_threads
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        obj = self.object_of[v.label]
        want = v.args.attn or obj.base_attn
        if want and attn_of(obj.model) != want:
            set_attn(obj.model, want)

    def warm_up(self) -> None:
        """Each variant: ``--warmup`` batches unmonitored (a compiled variant compiles here)."""
        for obj in self.objects:
            obj.base_attn = attn_of(obj.model)
        for v in self.variants:
            self._apply(v)
            obj = self.object_of[v.label]
            n = max(v.args.warmup, 2 if obj.compiled else 0)
            for k in range(n):
                batch = [self.texts[(k * v.args.batch_size + j) % len(self.texts)] for j in range(v.args.batch_size)]
                run_side(self.loaded, obj.model, batch, v.args.batch_size, min(self.args.max_new_tokens, 4),
                         v.args.cache, None)

    # -- monitors and the one stream of records ---------------------------------------------------
    def start(self) -> None:
        import torch

        from llm_moments.engine.core.recording import Recorder
        from llm_moments.engine.session.monitor import Monitor

        self.default_threads = self.args.threads or torch.get_num_threads()
        args = self.args
        for k, obj in enumerate(self.objects):
            info = dict(self.loaded.info)
            info["dtype"] = str(obj.dtype or self.loaded.dtype).replace("torch.", "")
            run_info = {"batch_size": args.batch_size, "inputs": args.inputs or "built-in samples",
                        "max_new_tokens": args.max_new_tokens if self.loaded.generative else None,
                        "warmup_batches": args.warmup, "threads": self.default_threads}
            obj.monitor = Monitor(obj.model, depth=args.depth, sample_hz=args.sample_hz, util_hz=args.util_hz,
                                  model_info=info, run_info=run_info,
                                  roof=(not args.no_calibrate) if k == 0 else None,
                                  record_text=not args.no_text, listeners=[self._forwarder(k)])
        if args.record is not None:
            self.recorder = Recorder(args.record, overwrite=bool(args.force), private=not args.no_text)
        for obj in self.objects:
            obj.monitor.start()
            if obj.compiled:  # the hooks inside the compiled forward would break its graph: step hooks only
                hooks = obj.monitor.hooks
                for handle in hooks._handles[1:-1]:
                    handle.remove()
                hooks._handles = [hooks._handles[0], hooks._handles[-1]]
                obj.monitor._head_probe.detach()
        self._build_header()

    def _build_header(self) -> None:
        names: list[str] = []
        parents: list[str | None] = []
        work_rows: dict[str, Any] = {}
        headers = [obj.monitor.header for obj in self.objects]
        for obj, h in zip(self.objects, headers):
            mlayers = h["layers"]
            wrows = ((h.get("work") or {}).get("layers")) or [None] * len(mlayers)
            own = [self._orig(obj, l) for l in obj.monitor.layers]
            for j, (entry, name) in enumerate(zip(mlayers, own)):
                if name not in names:
                    names.append(name)
                    p = entry.get("parent")
                    parents.append(None if p is None else own[p])
                work_rows.setdefault(name, wrows[j] if j < len(wrows) else None)
            obj.layer_map = [names.index(n) for n in own]
        layers = [{"name": n, "parent": None if p is None else names.index(p)} for n, p in zip(names, parents)]
        base = self.objects[0].monitor.header
        for entry in layers:
            src = next((l for l in base["layers"]
                        if self._orig_name_in(self.objects[0], l["name"]) == entry["name"]), None)
            if src is not None:
                entry.update({k: v for k, v in src.items() if k not in ("name", "parent")})
        header = copy.deepcopy(base)
        header["layers"] = layers
        work = header.get("work")
        if isinstance(work, dict) and all(work_rows.get(n) is not None for n in names):
            work["layers"] = [work_rows[n] for n in names]
        elif work is not None:
            header["work"] = None
        header["model"] = dict(self.loaded.info)
        header["run"] = {**(header.get("run") or {}), "rounds": self.args.rounds}
        header["compare"] = {"baseline": self.baseline, "rounds": self.args.rounds,
                             "order": "ABAB/BABA: baseline-first order on even rounds, reversed on odd rounds"}
        header["variants"] = [self.variant_info(v) for v in self.variants]
        self.header = header
        self._t0 = self.objects[0].monitor.t0_ns
        with self._lock:
            self._write(header)
            pending, self._pending = self._pending, []
            for k, rec in pending:
                self._take(k, rec)

    def _orig(self, obj: ModelObject, layer: Any) -> str:
        return obj.orig_name.get(id(layer.module), layer.name) if obj.orig_name else layer.name

    def _orig_name_in(self, obj: ModelObject, name: str) -> str:
        layer = next((l for l in obj.monitor.layers if l.name == name), None)
        return self._orig(obj, layer) if layer is not None else name

    def variant_info(self, v: Variant) -> dict[str, Any]:
        obj = self.object_of[v.label]
        shares = obj.labels[0] if obj.labels[0] != v.label else None
        loaded = obj.model is self.loaded.model
        if loaded:
            memory = "shares the loaded model object"
        elif obj.own_bytes:
            memory = "own weights"
        else:
            memory = "own module tree, the loaded weights"
        if shares is not None:
            memory += f" (one object with {shares})"
        return {"label": v.label, "options": v.spec, "settings": {k: v.args.__dict__.get(k) for k in
                ("dtype", "threads", "batch_size", "attn", "quantize", "drop_layers", "cache", "compile")
                if k in v.given},
                "model_object": self.objects.index(obj), "shares_model_with": shares,
                "own_param_bytes": 0 if shares is not None else obj.own_bytes, "memory": memory,
                "per_layer_timing": not obj.compiled, "notes": list(obj.notes)}

    def _forwarder(self, k: int) -> Callable[[dict], None]:
        def forward(rec: dict) -> None:
            rtype = rec.get("type")
            if rtype in ("header", "footer", "recording") or (rtype == "sample" and k != 0):
                return
            with self._lock:
                if self.header is None:
                    self._pending.append((k, rec))
                else:
                    self._take(k, rec)
        return forward

    def _label(self, obj: ModelObject, index: int) -> tuple[str | None, int | None]:
        for first, end, label, rnd in reversed(obj.ranges):
            if index >= first and (end is None or index < end):
                return label, rnd
        return None, None

    def _take(self, k: int, rec: dict) -> None:
        obj = self.objects[k]
        rec = dict(rec)
        if isinstance(rec.get("t_ns"), int):
            rec["t_ns"] += obj.monitor.t0_ns - self._t0
        rtype = rec.get("type")
        if rtype == "step":
            label, rnd = self._label(obj, rec["index"])
            if label is None:
                return  # a step outside every side (cannot happen: monitors run only inside sides)
            n = len(self.header["layers"])
            m = len(obj.layer_map)
            for key, value in list(rec.items()):
                if key.startswith("layer_") and isinstance(value, list) and len(value) == m:
                    fill = 0 if key in PER_LAYER_KEYS_ZERO else None
                    out = [fill] * n
                    for j, i in enumerate(obj.layer_map):
                        out[i] = value[j]
                    rec[key] = out
            rec["index"] = self._index
            self._index += 1
            rec["variant"], rec["round"] = label, rnd
            self.steps.append(rec)
        elif rtype == "text":
            label, rnd = self._label(obj, rec.get("after_step", -1))
            rec["variant"], rec["round"] = label, rnd
        elif rtype == "status":
            labels = obj.labels
            rec["variant"] = labels[0] if len(labels) == 1 else None
            rec["variants"] = list(labels)
            self.statuses.append(str(rec.get("message")))
        self._write(rec)

    def _write(self, rec: dict) -> None:
        from llm_moments.engine.core.recording import RecordingLost

        if self.recorder is not None and not self.recorder.closed:
            try:
                self.recorder.write(rec, flush=rec.get("type") != "sample")
            except RecordingLost as exc:
                self.recording_lost = str(exc)
                self.recorder = None
        for fn in tuple(self.listeners):
            try:
                fn(rec)
            except Exception:
                self.listeners.remove(fn)

    # -- the rounds -------------------------------------------------------------------------------
    def round_texts(self, r: int) -> list[str]:
        n = max(v.args.batch_size for v in self.variants)
        return [self.texts[(r * n + j) % len(self.texts)] for j in range(n)]

    def run(self, stop: threading.Event | None = None, on_round: Callable[[int], None] | None = None) -> int:
        """Run the rounds; returns rounds completed."""
        done = 0
        for r in range(self.args.rounds):
            if stop is not None and stop.is_set():
                break
            texts = self.round_texts(r)
            order = self.variants if r % 2 == 0 else self.variants[::-1]
            for v in order:
                if stop is not None and stop.is_set():
                    break
                self._apply(v)
                obj = self.object_of[v.label]
                mon = obj.monitor
                with self._lock:
                    obj.ranges.append([mon.steps_started, None, v.label, r])
                try:
                    outputs = run_side(self.loaded, obj.model, texts, v.args.batch_size,
                                       self.args.max_new_tokens, v.args.cache, stop)
                finally:
                    with self._lock:
                        obj.ranges[-1][1] = mon.steps_started
                mon.note_text(texts, None if not self.loaded.generative else
                              [self.loaded.tokenizer.decode(o, skip_special_tokens=True) for o in outputs])
                if not (stop is not None and stop.is_set()):
                    self.agreement.add(v.label, texts, outputs)
            else:
                done += 1
                if on_round is not None:
                    on_round(done)
        return done

    def stop(self, reason: str = "completed", error: str | None = None) -> None:
        for obj in self.objects:
            if obj.monitor is not None:
                obj.monitor.stop(reason, error)
        t_ns = time.perf_counter_ns() - getattr(self, "_t0", time.perf_counter_ns())
        footer = {"type": "footer", "t_ns": t_ns, "steps": len(self.steps), "reason": reason}
        if error:
            footer["error"] = error
        self.output = self.agreement.result()
        with self._lock:
            if self.header is not None:  # what each variant costs in output (read back by report)
                self._write({"type": "compare_output", "t_ns": t_ns, "baseline": self.baseline,
                             "output": self.output})
            if self.recorder is not None and not self.recorder.closed:
                from llm_moments.engine.core.recording import RecordingLost

                try:
                    self.recorder.close(footer)
                except RecordingLost as exc:
                    self.recording_lost = str(exc)
            for fn in tuple(self.listeners):
                with contextlib.suppress(Exception):
                    fn(footer)
        self.footer = footer
