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
arrays onto the session's layer list (a dropped block is ``null``), and writes one recording; the
live UI (engine/session/compare_stream.py) switches it on and off while the session runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.variants import (  # noqa: F401  (the command's entry points)
    ModelObject,
    Variant,
    add_compare_options,
    attn_of,
    build_object,
    check_compare_options,
    own_bytes,
    set_attn,
)

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
        self._stopped = False   # stop() ran: nothing more can be recorded

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

    def warm_up(self, on_status: Callable[[str], None] | None = None) -> None:
        """Each variant: ``--warmup`` batches unmonitored. A compiled variant compiles here: it runs the
        first two rounds' texts in its batches (their sizes, as the rounds give them), batches with and
        without padding, and 4 new tokens (prefill, first and later decode: the graphs a decoder needs),
        so no measured step compiles; ``on_status`` hears "compiling …" first. If torch.compile fails
        on this machine, the variant runs uncompiled from then on and says so in one line (here, as a
        status at start, and in its notes)."""
        from llm_moments.engine.session.variants import compile_error_line, uncompile

        for obj in self.objects:
            obj.base_attn = attn_of(obj.model)
        for v in self.variants:
            self._apply(v)
            obj = self.object_of[v.label]
            bs, tokens = v.args.batch_size, min(self.args.max_new_tokens, 4)
            batches = [[self.texts[(k * bs + j) % len(self.texts)] for j in range(bs)] for k in range(v.args.warmup)]
            if obj.compiled:
                if on_status is not None:
                    on_status(f"compiling {v.label} (torch.compile: the first calls take a while)…")
                # generate() passes attention_mask only to a batch with padding, and the graph is
                # guarded on its kwargs: a batch of one text repeated and one of a short and long text
                by_len = sorted(self.texts, key=len)
                sides = [self.round_texts(r) for r in range(max(v.args.warmup, 2))] + [[by_len[-1]] * bs]
                sides += [[by_len[0]] + [by_len[-1]] * (bs - 1)] if bs > 1 else []
                try:
                    for texts in sides:
                        run_side(self.loaded, obj.model, texts, bs, tokens, v.args.cache, None)
                    continue
                except Exception as exc:   # then the eager forward warms up as any variant's
                    line = uncompile(obj, compile_error_line(exc))
                    if on_status is not None:
                        on_status(line)
            for batch in batches:
                run_side(self.loaded, obj.model, batch, bs, tokens, v.args.cache, None)

    # -- monitors and the one stream of records ---------------------------------------------------
    def start(self) -> None:
        import torch

        from llm_moments.engine.core.recording import Recorder
        from llm_moments.engine.session.monitor import Monitor
        from llm_moments.engine.session.variants import step_hooks_only

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
            if obj.compiled:  # hooks inside the compiled forward would never fire: step hooks only
                step_hooks_only(obj)
            if obj.compile_failure:  # said in warm-up; a status in the recording too
                obj.monitor.note_status(obj.compile_failure)
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
                             "margin": getattr(self.args, "margin", 0.02),
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
        elif rtype == "overhead":   # one model object's monitor: the variants it measures
            rec["variants"] = list(obj.labels)
        self._write(rec)

    def _write(self, rec: dict) -> None:
        self._to_file(rec)
        self._tell(rec)

    def _to_file(self, rec: dict) -> None:
        from llm_moments.engine.core.recording import RecordingLost

        if self.recorder is not None and not self.recorder.closed:
            try:
                self.recorder.write(rec, flush=rec.get("type") != "sample")
            except RecordingLost as exc:  # the session goes on unrecorded; a live UI is told (exit 3)
                self.recording_lost = str(exc)
                self.recorder = None
                self._tell({"type": "status", "level": "error", "message": str(exc), "recording_lost": True})
                self._tell({"type": "recording", "t_ns": self._now_ns(), "path": None})

    def _tell(self, rec: dict) -> None:
        for fn in tuple(self.listeners):
            try:
                fn(rec)
            except Exception:
                self.listeners.remove(fn)

    def _now_ns(self) -> int:
        return time.perf_counter_ns() - getattr(self, "_t0", time.perf_counter_ns())

    def switch_recording(self, recorder: Any) -> None:
        """Close the open recording (its output agreement so far, a ``completed`` footer), then record
        the rest of the session to ``recorder`` (None: none): the session's header first, then every
        record as a recording from the start has them (the live UI's r key: compare_stream.py)."""
        with self._lock:
            if self._stopped and recorder is not None:   # the footer is out: a new file would stay open
                recorder.close()   # (nothing written: the empty file goes)
                raise MomentsError("the session has ended: nothing more to record")
            closed = self._close_recording()
            self.recorder = recorder
            if recorder is not None and self.header is not None:
                self._to_file(self.header)
            now = self.recorder   # None when writing the header lost the file (_to_file said so)
        if now is not recorder:
            return
        if closed or now is not None:
            self._tell({"type": "recording", "t_ns": self._now_ns(),
                        "path": str(now.path) if now is not None else None})

    def _close_recording(self, reason: str = "completed", error: str | None = None,
                         t_ns: int | None = None) -> bool:
        """(Under the lock.) The output agreement, then the footer; False when nothing was open."""
        rec = self.recorder
        if rec is None or rec.closed:
            return False
        t_ns = self._now_ns() if t_ns is None else t_ns
        self._to_file({"type": "compare_output", "t_ns": t_ns, "baseline": self.baseline,
                       "output": self.agreement.result()})
        if self.recorder is rec:   # (writing the output record may have lost the file)
            rec.close({"type": "footer", "t_ns": t_ns, "steps": rec.steps_written, "reason": reason,
                       **({"error": error} if error else {})})
        self.recorder = None
        return True

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every step that ended has reached the session (between sides: nothing is timed)."""
        for obj in self.objects:
            if obj.monitor is not None:
                obj.monitor.flush(timeout_s)

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
                    with self._lock:   # a recording closed from another thread reads it
                        self.agreement.add(v.label, texts, outputs)
            else:
                done += 1
                if on_round is not None:
                    on_round(done)
        return done

    def stop(self, reason: str = "completed", error: str | None = None,
             before_footer: Callable[[], None] | None = None) -> None:
        """Stop the monitors, write the output agreement and the footer. ``before_footer``: called once
        every step is in ``steps`` and ``output`` is known, before the footer goes out (the live child's
        last analysis)."""
        for obj in self.objects:
            if obj.monitor is not None:
                obj.monitor.stop(reason, error)
        t_ns = self._now_ns()
        footer = {"type": "footer", "t_ns": t_ns, "steps": len(self.steps), "reason": reason}
        if error:
            footer["error"] = error
        self.output = self.agreement.result()
        if before_footer is not None:
            before_footer()
        with self._lock:
            self._stopped = True
            if self.header is not None:  # what each variant costs in output (read back by report)
                self._tell({"type": "compare_output", "t_ns": t_ns, "baseline": self.baseline,
                            "output": self.output})
            self._close_recording(reason, error, t_ns)
            for fn in tuple(self.listeners):
                with contextlib.suppress(Exception):
                    fn(footer)
        self.footer = footer
