"""Switching a running session's recording on and off, and losing it to a write error: the part of
``Monitor`` that owns the file (a mixin; the worker thread does the switching, in order with the
records).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from llm_moments.engine.core.recording import Recorder, RecordingLost, rank_record_path


class RecordingControl:
    """Needs from the monitor: ``recorder``, ``header``, ``t0_ns``, ``_queue``, ``_listeners``,
    ``multi_rank``, ``rank``, ``record_text``, ``recording_lost``, ``_status`` and ``_emit``."""

    recorder: Recorder | None
    header: dict[str, Any] | None
    recording_lost: str | None

    def _switch_recorder(self, recorder: Recorder | None) -> None:
        """Worker side of start/stop_recording: close the old file with a footer, open the new one."""
        old = self.recorder
        if old is not None and not old.closed:
            old.close({"type": "footer", "t_ns": time.perf_counter_ns() - self.t0_ns,
                       "steps": old.steps_written, "reason": "completed"})
        self.recorder = recorder
        if recorder is not None and self.header is not None:
            try:
                recorder.write(self.header)
            except RecordingLost as exc:
                self._recording_lost(exc)
                return
        note = {"type": "recording", "t_ns": time.perf_counter_ns() - self.t0_ns,
                "path": str(recorder.path) if recorder is not None else None}
        for fn in list(self._listeners):
            with contextlib.suppress(Exception):  # _emit reports and removes a failing listener on the next record
                fn(note)

    def start_recording(self, path: str | os.PathLike, overwrite: bool = False) -> str:
        """Record the rest of a running session to ``path`` (a bad path raises MomentsError now).
        An existing file raises MomentsError unless ``overwrite`` (the constructor's setting does not
        carry over: each new file is asked for on its own)."""
        if self.multi_rank:
            path = rank_record_path(path, self.rank)
        recorder = Recorder(path, overwrite=overwrite, private=self.record_text)
        self._queue.put(("record", recorder))
        return str(recorder.path)

    def stop_recording(self) -> None:
        """Close the current recording with a footer; the session goes on."""
        self._queue.put(("record", None))

    def _recording_lost(self, exc: RecordingLost) -> None:
        """A write failed (disk full, EIO): the session goes on unrecorded. The status record carries
        ``recording_lost`` so that a CLI can exit with the code that says so (3)."""
        self.recording_lost = str(exc)
        self._status(str(exc), level="error", recording_lost=True)
        self._emit({"type": "recording", "t_ns": time.perf_counter_ns() - self.t0_ns, "path": None})
