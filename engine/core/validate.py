"""Reading one line of a recording strictly and checking each record against the header (design §4):
what the streaming reader (engine/core/recording.py) and the follower (engine/core/follow.py) trust.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

import msgspec

from llm_moments.engine.errors import MomentsError

SCHEMA = "moments/1"
SCHEMA_MAJOR = 1


class RecordingError(MomentsError):
    """A file that cannot be read as a recording (not JSON Lines, no header, newer schema)."""


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
    elif rtype == "ops":
        problem = _ops_problem(obj, n_layers)
        if problem:
            return problem
    return _fields_problem(obj)


MAX_FLOPS = 1e21   # one op's FLOPs in one step: a big prefill's matmuls pass 1e15 (MAX_NUMBER)


def _ops_problem(obj: dict[str, Any], n_layers: int) -> str | None:
    """An ops record (engine/core/ops.py): the step, a layer of the header, rows of name, calls, ms
    and, where the op has a FLOP formula, flops (a finite count ≥ 0; absent when unknown)."""
    for key in ("step", "layer"):
        problem = _num_problem(key, obj.get(key), required=True, hi=MAX_T_NS, integer=True)
        if problem:
            return problem
    if obj["layer"] >= n_layers:
        return f"layer {obj['layer']} is not one of the header's {n_layers} layers"
    rows = obj.get("ops")
    if type(rows) is not list:
        return "ops is missing" if rows is None else f"ops is {type(rows).__name__}, not a list"
    for row in rows:
        if type(row) is not dict:
            return f"an ops row is {type(row).__name__}, not a map"
        if type(row.get("name")) is not str:
            return "an ops row has no name"
        problem = (_num_problem("ops calls", row.get("calls"), required=True, integer=True)
                   or _num_problem("ops ms", row.get("ms"), required=True)
                   or _num_problem("ops flops", row.get("flops"), hi=MAX_FLOPS))
        if problem:
            return problem
    return None


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
