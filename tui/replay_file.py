"""A recording read for replay without holding it: an index of byte offsets every ``BLOCK_STEPS`` steps,
and blocks of records parsed on demand (the current one and its neighbour cached).

Opening reads the file once as bytes (no JSON: a step line is told by its ``"type":"step"``), so a
day-long recording opens in seconds and the index costs 8 bytes per ``BLOCK_STEPS`` steps. A block is
parsed and checked line by line by the project's one reader rules (``recording.parse_line`` and
``check_record``) when playback or a seek reaches it; its records are put in time order (``t_ns``)
within the block. The step counts per block start as the line counts and are corrected as blocks are
parsed (a bad step line is skipped there and counted in ``skipped``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from llm_moments.engine.analysis.scan import Scan
from llm_moments.engine.core import recording

BLOCK_STEPS = 1024
CACHED_BLOCKS = 3
_STEP = re.compile(rb'"type"\s*:\s*"step"')
_HEADER = re.compile(rb'"type"\s*:\s*"header"')
_FOOTER = re.compile(rb'"type"\s*:\s*"footer"')


class ReplayFile:
    """``header``, ``footer``, ``warnings`` (``rec``: a Scan with them), ``n_blocks``, ``block(b)``:
    the block's timed records in time order and how many steps precede each, ``base(b)``: steps
    before block ``b``, ``total``: steps in the file."""

    def __init__(self, path: str | Path):
        with recording.RecordReader(path) as reader:
            self.path, self.header = reader.path, reader.header
        self.n_layers = len(self.header["layers"])
        self.warnings: list[str] = []
        self.footer: dict[str, Any] | None = None
        self.skipped = 0
        offsets: list[int] = []
        counts: list[int] = []
        with open(self.path, "rb") as fh:
            first = fh.readline()
            pos = len(first)
            offsets.append(pos)
            counts.append(0)
            last, last_at, lineno = b"", pos, 1
            for line in fh:
                lineno += 1
                if _STEP.search(line):
                    if counts[-1] >= BLOCK_STEPS:
                        offsets.append(pos)
                        counts.append(0)
                    counts[-1] += 1
                elif _HEADER.search(line) and self._parses(line, "header"):
                    self.warnings.append(f"line {lineno} starts another session (a second header); "
                                         f"read the first session only")
                    last = b""
                    break
                last, last_at = line, pos
                pos += len(line)
            end = pos
        if last and not last.endswith(b"\n") and not self._parses(last, None):   # cut off: left out
            end = last_at
            if _STEP.search(last):
                counts[-1] -= 1
            self.warnings.append(f"the last line ({lineno}) is cut off; kept the {lineno - 1} lines before it")
            last = b""
        if last and _FOOTER.search(last):
            try:
                obj = recording.parse_line(last.rstrip(b"\n"))
                if recording.check_record(obj, self.n_layers) is None:
                    self.footer = obj
            except recording.BadLine:
                pass
        if self.footer is None and not any("second header" in w for w in self.warnings):
            self.warnings.append("no footer: the session did not end cleanly (killed, or still being written)")
        self.offsets = np.array(offsets + [end], dtype=np.int64)
        self.counts = np.array(counts, dtype=np.int64)
        self._cache: OrderedDict[int, tuple[list[dict[str, Any]], np.ndarray]] = OrderedDict()
        self.rec = Scan(self.path, self.header, self.footer, self.warnings)

    def _parses(self, line: bytes, rtype: str | None) -> bool:
        try:
            obj = recording.parse_line(line.rstrip(b"\n"))
        except recording.BadLine:
            return False
        return isinstance(obj, dict) and (rtype is None or obj.get("type") == rtype)

    @property
    def n_blocks(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def base(self, b: int) -> int:
        return int(self.counts[:b].sum())

    def block(self, b: int) -> tuple[list[dict[str, Any]], np.ndarray]:
        """(records with a ``t_ns``, in time order; steps[i] = how many steps are among records[:i])."""
        hit = self._cache.get(b)
        if hit is not None:
            self._cache.move_to_end(b)
            return hit
        records: list[dict[str, Any]] = []
        with open(self.path, "rb") as fh:
            fh.seek(int(self.offsets[b]))
            data = fh.read(int(self.offsets[b + 1] - self.offsets[b]))
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                obj = recording.parse_line(line)
            except recording.BadLine:
                self.skipped += 1
                continue
            if recording.check_record(obj, self.n_layers) is not None:
                self.skipped += 1
                continue
            if obj.get("type") in ("footer", "header") or "t_ns" not in obj:
                continue
            records.append(obj)
        records.sort(key=lambda r: r["t_ns"])
        steps = np.concatenate([[0], np.cumsum([r.get("type") == "step" for r in records])]).astype(np.int64)
        self.counts[b] = int(steps[-1])
        self._cache[b] = (records, steps)
        while len(self._cache) > CACHED_BLOCKS:
            self._cache.popitem(last=False)
        return records, steps

    def locate(self, n: int) -> tuple[int, int]:
        """(block, position) just after the ``n``-th step (the start when ``n`` is 0)."""
        if n <= 0:
            return 0, 0
        b = 0
        while True:
            base = self.base(b)
            _, steps = self.block(b)           # parsing corrects the block's count
            have = int(steps[-1])
            if n <= base + have or b == self.n_blocks - 1:
                k = min(n - base, have)
                return b, int(np.searchsorted(steps, k, side="left"))
            b = self._block_of(n, b + 1)

    def _block_of(self, n: int, at_least: int) -> int:
        cum = np.cumsum(self.counts)
        return max(at_least, min(int(np.searchsorted(cum, n, side="left")), self.n_blocks - 1))
