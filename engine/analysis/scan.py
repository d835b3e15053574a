"""One pass over a recording without holding it: the header at once, then the records one by one.

``scan(src)`` takes a path (the file is read line by line; memory does not depend on its length) or a
loaded ``Recording`` (its lists are walked). ``Scan.records()`` yields every record after the header
(steps, samples, status, text ...) except the footer; once it is exhausted, ``footer`` and
``warnings`` say what the reader found, with the same rules and words as ``recording.load``: a
cut-off last line is dropped with a warning, a bad line elsewhere too, no footer is a warning (the
reader is core/recording.py's ``RecordReader``: one line in memory at a time).

``step_chunks`` groups the step records into bounded chunks, each with its step table.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_moments.engine.analysis.steptable import CHUNK, StepTable
from llm_moments.engine.core import recording

CONVERT = 256             # step records converted to table rows together (see ``step_chunks``)


@dataclass
class Scan:
    """A recording being read: header, then ``records()``; footer and warnings once they are read."""

    path: Path
    header: dict[str, Any]
    footer: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    _rec: Any = None          # a loaded Recording, when scanning one

    @property
    def truncated(self) -> bool:
        return self.footer is None

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record after the header but the footer, in file order (a loaded Recording: steps,
        samples, then the others). Can be walked again (the file is read again)."""
        if self._rec is not None:
            yield from self._rec.steps
            yield from self._rec.samples
            yield from self._rec.others
            return
        yield from self._read()

    def _read(self) -> Iterator[dict[str, Any]]:
        stats = recording.ReadStats()
        with _collector_paused():
            for obj in recording.RecordReader(self.path, stats):   # the one streaming reader (core/recording.py)
                if obj.get("type") == "footer":
                    continue
                yield obj
        self.footer, self.warnings = stats.footer, stats.warnings()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a file is read, back on after (if it was on).

    Records parsed from JSON hold no reference cycles, so the collector never frees one of them; but
    with a chunk of thousands of them alive it walks them again and again as they are made, a fifth
    of the time of a report. The collector is the process's: this is for the batch commands' one pass
    over a file, which make no cycles of their own to speak of; a reader stopped early (closed,
    dropped) turns it back on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def scan(src: Any) -> Scan:
    """A ``Scan`` of a path or of a loaded Recording; a file that is not a recording fails here."""
    if isinstance(src, Scan):
        return src
    if isinstance(src, recording.Recording):
        return Scan(src.path, src.header, src.footer, list(src.warnings), _rec=src)
    with recording.RecordReader(src) as reader:
        return Scan(reader.path, reader.header)


def step_chunks(sc: Scan, on_other: Callable[[dict[str, Any]], None] | None = None,
                size: int = CHUNK) -> Iterator[tuple[list[dict[str, Any]], StepTable]]:
    """(step records, their step table) ``size`` steps at a time, in file order. Only steps whose layer
    arrays match the header are kept (the table's rows are the records, one for one); the table's
    ``dropped`` counts the others. Every record that is not a step goes to ``on_other``.

    The records become table rows ``CONVERT`` at a time, soon after they are read: converting them
    while they are still in the processor's cache is what makes this fast, not the size of the chunk."""
    proto = StepTable.for_header(sc.header, capacity=1)
    n = proto.n_layers
    sub = max(min(CONVERT, size), 1)

    def new_table() -> StepTable:  # grows as rows come (a short file with many layers stays small)
        return StepTable(proto.names, proto.parents, proto.coeffs, capacity=sub)

    batch: list[dict[str, Any]] = []
    table, done, dropped = new_table(), 0, 0
    for r in sc.records():
        if r.get("type") != "step":
            if on_other is not None:
                on_other(r)
            continue
        ms = r.get("layer_ms")
        if type(ms) not in (list, tuple) or len(ms) != n:
            dropped += 1
            continue
        batch.append(r)
        if len(batch) - done >= sub:
            table.extend(batch[done:])
            done = len(batch)
            if done >= size:
                table.dropped = dropped
                yield batch, table
                batch, table, done, dropped = [], new_table(), 0, 0
    if batch or dropped:
        table.extend(batch[done:])
        table.dropped = dropped
        yield batch, table
