"""JSON Lines recordings (schema ``moments/1``): a crash-safe writer, a tolerant reader, a follower.

One JSON object per line. The writer flushes after every step so that a process killed at any point
leaves a file whose complete lines all load; the reader checks every line (strict JSON, each record
against the header), skips and counts the bad ones wherever they are (a cut-off last line too), and
refuses a bad header or a newer major schema with one clear line. ``iter_records`` / ``RecordReader``
stream a file in bounded memory; ``follow`` tails one that is being written.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import msgspec

from llm_moments.engine.errors import MomentsError

SCHEMA = "moments/1"
SCHEMA_MAJOR = 1


class RecordingError(MomentsError):
    """A file that cannot be read as a recording (not JSON Lines, no header, newer schema)."""


# The writer (and the checks of where it writes) lives in engine/core/writer.py; these names stay here.
from llm_moments.engine.core.writer import (  # noqa: E402, F401
    API_HINT,
    FORCE_HINT,
    Recorder,
    RecordingLost,
    check_record_path,
    check_writable,
    rank_record_path,
)


@dataclass
class Recording:
    """A loaded recording: header, steps, samples, other records, footer and what was wrong with it."""

    path: Path
    header: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    others: list[dict[str, Any]] = field(default_factory=list)
    footer: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: int = 0                     # lines that were not loaded (bad JSON, bad values, cut off)

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.header["layers"]]

    @property
    def truncated(self) -> bool:
        """True when the writer did not end the session (killed, or still writing)."""
        return self.footer is None


# -- parsing and validation: one line at a time ------------------------------------------------------
#
# A reader never trusts a line: it is parsed strictly (no NaN / Infinity, no number that overflows a
# float, nesting and integer size errors caught) and every record is checked against the header
# (types, lengths of the per-layer arrays, finite non-negative times, a known step kind). A bad line
# is skipped and counted, wherever it is; only a bad or missing header makes a file unreadable.

MAX_LINE_BYTES = 64 << 20      # a longer line is skipped unread (no recording writes one)
MAX_PROBLEMS = 5               # bad lines named in the warning; the rest are counted
READ_BATCH = 256               # lines a reader parses and checks together (``check_records``)
READ_BATCH_BYTES = 8 << 20     # ... or fewer, when they are long
MAX_NUMBER = 1e15              # a value beyond this (ms, MHz, tokens, ...) is not a measurement
MAX_T_NS = 10 ** 18            # 31 years from the session's start
MAX_LAYERS = 1_000_000
STEP_KINDS = frozenset({"prefill", "decode", "encode"})
_NUMERIC_SUFFIXES = ("_mhz", "_pct", "_ms", "_ns", "_w", "_c", "_hz", "_flops", "_per_s")
_TEXT_KEYS = ("message", "level", "path", "reason", "error", "source", "variant", "name")


class BadLine(ValueError):
    """One line that is not a usable record; the message says what is wrong with it."""


def _reject_constant(name: str) -> Any:
    raise BadLine(f"{name} is not a number JSON allows")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadLine(f"the number {text[:20]}{'…' if len(text) > 20 else ''} is out of range")
    return value


# Floats that overflow to inf have a 3-digit exponent (checked while parsing, only on lines that have
# one: a hook per float costs) or 309+ digits (rarer still: ``_has_nonfinite`` after parsing).
_MAYBE_HUGE = re.compile(r"[eE][+-]?[0-9]{3}")


def _has_nonfinite(v: Any, depth: int = 0) -> bool:
    t = type(v)
    if t is float:
        return not math.isfinite(v)
    if t is list:
        return any(_has_nonfinite(x, depth + 1) for x in v) if depth < 64 else False
    if t is dict:
        return any(_has_nonfinite(x, depth + 1) for x in v.values()) if depth < 64 else False
    return False


# Two decoders, one answer. The fast one (msgspec's, C) takes every line first: it refuses NaN /
# Infinity, a number that overflows a float, invalid UTF-8, deep nesting and 4301+-digit integers, and
# what it accepts json.loads reads to the same value (tests/test_reader_speed.py holds them to it), with
# no non-finite float in it. A line it refuses goes to the careful one (json), which says why in words,
# or reads it (a lone surrogate escape, a float of 309 digits: the record checks then judge it).
_fast_decode = msgspec.json.Decoder().decode


def _parse(line: str | bytes) -> tuple[Any, bool]:
    """(value, finite): ``finite`` when the fast decoder read it (no NaN or infinity can be in it)."""
    try:
        return _fast_decode(line), True
    except Exception:  # its words differ: the careful path says what is wrong, in ours
        return _parse_careful(line), False


def parse_line(line: str | bytes) -> Any:
    """One JSON value from one line, strictly: raises ``BadLine`` (with the reason) instead of anything
    else (bad UTF-8, bad JSON, NaN / Infinity, numbers out of range, nesting too deep, 4300+ digits)."""
    return _parse(line)[0]


def _parse_careful(line: str | bytes) -> Any:
    if isinstance(line, (bytes, bytearray)):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise BadLine("not UTF-8 text") from None
    try:
        if _MAYBE_HUGE.search(line):  # a float that may overflow to inf: check each (slow) only then
            return json.loads(line, parse_constant=_reject_constant, parse_float=_parse_float)
        return json.loads(line, parse_constant=_reject_constant)
    except BadLine:
        raise
    except json.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON: {exc.msg[:1].lower()}{exc.msg[1:]}, column {exc.colno}") from None
    except RecursionError:
        raise BadLine("nested too deep") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise BadLine(f"not a usable JSON value ({str(exc).split(';')[0][:80]})") from None


def _is_num(v: Any) -> bool:
    return type(v) is int or type(v) is float  # not bool


def _num_problem(key: str, v: Any, *, required: bool = False, lo: float | None = 0.0,
                 hi: float = MAX_NUMBER, integer: bool = False) -> str | None:
    if v is None:
        return f"{key} is missing" if required else None
    if not _is_num(v) or (integer and type(v) is not int):
        return f"{key} is {type(v).__name__}, not {'an integer' if integer else 'a number'}"
    if lo is not None and v < lo:
        return f"{key} is negative ({v})"
    if not -hi <= v <= hi:
        return f"{key} is out of range"
    return None


_NUM_TYPES = frozenset({int, float, type(None)})


def _array_problem(key: str, v: Any, n: int, *, required: bool = False, nonneg: bool = True) -> str | None:
    if v is None:
        return f"{key} is missing" if required else None
    if type(v) is not list:
        return f"{key} is {type(v).__name__}, not a list"
    if len(v) != n:
        return f"{key} has {len(v)} values, the header has {n} layers"
    if not set(map(type, v)) <= _NUM_TYPES:
        bad = next(x for x in v if type(x) not in _NUM_TYPES)
        return f"{key} holds a {type(bad).__name__}, not a number"
    try:
        lo, hi = min(v), max(v)
        if lo is None or hi is None:  # a list of one None compares nothing
            raise TypeError
    except TypeError:  # None among the numbers (a layer that did not run)
        vals = [x for x in v if x is not None]
        lo, hi = (min(vals), max(vals)) if vals else (0, 0)
    except ValueError:  # no layers
        return None
    if nonneg and lo < 0:
        return f"{key} holds a negative value ({lo})"
    if hi > MAX_NUMBER or lo < -MAX_NUMBER:
        return f"{key} holds a value out of range"
    return None


def _fields_problem(obj: dict[str, Any]) -> str | None:
    """Rules that hold for every record: numbers where a unit says so, text where text is expected."""
    for key, v in obj.items():
        if v is None:
            continue
        if key.endswith(_NUMERIC_SUFFIXES) and not (type(v) is list and (key.startswith("layer_")
                                                                          or key in _STEP_LAYER_ARRAYS)):
            hi = MAX_T_NS if key.endswith("_ns") else MAX_NUMBER
            # a unit-named map (pipeline_ms: {recv, send, broadcast}) holds numbers of that unit
            values = v.items() if type(v) is dict else ((key, v),)
            for sub, x in values:
                problem = _num_problem(key if sub == key else f"{key}.{str(sub)[:20]}", x, lo=None, hi=hi)
                if problem:
                    return problem
        elif key in _TEXT_KEYS and type(v) is not str:
            return f"{key} is {type(v).__name__}, not text"
    return None


_STEP_LAYER_ARRAYS = ("layer_cycles", "layer_calls", "layer_start_ms", "layer_nested_calls", "comm_ms", "load_ms")
_STEP_COUNTS = ("tokens", "batch", "seq_len", "past_len", "clock_samples", "cycles")
_STEP_CHECKED = frozenset({"layer_ms", *_STEP_LAYER_ARRAYS, "kv_len", "head_tokens"})  # values bounded there


def _step_problem(obj: dict[str, Any], n_layers: int) -> str | None:
    index = obj.get("index")
    if type(index) is not int:
        return "index is missing" if index is None else f"index is {type(index).__name__}, not an integer"
    if not 0 <= index <= MAX_T_NS:
        return f"index is out of range ({index})" if index >= 0 else f"index is negative ({index})"
    kind = obj.get("kind")
    if type(kind) is not str or kind not in STEP_KINDS:  # a list or a map is not hashable: not a kind
        return f"kind {str(kind)[:20]!r} is not one of prefill, decode, encode"
    problem = (_num_problem("t_ns", obj.get("t_ns"), required=True, hi=MAX_T_NS)
               or _array_problem("layer_ms", obj.get("layer_ms"), n_layers, required=True))
    if problem:
        return problem
    for key in _STEP_LAYER_ARRAYS:
        if key in obj:
            problem = _array_problem(key, obj[key], n_layers)
            if problem:
                return problem
    for key in _STEP_COUNTS:
        problem = _num_problem(key, obj.get(key))
        if problem:
            return problem
    for key in ("wall_ms", "host_ms", "clock_mhz"):
        problem = _num_problem(key, obj.get(key))
        if problem:
            return problem
    if obj.get("hooks_fired") not in (None, True, False):
        return "hooks_fired is not true or false"
    reasons = obj.get("throttle_reasons")
    if reasons is not None and (type(reasons) is not list or not all(type(r) is str for r in reasons)):
        return "throttle_reasons is not a list of names"
    kv = obj.get("kv_len")
    if kv is not None and not (_is_num(kv) and 0 <= kv <= MAX_NUMBER) and _array_problem(
            "kv_len", kv, len(kv) if type(kv) is list else -1) is not None:
        return "kv_len is not a count or a list of counts"
    heads = obj.get("head_tokens")
    if heads is not None and _array_problem("head_tokens", heads, len(heads) if type(heads) is list else -1):
        return "head_tokens is not a list of counts"
    if any(_has_nonfinite(v) for k, v in obj.items() if k not in _STEP_CHECKED):
        return "a number out of range"
    return _fields_problem(obj)


def check_record(obj: Any, n_layers: int) -> str | None:
    """What is wrong with one record (not the header) of a file whose header lists ``n_layers``
    layers; None when it can be used. Unknown record types pass (readers ignore what they do not know)."""
    if type(obj) is not dict:
        return f"a JSON {type(obj).__name__}, not a record"
    rtype = obj.get("type")
    if type(rtype) is not str:
        return "a record without a type"
    if rtype == "step":
        return _step_problem(obj, n_layers)
    if any(_has_nonfinite(v) for v in obj.values()):
        return "a number out of range"
    problem = _num_problem("t_ns", obj.get("t_ns"), hi=MAX_T_NS)
    if problem:
        return problem
    if rtype == "sample":
        if obj.get("t_ns") is None:
            return "t_ns is missing"
        reasons = obj.get("throttle_reasons")
        if reasons is not None and (type(reasons) is not list or not all(type(r) is str for r in reasons)):
            return "throttle_reasons is not a list of names"
    elif rtype == "footer":
        problem = _num_problem("steps", obj.get("steps"), integer=True)
        if problem:
            return problem
    return _fields_problem(obj)


# -- the same checks, a batch of records at a time ------------------------------------------------------
#
# ``check_records`` gives ``check_record``'s answer for each record of a batch. Step and sample records
# that the fast decoder read (no non-finite number can be in them) are checked together, in C: the
# rules above, written as typed fields with bounds (``_checker``), validate the whole group at once
# (msgspec.convert). Only when a record of the group breaks a rule (or holds what these types do not
# judge) does each record of the group go through ``check_record``, which says what is wrong in the
# usual words. The types must be as strict as the rules or stricter, never looser:
# tests/test_reader_speed.py holds both paths to the same answers.


def _num(lo: float | None, hi: float) -> Any:
    """A JSON number in [lo, hi] (lo None: [-hi, hi]), as ``_num_problem`` judges it: ints exactly."""
    low = -hi if lo is None else lo
    return (Annotated[int, msgspec.Meta(ge=int(low), le=int(hi))]
            | Annotated[float, msgspec.Meta(ge=float(low), le=float(hi))])


_COUNT = _num(0.0, MAX_NUMBER)


def _counts(n: int | None = None) -> Any:
    """``_array_problem``'s list: numbers or None, non-negative, within MAX_NUMBER; ``n`` of them."""
    items = list[_COUNT | None]
    return items if n is None else Annotated[items, msgspec.Meta(min_length=n, max_length=n)]


def _generic_type(key: str) -> Any:
    """``_fields_problem``'s rule for a field that has no rule of its own."""
    if key.endswith(_NUMERIC_SUFFIXES):
        num = _num(None, MAX_T_NS if key.endswith("_ns") else MAX_NUMBER)
        if key.startswith("layer_") or key in _STEP_LAYER_ARRAYS:
            return num | dict[str, num | None] | list[Any] | None
        return num | dict[str, num | None] | None
    if key in _TEXT_KEYS:
        return str | None
    return Any


def _step_fields(n: int) -> list[tuple[Any, ...]]:
    fields: list[tuple[Any, ...]] = [
        ("type", Literal["step"]),
        ("index", Annotated[int, msgspec.Meta(ge=0, le=MAX_T_NS)]),
        ("kind", Literal[tuple(sorted(STEP_KINDS))]),
        ("t_ns", _num(0.0, MAX_T_NS)),
        ("layer_ms", _counts(n)),
        ("hooks_fired", bool | None, None),
        ("throttle_reasons", list[str] | None, None),
        ("kv_len", _COUNT | _counts() | None, None),
        ("head_tokens", _counts() | None, None),
    ]
    fields += [(key, _counts(n) | None, None) for key in _STEP_LAYER_ARRAYS]
    fields += [(key, _COUNT | None, None) for key in (*_STEP_COUNTS, "wall_ms", "host_ms", "clock_mhz")]
    return fields


_SAMPLE_FIELDS: list[tuple[Any, ...]] = [
    ("type", Literal["sample"]),
    ("t_ns", _num(0.0, MAX_T_NS)),
    ("throttle_reasons", list[str] | None, None),
]
_USUAL = {"step": ("unattributed_ms",), "sample": ("clock_mhz", "mem_clock_mhz", "util_pct", "power_w", "temp_c")}
_MAX_EXTRA = 64                # more fields than that in a record no writer makes: one by one
_CHECKERS: dict[tuple[str, int, frozenset[str]], Any] = {}
_EXTRA: dict[str, frozenset[str]] = {}


def _checker(rtype: str, n: int, extra: frozenset[str]) -> Any:
    """The type a group of ``rtype`` records must convert to: the rules as fields, plus ``extra``
    fields (generic rules); any other field is refused."""
    key = (rtype, n, extra)
    checker = _CHECKERS.get(key)
    if checker is None:
        fields = _step_fields(n) if rtype == "step" else list(_SAMPLE_FIELDS)
        known = {f[0] for f in fields}
        fields += [(k, _generic_type(k), None) for k in sorted(extra | set(_USUAL[rtype])) if k not in known]
        names = {f"f{i}": f[0] for i, f in enumerate(fields)}
        struct = msgspec.defstruct("Checked", [(f"f{i}", *f[1:]) for i, f in enumerate(fields)], rename=names,
                                   forbid_unknown_fields=True, kw_only=True)
        if len(_CHECKERS) >= 256:
            _CHECKERS.clear()
        checker = _CHECKERS[key] = list[struct]
    return checker


def _group_fine(group: list[dict[str, Any]], rtype: str, n_layers: int) -> bool:
    """Whether every record of ``group`` (all of type ``rtype``, step or sample, fast-decoded) passes
    ``check_record``; False also when these checks cannot tell."""
    extra = _EXTRA.get(rtype, frozenset())
    try:
        msgspec.convert(group, _checker(rtype, n_layers, extra))
        return True
    except Exception:  # a rule broken, or a field these types do not know yet
        pass
    seen = frozenset(set().union(*group))
    if seen <= extra or len(seen) > _MAX_EXTRA:
        return False
    extra = extra | seen if len(extra | seen) <= _MAX_EXTRA else seen
    _EXTRA[rtype] = extra
    try:
        msgspec.convert(group, _checker(rtype, n_layers, extra))
        return True
    except Exception:
        return False


def check_records(objs: list[Any], n_layers: int, finite: list[bool] | None = None) -> list[str | None]:
    """``[check_record(obj, n_layers) for obj in objs]``, the same answers, faster on big batches.
    ``finite[i]``: ``objs[i]`` holds no NaN or infinity (the fast decoder read it); without it, or
    where it is False, a record is checked one by one."""
    out: list[str | None] = [None] * len(objs)
    groups: dict[str, list[int]] = {"step": [], "sample": []}
    for i, obj in enumerate(objs):
        rtype = obj.get("type") if type(obj) is dict and finite is not None and finite[i] else None
        if rtype == "step" or rtype == "sample":
            groups[rtype].append(i)
        else:
            out[i] = check_record(obj, n_layers)
    for rtype, idx in groups.items():
        if not idx:
            continue
        if len(idx) < 8 or not _group_fine([objs[i] for i in idx], rtype, n_layers):
            for i in idx:
                out[i] = check_record(objs[i], n_layers)
    return out


def _header_problem(record: dict[str, Any]) -> str | None:
    layers = record["layers"]
    if not layers:  # every session has at least one (a model without children is its own layer)
        return "its header lists no layers"
    if len(layers) > MAX_LAYERS:
        return f"its header lists {len(layers)} layers"
    for i, layer in enumerate(layers):
        if type(layer) is not dict:
            return f"layer {i} of its header is not an object"
        if type(layer.get("name")) is not str:
            return f"layer {i} of its header has no name"
        parent = layer.get("parent")
        if parent is not None and (type(parent) is not int or not 0 <= parent < len(layers) or parent == i):
            return f"layer {i} of its header has a bad parent ({str(parent)[:20]})"
    for i in range(len(layers)):  # no cycles: every chain of parents ends
        j, hops = i, 0
        while layers[j].get("parent") is not None:
            j, hops = layers[j]["parent"], hops + 1
            if hops > len(layers):
                return f"layer {i} of its header is its own ancestor"
    for key in ("model", "device", "clock", "roof", "work", "run", "tool", "dist", "clock_origin"):
        if record.get(key) is not None and type(record[key]) is not dict:
            return f"its header's {key} is {type(record[key]).__name__}, not an object"
    for key in ("depth", "timer"):
        if record.get(key) is not None and type(record[key]) is not str:
            return f"its header's {key} is not text"
    for key in ("clock", "roof"):
        problem = _fields_problem(record.get(key) or {})
        if problem:
            return f"its header's {key}: {problem}"
    for key in ("peak_flops", "peak_bytes_per_s"):
        problem = _num_problem(key, (record.get("roof") or {}).get(key), lo=None)
        if problem:
            return f"its header's roof: {problem}"
    work = (record.get("work") or {}).get("layers")
    if work is not None:
        if type(work) is not list or len(work) != len(layers):
            return "its header's work table does not have one row per layer"
        for row in work:
            if type(row) is not list or not 6 <= len(row) <= 16 or _array_problem("work", row, len(row), nonneg=False):
                return "its header's work table holds a row that is not 6 to 8 numbers"
            if any(not (type(v) is int or (type(v) is float and v.is_integer())) or not -1 <= v <= MAX_LAYERS
                   for v in row[6:8]):
                return "its header's work table holds a bad head or cache index"
    return None


def check_header(record: Any, where: str) -> dict[str, Any]:
    """Validate a header record; raise RecordingError with one line if it is not one we can read."""
    if not isinstance(record, dict) or record.get("type") != "header":
        raise RecordingError(f"{where} is not a moments recording: its first line is not a header")
    schema = str(record.get("schema", ""))[:40]
    name, _, version = schema.partition("/")
    if name != "moments" or not version.split(".")[0].isdigit() or len(version.split(".")[0]) > 6:
        raise RecordingError(f"{where} is not a moments recording: unknown schema {schema!r}")
    major = int(version.split(".")[0])
    if major != SCHEMA_MAJOR:
        raise RecordingError(
            f"{where} uses schema {schema}, this moments reads {SCHEMA}: "
            + ("upgrade llm-moments to read it" if major > SCHEMA_MAJOR else "it is too old to read")
        )
    if not isinstance(record.get("layers"), list):
        raise RecordingError(f"{where} is not a moments recording: its header has no layer list")
    problem = _header_problem(record) or ("a number in its header is out of range" if _has_nonfinite(record) else None)
    if problem:
        raise RecordingError(f"{where} cannot be read: {problem}")
    return record


# -- the streaming reader ------------------------------------------------------------------------------------


@dataclass
class ReadStats:
    """What a reader has seen so far; updated as it goes (a running count)."""

    lines: int = 0                       # lines read, the header's included
    records: int = 0                     # records yielded (not the header)
    skipped: int = 0                     # bad lines skipped
    problems: list[tuple[int, str]] = field(default_factory=list)  # the first MAX_PROBLEMS: (line, reason)
    cut_off: bool = False                # the last line had no newline and could not be read
    footer: dict[str, Any] | None = None
    ended_at_header: int | None = None   # line of a second header (another session): reading stopped there

    def skip(self, lineno: int, reason: str) -> None:
        self.skipped += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append((lineno, reason))

    def warnings(self) -> list[str]:
        """The warnings a command prints: one per kind of trouble, each one line."""
        out = []
        bad = [(n, why) for n, why in self.problems if not (self.cut_off and n == self.lines)]
        n_bad = self.skipped - (1 if self.cut_off else 0)
        if n_bad:
            named = "; ".join(f"line {n}: {why}" for n, why in bad)
            more = f"; and {n_bad - len(bad)} more" if n_bad > len(bad) else ""
            out.append(f"skipped {n_bad} bad line{'' if n_bad == 1 else 's'} ({named}{more})")
        if self.cut_off:
            out.append(f"the last line ({self.lines}) is cut off; kept the {self.lines - 1} lines before it")
        if self.ended_at_header is not None:
            out.append(f"line {self.ended_at_header} starts another session (a second header); "
                       f"read the first session only")
        if self.footer is None and self.ended_at_header is None:
            out.append("no footer: the session did not end cleanly (killed, or still being written)")
        return out


def _open(path: str | os.PathLike) -> tuple[Path, IO[bytes]]:
    p = Path(path).expanduser()
    try:
        return p, open(p, "rb")
    except FileNotFoundError:
        raise RecordingError(f"no such recording: {p}") from None
    except IsADirectoryError:
        raise RecordingError(f"{p} is a directory, not a recording") from None
    except OSError as exc:
        raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None


def _read_line(fh: IO[bytes]) -> tuple[bytes | None, bool] | None:
    """(line without its newline, whether it had one); None at the end. Too long: (None, ...)
    after skipping to the next newline."""
    line = fh.readline(MAX_LINE_BYTES + 1)
    if not line:
        return None
    if line.endswith(b"\n"):
        return line[:-1], True
    if len(line) <= MAX_LINE_BYTES:
        return line, False  # the last line, cut off (or not yet finished)
    while True:  # skip the rest of an overlong line
        more = fh.readline(MAX_LINE_BYTES)
        if not more or more.endswith(b"\n"):
            return None, more.endswith(b"\n")


class RecordReader:
    """Streams one recording: the header is checked when it opens (``RecordingError``, one line),
    then iterating yields every usable record after it, in file order, skipping and counting
    (``stats``) the lines that are not; memory stays bounded by one line."""

    def __init__(self, path: str | os.PathLike, stats: ReadStats | None = None):
        self.path, self._fh = _open(path)
        self.stats = stats if stats is not None else ReadStats()
        try:
            self.header = self._read_header()
        except BaseException:
            self._fh.close()
            raise

    def _read_header(self) -> dict[str, Any]:
        p = self.path
        try:
            got = _read_line(self._fh)
        except OSError as exc:
            raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None
        if got is None:
            raise RecordingError(f"{p} is empty: nothing was recorded")
        self.stats.lines += 1
        raw, _ = got
        if raw is None:
            raise RecordingError(f"{p} is not a moments recording: line 1 is longer than {MAX_LINE_BYTES >> 20} MiB")
        if not raw.strip():
            raise RecordingError(f"{p} is not a moments recording: line 1 is empty")
        try:
            obj = parse_line(raw)
        except BadLine as exc:
            if "UTF-8" in str(exc) or b"\x00" in raw:
                raise RecordingError(f"{p} is not a moments recording: it is not text") from None
            if str(exc).startswith("not valid JSON"):
                raise RecordingError(f"{p} is not a moments recording: line 1 is not JSON") from None
            raise RecordingError(f"{p} is not a moments recording: line 1: {exc}") from None
        return check_header(obj, str(p))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stats, n_layers, fh = self.stats, len(self.header["layers"]), self._fh
        lineno = stats.lines
        try:
            while True:
                # A batch of lines (bounded in lines and bytes), parsed, then checked together
                # (``check_records``); then walked in file order, so the counts, the skipped lines and
                # where a second header stops the reading are what one line at a time would give.
                entries: list[tuple[int, bool, int, str | None]] = []  # (line, cut off, record or -1, reason)
                objs: list[Any] = []
                finite: list[bool] = []
                failed: str | None = None
                size = 0
                at_end = False
                while len(entries) < READ_BATCH and size < READ_BATCH_BYTES:
                    try:
                        got = _read_line(fh)
                    except OSError as exc:
                        failed = f"cannot read: {exc.strerror or exc}"
                        break
                    if got is None:
                        at_end = True
                        break
                    lineno += 1
                    raw, complete = got
                    if raw is None:
                        entries.append((lineno, False, -1, f"longer than {MAX_LINE_BYTES >> 20} MiB"))
                        size += MAX_LINE_BYTES
                        continue
                    size += len(raw)
                    if not raw.strip():
                        entries.append((lineno, False, -1, None))
                        continue
                    try:
                        obj, fin = _parse(raw)
                    except BadLine as exc:
                        entries.append((lineno, not complete, -1, str(exc) if complete else "cut off"))
                        continue
                    entries.append((lineno, not complete, len(objs), None))
                    objs.append(obj)
                    finite.append(fin)
                problems = check_records(objs, n_layers, finite)
                for line, cut, k, reason in entries:
                    stats.lines = line
                    if k >= 0:
                        obj, reason = objs[k], problems[k]
                        if reason is None:
                            if obj["type"] == "header":
                                stats.ended_at_header = line
                                return
                            if obj["type"] == "footer":
                                stats.footer = obj
                            stats.records += 1
                            yield obj
                            continue
                    if reason is not None:
                        if cut:
                            stats.cut_off = True
                        stats.skip(line, reason)
                if failed is not None:
                    stats.skip(stats.lines + 1, failed)
                    return
                if at_end:
                    return
        finally:
            self._fh.close()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The checked header of a recording (``RecordingError``, one line, if it has none we can read)."""
    with RecordReader(path) as reader:
        return reader.header


def iter_records(path: str | os.PathLike, stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Every usable record after the header, validated against it, one at a time (bounded memory).
    Pass a ``ReadStats`` to see the running count of skipped lines and, at the end, ``stats.warnings()``.
    The header is checked first: a bad one raises ``RecordingError`` when iteration starts."""
    reader = RecordReader(path, stats)
    yield from reader


def load(path: str | os.PathLike) -> Recording:
    """Read a whole recording. Bad lines anywhere are skipped and counted (a warning names the first
    few); a cut-off last line too; a bad or missing header raises RecordingError with one line."""
    reader = RecordReader(path)
    rec = Recording(path=reader.path, header=reader.header)
    for obj in reader:
        _file_record(rec, obj)
    rec.skipped = reader.stats.skipped
    rec.warnings = reader.stats.warnings()
    return rec


def _file_record(rec: Recording, obj: dict[str, Any]) -> None:
    rtype = obj.get("type")
    if rtype == "step":
        rec.steps.append(obj)
    elif rtype == "sample":
        rec.samples.append(obj)
    elif rtype == "footer":
        rec.footer = obj
    else:
        rec.others.append(obj)


# -- following a file that is being written ----------------------------------------------------------


def _header_from_line(raw: bytes, where: str) -> dict[str, Any]:
    try:
        obj = parse_line(raw)
    except BadLine as exc:
        if "UTF-8" in str(exc):
            raise RecordingError(f"{where} is not a moments recording: it is not text") from None
        raise RecordingError(f"{where} is not a moments recording: line 1 is not JSON") from None
    return check_header(obj, where)


def _change(p: Path, fh: IO[bytes], ident: tuple[int, int], offset: int, consumed: int,
            probe: bytes) -> str | None:
    """What happened to the file at ``p`` since it was opened as ``fh``: "deleted", "replaced" (another
    file at the path), "truncated" (shorter than what was read, or its start rewritten), or None."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return "deleted"
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != ident:
        return "replaced"
    if st.st_size < offset:
        return "truncated"
    try:  # cut and rewritten past our offset between two looks: its first line or a line end moved
        fd = fh.fileno()
        if probe and os.pread(fd, len(probe), 0) != probe:
            return "truncated"
        if consumed and os.pread(fd, 1, consumed - 1) != b"\n":
            return "truncated"
    except OSError:
        return None
    return None


_CHANGE_WORDS = {
    "deleted": "was deleted; waiting for a new session to appear there",
    "replaced": "was replaced by another file; following the new session from its header",
    "truncated": "was truncated (rewritten); following the new session from its header",
    "new-session": "holds a new session (a second header); following it from its header",
}


def follow(
    path: str | os.PathLike,
    *,
    poll_s: float = 0.1,
    stop: Any = None,
    idle_timeout_s: float | None = None,
    wait_for_file_s: float = 0.0,
    restart: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield records from a file another process is still writing, catching up with what is there.

    Only complete lines are yielded; a partial last line waits for its newline. Every line is checked
    like ``iter_records`` does (bad ones are skipped and counted in ``stats``). The first record yielded
    is the checked header (a bad one raises RecordingError, one line). Ends after the footer, when
    ``stop`` (a threading.Event) is set, or when the file has not grown for ``idle_timeout_s`` seconds
    (None: wait for ever).

    The file is watched while it is followed: deleted, replaced by another file (a new inode or
    device), truncated (shorter than what was read, or its first line rewritten) or given a second
    header (a new session appended). ``restart`` False: that raises RecordingError. ``restart`` True:
    it yields ``{"type": "follow", "event": "deleted" | "replaced" | "truncated" | "new-session",
    "reset": bool, "message": ...}`` (``reset``: the records before belong to another session) and
    goes on with the new session's header, waiting for the path to reappear after a deletion; the
    footer does not end it then (a new session may follow).
    """
    p = Path(path).expanduser()
    stats = stats if stats is not None else ReadStats()
    deadline = time.monotonic() + wait_for_file_s

    def open_file(wait_s: float) -> IO[bytes] | None:
        until = time.monotonic() + wait_s
        while True:
            try:
                return open(p, "rb")
            except FileNotFoundError:
                if time.monotonic() >= until or (stop is not None and stop.is_set()):
                    return None
                time.sleep(poll_s)
            except IsADirectoryError:
                raise RecordingError(f"{p} is a directory, not a recording") from None
            except OSError as exc:
                raise RecordingError(f"cannot read {p}: {exc.strerror or exc}") from None

    fh = open_file(max(deadline - time.monotonic(), 0.0))
    if fh is None:
        raise RecordingError(f"no such recording: {p}")

    def event(kind: str, reset: bool) -> dict[str, Any]:
        return {"type": "follow", "event": kind, "reset": reset, "message": f"{p} {_CHANGE_WORDS[kind]}"}

    try:
        while True:  # one file (and session) per pass
            st = os.fstat(fh.fileno())
            ident = (st.st_dev, st.st_ino)
            header: dict[str, Any] | None = None
            n_layers = 0
            pending = b""
            overlong = False
            offset = consumed = lineno = 0
            probe = b""
            ended = False           # the footer came: only a new session is of interest now
            changed: str | None = None
            last_growth = time.monotonic()
            while changed is None:
                if stop is not None and stop.is_set():
                    return
                try:
                    chunk = fh.read(1 << 20)
                except OSError:
                    chunk = b""
                if not chunk:
                    changed = _change(p, fh, ident, offset, consumed, probe)
                    if changed is not None:
                        break
                    if idle_timeout_s is not None and time.monotonic() - last_growth > idle_timeout_s:
                        return
                    time.sleep(poll_s)
                    continue
                last_growth = time.monotonic()
                offset += len(chunk)
                pending += chunk
                *complete, pending = pending.split(b"\n")
                if not complete and len(pending) > MAX_LINE_BYTES and not overlong:
                    overlong, pending = True, b""
                for raw in complete:
                    consumed += len(raw) + 1
                    lineno += 1
                    if overlong:
                        overlong = False
                        stats.lines += 1
                        stats.skip(lineno, f"longer than {MAX_LINE_BYTES >> 20} MiB")
                        continue
                    if not raw.strip():
                        continue
                    stats.lines += 1
                    if header is None:
                        header = _header_from_line(raw, str(p))
                        n_layers = len(header["layers"])
                        probe = raw[:4096]
                        yield header
                        continue
                    try:
                        obj = parse_line(raw)
                    except BadLine as exc:
                        stats.skip(lineno, str(exc))
                        continue
                    if type(obj) is dict and obj.get("type") == "header":
                        if not restart:
                            stats.ended_at_header = lineno
                            return
                        header = check_header(obj, f"{p} (line {lineno})")
                        n_layers, ended = len(header["layers"]), False
                        yield event("new-session", True)
                        yield header
                        continue
                    if ended:
                        continue
                    problem = check_record(obj, n_layers)
                    if problem is not None:
                        stats.skip(lineno, problem)
                        continue
                    stats.records += 1
                    yield obj
                    if obj["type"] == "footer":
                        stats.footer = obj
                        if not restart:
                            return
                        ended = True
            if stop is not None and stop.is_set():
                return
            if not restart:
                raise RecordingError(f"{p} was {changed} while it was being followed")
            if changed == "truncated":
                fh.seek(0)
                yield event("truncated", True)
                continue
            fh.close()
            if changed == "deleted":
                yield event("deleted", False)
            fh = None
            while fh is None:  # the same path again: a new file, from its start
                if stop is not None and stop.is_set():
                    return
                fh = open_file(poll_s)
            yield event("replaced", True)
    finally:
        if fh is not None:
            fh.close()
