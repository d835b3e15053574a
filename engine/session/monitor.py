"""The Monitor: hooks + timer + clock sampler + recorder + statistics for one session.

Data flows one way. Hooks (inference thread) only record raw times and queue the pending step; a
worker thread resolves it (on GPU: waits for that step's last event), attaches the clock, computes
cycles, writes the recording, updates statistics and tells listeners. The inference thread never
waits for the worker, the disk or a UI.

    with Monitor(model, record="run.jsonl") as mon:
        model.generate(**inputs, max_new_tokens=32)
    print(mon.summary())
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from llm_moments.engine.analysis.stats import RollingStats
from llm_moments.engine.core import dist as _dist
from llm_moments.engine.core import waits as _waits
from llm_moments.engine.core.hooks import Layer, StepHooks, find_layers
from llm_moments.engine.core.overhead import OverheadMeter, header_estimate
from llm_moments.engine.core.recording import Recorder, RecordingLost, rank_record_path
from llm_moments.engine.core.roof import machine_roof
from llm_moments.engine.core.sampler import (
    MAX_CLOCK_HZ,
    MAX_UTIL_HZ,
    Sampler,
    check_rate_hz,
    make_clock_source,
    make_clock_sources,
)
from llm_moments.engine.core.steps import HeadProbe, StepRule, add_work_inputs, owned_cache_layers
from llm_moments.engine.core.timing import make_timer
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.header import SessionSummary, build_header, default_model_info, model_device
from llm_moments.engine.session.recording_control import RecordingControl

Listener = Callable[[dict[str, Any]], None]
_STOP = object()

NO_LAYER_TIMING = ("no per-layer timing: steps ran but no layer hook fired "
                   "(CUDA graphs or a compiled model replay skip Python hooks)")


class Monitor(RecordingControl):
    """Times every layer of ``model`` at ``depth`` in each forward step; records and summarizes.

    ``record``: path of a JSON Lines recording (opened at once, so a bad path fails before any work).
    ``clock_source``: where the clock for cycles comes from (default: NVML on CUDA, CPU clock on CPU).
    ``listeners``: called on the worker thread with every record (header, step, sample, status,
    text, footer); keep them quick.
    ``overwrite``: an existing file at ``record`` (or at ``start_recording``'s path) raises
    MomentsError unless True; then a regular file is replaced (a symlink never is, nor followed).
    A recording with ``record_text`` (the default) is created 0600, owner only.
    """

    def __init__(self, model: nn.Module, *, depth: str = "blocks", record: str | os.PathLike | None = None,
                 clock_source: Any = None, sample_hz: float = 10.0, util_hz: float = 5.0,
                 model_info: dict[str, Any] | None = None, run_info: dict[str, Any] | None = None,
                 record_text: bool = True, window_steps: int = 8192, roof: dict[str, Any] | bool | None = None,
                 listeners: list[Listener] | tuple[Listener, ...] = (), overwrite: bool = False,
                 step_ms_hint: float | None = None):
        # Every argument is checked before anything is built, attached or opened.
        check_rate_hz("sample_hz", "--sample-hz", sample_hz, MAX_CLOCK_HZ)
        check_rate_hz("util_hz", "--util-hz", util_hz, MAX_UTIL_HZ)
        if isinstance(window_steps, bool) or not isinstance(window_steps, int) or window_steps < 1:
            raise MomentsError(f"window_steps must be a whole number of at least 1, not {window_steps!r}")
        self.overwrite = bool(overwrite)
        self.model = model
        self.depth = depth
        self.device = model_device(model)
        self.layers = find_layers(model, depth)
        # Sharded sessions (engine/core/dist.py): one recording per rank, the layout in the header.
        self.world = _dist.world()
        self.rank = self.world[0] if self.world else 0
        self.multi_rank = bool(self.world and self.world[1] > 1)
        if getattr(model, "_pp_stage", None) is not None:
            # The pipeline's send / receive / broadcast waits: a top-level row of their own, timed
            # around the stage's communication (they run at model level, outside every layer).
            self.layers.append(Layer(_waits.PIPELINE_ENTRY, _waits.PipelineWait(), None, synthetic=True,
                                     comm="p2p+broadcast"))
        split = _dist.describe_split(model, self.layers, self.device, self.world, self.multi_rank)
        self.placement, self.layer_devices, self.handoff_from = split.placement, split.devices, split.handoff_from
        self.engine, self.sharded = split.engine, split.sharded
        if record is not None and self.multi_rank:
            record = rank_record_path(record, self.rank)  # never two writers on one file
        self.model_info = model_info or default_model_info(model)
        self.generative = bool(self.model_info.get("generative"))
        self.run_info = run_info or {}
        self.record_text = record_text
        self.sample_hz, self.util_hz = float(sample_hz), float(util_hz)
        self._clock_source = clock_source
        # roof: a dict (measured by the caller), True (calibrate now, cached per device), or
        # None/False (the cached measurement or datasheet figures if there are any; never a wait).
        self._roof_request = roof
        self.recorder = (Recorder(record, overwrite=self.overwrite, private=record_text)
                         if record is not None else None)
        self.stats = RollingStats([l.name for l in self.layers], [l.parent for l in self.layers], window_steps)
        self._stats_lock = threading.Lock()
        self._listeners: list[Listener] = list(listeners)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.statuses: list[str] = []
        self.header: dict[str, Any] | None = None
        self.steps_started = 0      # counted on the inference thread
        self.steps_recorded = 0     # counted on the worker thread
        self.steps_without_hooks = 0
        self.started = self.stopped = False
        self.footer: dict[str, Any] | None = None
        self.recording_lost: str | None = None  # set when a write error stopped the recording
        self._nested_seen: set[int] = set()  # layers already reported as running inside others
        self._inst: _waits.Instruments | None = None  # wait timers of a sharded session (start)
        # The monitor's own cost (engine/core/overhead.py): estimated at start (header ``overhead``),
        # measured while it runs (``overhead`` records). ``step_ms_hint``: a typical step (ms) timed
        # before the session (the unhooked warm-up), so the estimate is a share of a step at once.
        self.step_ms_hint = step_ms_hint if isinstance(step_ms_hint, (int, float)) and step_ms_hint > 0 else None
        self.overhead: dict[str, Any] | None = None
        self._meter: OverheadMeter | None = None
        # Ops mode (engine/core/ops.py): a probe asked for (any thread), attached at the next step begin
        self._ops_request: Any = None
        self._ops: Any = None

    # -- life cycle -------------------------------------------------------------------------------
    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def start(self) -> Monitor:
        if self.started:
            return self
        self.started = True
        # t_ns 0 of every record is the perf_counter_ns read together with time_ns here (header
        # clock_origin): ranks on one host align exactly, across hosts as well as NTP keeps them.
        self.clock_origin = _dist.clock_origin()
        self.t0_ns = self.clock_origin["perf_counter_ns"]
        self.session_id = self._session_id()
        self.timer = make_timer(len(self.layers), self.device, self.layer_devices, self.handoff_from)
        # Devices the timer records on; several: one clock per device, each layer's cycles from its own.
        self.devices_in_use = list(getattr(self.timer, "devices", None) or [str(self.device)])
        multi = len(self.devices_in_use) > 1
        source = self._clock_source or (make_clock_sources(self.devices_in_use) if multi
                                        else make_clock_source(str(self.device)))
        per_device = multi and set(self.devices_in_use) <= set(getattr(source, "devices", None) or ())
        self._entry_clock_device = list(getattr(self.timer, "entry_devices", None) or []) if per_device else None
        self.clock_source = source
        # before the sampler starts: a quieter ~50 ms
        self.overhead = header_estimate(self.device, self.layers, self.depth, self.generative, self.step_ms_hint)
        self._meter = OverheadMeter(self.overhead.get("hook_pair_us"))
        self.sampler = Sampler(source, clock_hz=self.sample_hz, util_hz=self.util_hz,
                               on_sample=self._queue.put, on_status=self._status, t0_ns=self.t0_ns)
        self.header = build_header(self, source)
        self._queue.put(self.header)
        self._worker = threading.Thread(target=self._work, name="moments-worker", daemon=True)
        self._worker.start()
        src_status = getattr(source, "status", None)
        if src_status:
            self._status(src_status)
        self.sampler.start()
        self._open_step: tuple | None = None
        # Step kind, past and attended keys from the cache's python state; head positions from shapes
        # (engine/core/steps.py). No tensor is read on the hot path.
        self._step_rule = StepRule(self.generative, owned=owned_cache_layers(self.model, self.layers))
        self._head_probe = HeadProbe(self.model, self.layers)
        self.hooks = StepHooks(self.model, self.layers, self.timer, self._on_step_begin, self._on_step_end)
        self.hooks.attach()
        self._head_probe.attach()
        # Waits inside collectives, pipeline communication and weight loads (engine/core/dist.py)
        self._inst: _waits.Instruments | None = None
        try:
            inst = _waits.Instruments(self.model, self.layers, self.hooks._stack, self.timer, self.device)
            if inst.comm is not None or inst.load is not None or inst.pipeline_entry is not None:
                self._inst = inst
        except Exception as exc:  # a bonus: never a reason to fail a session
            self._status(f"no collective / weight-load timing: {type(exc).__name__}: {exc}")
        return self

    def _session_id(self) -> str:
        """One id for every rank of the world, exchanged once here (never on the hot path)."""
        try:
            return _dist.shared_session_id()
        except Exception as exc:
            self._status(f"session id not shared across ranks ({type(exc).__name__}: {exc}); "
                         "merge this rank's recording by path")
            import secrets

            return secrets.token_hex(8)

    def stop(self, reason: str = "completed", error: str | None = None) -> dict[str, Any]:
        """Remove the hooks, drain the worker, write the footer. Safe to call twice."""
        if not self.started:
            if self.recorder is not None:
                self.recorder.close()  # nothing was written: the empty file goes
            return {}
        if self.stopped:
            return self.footer or {}
        self.stopped = True
        self.hooks.detach()
        if self._ops is not None:
            self._ops.detach()
            self._ops = None
        if self._inst is not None:
            self._inst.close()
        self._head_probe.detach()
        self._step_rule.close()
        self.sampler.stop()
        footer = {"type": "footer", "t_ns": time.perf_counter_ns() - self.t0_ns, "steps": None,
                  "reason": reason}
        if error:
            footer["error"] = error
        self._queue.put(footer)
        self._queue.put(_STOP)
        self._worker.join()
        self.footer = footer
        if self._clock_source is None:  # we opened it (NVML handle): we close it
            close = getattr(self.clock_source, "close", None)
            if callable(close):
                close()
        return footer

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop("completed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.stop("interrupted")
        else:
            self.stop("error", error=f"{exc_type.__name__}: {exc}")

    # -- hot path (inference thread) ----------------------------------------------------------------
    def _on_step_begin(self, args: tuple, kwargs: dict) -> None:
        kind, batch, seq, past_len, kv = self._step_rule.begin(args, kwargs)
        heads = self._head_probe.open()
        self._open_step = (self.steps_started, kind, batch, seq, past_len, time.perf_counter_ns(), kv, heads)
        self.steps_started += 1
        self.timer.begin_step()
        if self._inst is not None:
            self._inst.begin_step()
        if self._ops_request is not None:  # ops mode: hooks added here, on the inference thread
            self._ops, self._ops_request = self._ops_request.attach(), None

    def _on_step_end(self, aborted: bool = False) -> None:
        pending = self.timer.end_step()
        waits = self._inst.end_step() if self._inst is not None else None
        self._head_probe.close()
        ops = self._ops
        if ops is not None:
            ops_pending = ops.end_step(self._open_step[0])
            if ops.done:
                ops.detach()
                self._ops = None
                self._status(f"ops mode off for layer {ops.layer}", level="info")
            if aborted:
                ops.discard(ops_pending)
            elif ops_pending is not None:
                self._queue.put(("ops", ops, ops_pending))
        if aborted:
            self.timer.discard(pending)
            if waits is not None:
                self._inst.discard(waits)
            self.steps_started -= 1
            return
        t1 = time.perf_counter_ns()
        self._queue.put(("step", pending, self._open_step, t1, waits))

    # -- worker thread -----------------------------------------------------------------------------
    # The worker wakes at most this often. Each wake takes the GIL from the inference thread, so
    # fewer wakes cost less (bench/overhead.py, blocks: 2.2 % at 20 ms, 0.75 % at 100 ms); steps
    # reach the recording and listeners up to a tenth of a second late, inference never waits.
    WORKER_INTERVAL_S = 0.1

    def _work(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        running = True
        while running:
            batch = [self._queue.get()]
            cpu0 = time.thread_time_ns()  # the worker's own CPU: counted as the monitor's cost
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item is _STOP:
                    running = False
                    break
                self._handle(item)
            if self.recorder is not None and not self.recorder.closed:
                try:
                    self.recorder.flush()  # once per batch: samples too are on disk
                except RecordingLost as exc:
                    self._recording_lost(exc)
            meter = self._meter
            if meter is not None:
                meter.worker_cpu(time.thread_time_ns() - cpu0)
                now = time.perf_counter_ns()
                if running and meter.due(now):
                    self._handle(meter.record(now - self.t0_ns, now))
            if running:
                time.sleep(self.WORKER_INTERVAL_S)
        if self.recorder is not None:
            self.recorder.close()  # the footer went out through _emit, as the last record

    def _handle(self, item: Any) -> None:
        try:
            if isinstance(item, tuple) and item[0] == "record":
                self._switch_recorder(item[1])
                return
            if isinstance(item, tuple) and item[0] == "ops":
                self._emit(item[1].resolve(item[2]))
                return
            if isinstance(item, tuple):
                record = self._resolve_step(*item[1:])
            else:
                record = item
                if record.get("type") == "footer":
                    record["steps"] = self.steps_recorded
                    final = self._meter.final(record["t_ns"]) if self._meter is not None else None
                    if final is not None:  # the whole session's measured cost, just before the footer
                        self._emit(final)
            self._emit(record)
        except Exception as exc:  # the worker must outlive a bad step: report, carry on
            self._status(f"monitor error: {type(exc).__name__}: {exc}")

    def _resolve_step(self, pending: Any, opened: tuple, t1_ns: int, waits: Any = None) -> dict[str, Any]:
        index, kind, batch, seq, past_len, t0_abs, kv, heads = opened
        done = self.timer.resolve(pending)
        t0 = t0_abs - self.t0_ns
        t1 = t1_ns - self.t0_ns
        clock_mhz, n_inside, throttle = self.sampler.clock_between(t0, t1)
        fired = any(done.calls)
        wall_ms = done.wall_ns / 1e6
        if fired:
            layer_ms = [round(ns / 1e6, 5) if c else None for ns, c in zip(done.layer_ns, done.calls)]
        else:
            layer_ms = [None] * len(self.layers)
            self.steps_without_hooks += 1
            if self.steps_without_hooks == 1:
                self._status(NO_LAYER_TIMING)
        per_device = None
        if self._entry_clock_device:  # several GPUs: each layer's cycles at its own device's clock
            per_device, layer_clock, clock_mhz, throttle = self.sampler.device_clocks(
                t0, t1, self.devices_in_use, self._entry_clock_device,
                [ms if l.parent is None else None for ms, l in zip(layer_ms, self.layers)], clock_mhz, throttle)
            cycles = [None if ms is None or not c else int(ms * c * 1e3) for ms, c in zip(layer_ms, layer_clock)]
        elif clock_mhz:
            cycles = [None if ms is None else int(ms * clock_mhz * 1e3) for ms in layer_ms]
        else:
            cycles = [None] * len(layer_ms)
        # Top-level entries never overlap (hooks.py: a call counts to the entry whose parent is open),
        # so their sum is the covered part of the step.
        covered = sum(ms for ms, l in zip(layer_ms, self.layers) if ms is not None and l.parent is None)
        nested = done.nested
        if nested is not None:
            self._note_nested(index, nested)
        record = {
            "type": "step", "index": index, "kind": kind, "t_ns": t0, "wall_ms": round(wall_ms, 5),
            "host_ms": round((t1 - t0) / 1e6, 5), "tokens": batch * seq, "batch": batch, "seq_len": seq,
            "past_len": past_len,
            "layer_ms": layer_ms, "layer_cycles": cycles, "layer_calls": list(done.calls),
            "layer_start_ms": [None if ms is None or st != st else round(st / 1e6, 5)
                               for ms, st in zip(layer_ms, done.start_ns or [float("nan")] * len(layer_ms))],
            "clock_mhz": None if clock_mhz is None else round(clock_mhz, 1),
            "clock_samples": n_inside,
            "cycles": None if not clock_mhz else int(wall_ms * clock_mhz * 1e3),
            "unattributed_ms": round(wall_ms - covered, 5) if fired else None,
            "throttle_reasons": throttle,
            "hooks_fired": fired,
        }
        if self.sampler.buffered:  # the driver's buffered clock samples inside the step set its clock
            record["clock_buffered"] = self.sampler.buffered_between(t0, t1)[1]
        if per_device is not None:
            record["layer_clock_mhz"] = [None if ms is None or c is None else round(c, 1)
                                         for ms, c in zip(layer_ms, layer_clock)]
            record["devices"] = per_device
        add_work_inputs(record, kv, heads)  # kv_len, head_tokens (engine/core/steps.py)
        if nested is not None:  # only in steps where some call ran inside a layer that is not its parent
            record["layer_nested_calls"] = list(nested)
        if waits is not None:
            self._inst.add_to_record(record, waits, done.calls, layer_ms, [l.parent for l in self.layers],
                                     self.placement)
        return record

    def _note_nested(self, index: int, nested: list[int]) -> None:
        """Say once per layer that its calls ran inside other layers (their time is in those moments)."""
        new = [i for i, n in enumerate(nested) if n and i not in self._nested_seen]
        if not new:
            return
        self._nested_seen.update(new)
        names = ", ".join(f"{self.layers[i].name} ({nested[i]}×)" for i in new[:5])
        more = f" and {len(new) - 5} more" if len(new) > 5 else ""
        self._status(f"calls ran inside other layers in step {index}: {names}{more}; their time counts "
                     "to the layer they ran in (layer_nested_calls)", level="info")

    def _emit(self, record: dict[str, Any]) -> None:
        rtype = record.get("type")
        if rtype == "step":
            with self._stats_lock:
                self.stats.add(record)
            self.steps_recorded += 1
            if self._meter is not None:
                self._meter.step(record)
        if self.recorder is not None and not self.recorder.closed:
            try:
                # Every step is on disk before any listener (the UI) sees it: a killed process
                # leaves all the steps it showed. Samples ride along with the next flush.
                self.recorder.write(record, flush=rtype != "sample")
            except RecordingLost as exc:
                self._recording_lost(exc)  # keep measuring without the file; said once
            except (TypeError, ValueError) as exc:  # a value JSON cannot hold: skip the record, carry on
                self._status(f"a {rtype} record could not be recorded: {exc}")
        for fn in tuple(self._listeners):  # a copy: a failing listener is removed mid-loop
            try:
                fn(record)
            except Exception as exc:
                self._listeners.remove(fn)
                self._status(f"a listener failed and was removed: {type(exc).__name__}: {exc}")

    def _status(self, message: str, level: str = "warning", **extra: Any) -> None:
        self.statuses.append(message)
        t_ns = time.perf_counter_ns() - self.t0_ns if self.started else 0
        record = {"type": "status", "t_ns": t_ns, "level": level, "message": message, **extra}
        if threading.current_thread() is getattr(self, "_worker", None):
            self._emit(record)  # said by the worker itself: in order, and before any footer
        else:
            self._queue.put(record)

    def _roof(self) -> dict[str, Any] | None:
        if isinstance(self._roof_request, dict):
            return self._roof_request
        dtype = next((p.dtype for p in self.model.parameters()), torch.float32)
        try:
            return machine_roof(self.device, dtype, calibrate_now=self._roof_request is True)
        except Exception as exc:  # a roof is a bonus: never a reason to fail a session
            self._status(f"no roofline: {type(exc).__name__}: {exc}")
            return None

    # -- for callers ------------------------------------------------------------------------------
    def note_text(self, prompts: list[str], outputs: list[str] | None = None) -> None:
        """Record the texts of the batch just run (only when record_text is on)."""
        if self.record_text and self.started and not self.stopped:
            self._queue.put({"type": "text", "t_ns": time.perf_counter_ns() - self.t0_ns,
                             "after_step": self.steps_started - 1, "prompts": prompts, "outputs": outputs})

    def start_ops(self, layer: int | str, steps: int | None = None) -> int:
        """Ops mode (engine/core/ops.py): time each operator ``layer`` (index or name) runs for the next
        ``steps`` steps, as ``ops`` records. Any thread; it starts with the next step. Returns the
        layer's index; a layer that is not here or a bad ``steps`` raises MomentsError."""
        from llm_moments.engine.core.ops import make_probe

        probe, message = make_probe(self.layers, getattr(self, "layer_devices", None), self.device, layer, steps)
        self._ops_request = probe
        self._status(message, level="info")
        return probe.layer

    def note_status(self, message: str, level: str = "warning") -> None:
        self._status(message, level)

    def summary(self) -> SessionSummary:
        """Per-layer and per-kind statistics of the steps recorded so far (drains pending steps first).

        ``print(monitor.summary())`` prints exactly the headless CLI's table, header line included.
        """
        self.flush()
        with self._stats_lock:
            summary = self.stats.summary()
        return SessionSummary(**vars(summary), header=self.header)

    def snapshot(self, last: int | None = None) -> dict[str, Any]:
        with self._stats_lock:
            return self.stats.arrays(last)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every step that ended has been resolved and recorded."""
        if not self.started or self.stopped:
            return
        deadline = time.monotonic() + timeout_s
        while self.steps_recorded < self.steps_started - (1 if self.hooks._depth else 0):
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
