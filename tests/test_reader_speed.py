"""The reader's fast path and its careful path give one answer. Not a timed test.

core/recording.py reads a line with msgspec's JSON decoder first and json only for a line the fast one
refuses (to say why in our words), and checks records a batch at a time (typed fields with bounds,
``check_records``) falling back to ``check_record`` one by one; analysis/steptable.py converts a chunk
in one C call unless a row is odd. Here each fast path is held to the careful one: the same values (1
and 1.0 and -0.0 told apart), the same lines refused with the same reasons, the same counts and line
numbers, the same arrays. Speed itself is bench/memory.py's business.
"""

from __future__ import annotations

import copy
import json
import random
import struct

import numpy as np
import pytest
from test_malformed import BIG_INT, DEEP, base_lines, body_cases
from tui_fakes import make_session

from llm_moments.engine.analysis import scan as scan_mod
from llm_moments.engine.analysis.steptable import LAYER_FIELDS, StepTable, _convert, _float_row, _measured
from llm_moments.engine.core import recording, validate
from llm_moments.engine.core.recording import BadLine, check_record, check_records

N = 6
SEED = 8


def careful(line: bytes):
    try:
        return "ok", repr(validate._parse_careful(line))
    except BadLine as exc:
        return "bad", str(exc)


def fast(line: bytes):
    try:
        value, finite = validate._parse(line)
    except BadLine as exc:
        return "bad", str(exc)
    if finite:
        assert not validate._has_nonfinite(value), line[:80]
    return "ok", repr(value)


def tricky_lines() -> list[bytes]:
    rng = random.Random(SEED)
    lines = [b"1e400", b"-1e400", b"1e308", b"[1.7976931348623157e309]", b"123456789012345678901234567890",
             b"-9223372036854775809", b"18446744073709551616", b"9" * 4300, b"9" * 4301, BIG_INT.encode(),
             b"-" + BIG_INT.encode(), b"1" + b"0" * 310 + b".0", b"[" * 600 + b"]" * 600, DEEP.encode(),
             b'{"a":' * 5000, b'{"a":1,"b":2,"a":3}', b'"\\ud800"', b'"\\ud83d\\ude00"', b'"\\u0000"', b"NaN",
             b"[Infinity]", b"-Infinity", b"-0", b"-0.0", b"1E2", b' {"a":1} \r', b'{"a":1}\x00', b'"\xff"',
             b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"a\tb"', b"1.0e-400", b"[1,]", b"01", b"1.", b".5", b"-",
             b'{"a":1}{"b":2}', b"\xef\xbb\xbf{}", b"\x0c1", b"", b"  ", b"4.9e-324", b"2.4703282292062328e-324",
             b"[1e999999999999999999]", b"0." + b"0" * 400 + b"1", b"1" * 400 + b".5", b"true", b"null",
             b'{"type":"step","layer_ms":[NaN]}', b'{"x":' + b"9" * 5000 + b"}", b'"\x7f"', b"{'a':1}"]
    for i in range(3000):
        k = i % 3
        if k == 0:
            x = repr(struct.unpack("d", rng.getrandbits(64).to_bytes(8, "little"))[0])
        elif k == 1:
            x = f"{rng.random() * 10 ** rng.randint(-30, 30):.{rng.randint(1, 25)}g}"
        else:
            digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 40)))
            x = f"{rng.randint(0, 9)}.{digits}e{rng.randint(-330, 310)}"
        if "n" not in x:
            lines.append(f"[{x},{rng.randint(-2 ** 70, 2 ** 70)}]".encode())
    for _, data in body_cases(random.Random(SEED)):
        lines += data.split(b"\n")[:40]
    return lines


def test_the_fast_decoder_reads_every_line_as_json_does():
    for line in tricky_lines():
        assert fast(line) == careful(line), line[:120]


def test_parse_line_gives_the_careful_reasons():
    for line, why in ((b"NaN", "NaN is not a number JSON allows"), (b"[1e999]", "out of range"),
                      (DEEP.encode(), "nested too deep"), (BIG_INT.encode(), "4300 digits"),
                      (b"\xff", "not UTF-8 text"), (b"{bad", "not valid JSON")):
        with pytest.raises(BadLine, match=why):
            recording.parse_line(line)


# -- checks of a batch = checks one by one ----------------------------------------------------------------

def good_step(i: int = 3) -> dict:
    step = json.loads(json.dumps(make_session(8)[1 + 2 * i]))
    step.update(kv_len=100 + i, head_tokens=[1], unattributed_ms=0.25, layer_nested_calls=[0] * N,
                comm_ms=[0.0] * N, load_ms=[None] * N)
    return step


def good_sample() -> dict:
    return json.loads(json.dumps(make_session(8)[2]))


POOL = [None, True, False, 0, 1, -1, -0.0, 0.5, 2.5, 1e15, 1e15 + 0.125, 10 ** 15, 10 ** 15 + 1, -1e15,
        -(10 ** 15) - 1, 2 ** 53, 2 ** 53 + 1, 1e18, 10 ** 18, 10 ** 18 + 1, 1.5e18, 10 ** 30, 1e300, "x", "1.5", "",
        "decode", [], [1], [None], ["a"], [True], [-1], [[1]], {}, {"a": 1}, {"a": "x"}, {"a": None}, {"a": -5}]
EXTRA_KEYS = ["pipeline_ms", "comm_outside_ms", "devices", "layer_clock_mhz", "name", "message", "x_ms", "y_ns",
              "layer_foo_ms", "weird key", "", "sm_clock_mhz", "level", "rank"]


def variants(record: dict) -> list[dict]:
    """The record with each field (its own and some others) set to each value of POOL, removed,
    and, for a per-layer list, one element or the whole list set to each."""
    out = []
    for key in [*record, *EXTRA_KEYS]:
        for value in POOL:
            out.append({**record, key: copy.deepcopy(value)})
        out.append({k: v for k, v in record.items() if k != key})
        if type(record.get(key)) is list:
            for value in POOL:
                if type(value) not in (list, dict):
                    for at in (0, len(record[key]) - 1):
                        row = list(record[key])
                        if row:
                            row[at] = value
                            out.append({**record, key: row})
            out += [{**record, key: record[key] * 2}, {**record, key: record[key][:-1]}]
    return out


@pytest.mark.parametrize("kind", ["step", "sample"])
def test_a_batch_check_finds_every_bad_record_a_check_by_record_finds(kind):
    good = good_step() if kind == "step" else good_sample()
    for bad in variants(good):
        group = [copy.deepcopy(good) for _ in range(12)] + [bad] + [copy.deepcopy(good) for _ in range(4)]
        want = [check_record(r, N) for r in group]
        assert check_records(group, N, [True] * len(group)) == want, (bad, want[12])


def test_good_batches_take_the_fast_path(monkeypatch):
    """Otherwise the test above would compare the careful path with itself."""
    calls = []
    real = recording.check_record
    monkeypatch.setattr(validate, "check_record", lambda obj, n: calls.append(obj) or real(obj, n))
    steps = [good_step(i % 8) for i in range(40)]
    samples = [good_sample() for _ in range(20)]
    odd = [{**s, "comm_outside_ms": 0.5, "devices": {"cuda:0": {"clock_mhz": 1.0}}, "pipeline_ms": {"send": 1.5},
            "layer_clock_mhz": [1.0] * N, "name": "x"} for s in steps]
    for batch in (steps + samples, odd + samples, steps[::-1]):
        assert check_records(batch, N, [True] * len(batch)) == [None] * len(batch)
    assert calls == []
    # not fast-decoded (a NaN may hide in it), a footer, a status: one by one, as before
    other = [good_step(), {"type": "footer", "steps": 3}, {"type": "status", "t_ns": 1, "message": "m"}]
    assert check_records(other, N, [False, True, True]) == [None] * 3 and len(calls) == 3


def test_random_records_get_the_same_answers_in_batches_and_one_by_one():
    rng = random.Random(SEED)
    bases = [good_step(), good_sample(), {"type": "status", "t_ns": 5, "message": "m"}, {"type": "footer", "steps": 2}]
    for _ in range(150):
        group = []
        for _ in range(rng.randrange(1, 40)):
            r = copy.deepcopy(rng.choice(bases[:2] * 4 + bases[2:]))
            for _ in range(rng.choice([0, 0, 0, 1, 2])):
                key = rng.choice([*r, *EXTRA_KEYS])
                r[key] = copy.deepcopy(rng.choice(POOL))
            group.append(r)
        assert check_records(group, N, [True] * len(group)) == [check_record(r, N) for r in group]


# -- the streaming reader = the same reader one line at a time --------------------------------------------

def read_one_by_one(path):
    """The reader as it was before batches: one line parsed (json) and checked (check_record) at a time."""
    stats = recording.ReadStats()
    out = []
    with open(path, "rb") as fh:
        recording._read_line(fh)
        stats.lines = 1
        while True:
            got = recording._read_line(fh)
            if got is None:
                break
            stats.lines += 1
            raw, complete = got
            if raw is None:
                stats.skip(stats.lines, f"longer than {recording.MAX_LINE_BYTES >> 20} MiB")
                continue
            if not raw.strip():
                continue
            try:
                obj = validate._parse_careful(raw)
            except BadLine as exc:
                stats.cut_off = stats.cut_off or not complete
                stats.skip(stats.lines, str(exc) if complete else "cut off")
                continue
            problem = check_record(obj, N)
            if problem is None and obj["type"] == "header":
                stats.ended_at_header = stats.lines
                break
            if problem is not None:
                stats.cut_off = stats.cut_off or not complete
                stats.skip(stats.lines, problem)
                continue
            if obj["type"] == "footer":
                stats.footer = obj
            stats.records += 1
            out.append(obj)
    return out, stats


def long_file(rng: random.Random) -> bytes:
    """A few hundred steps and samples with bad lines of every kind strewn among them."""
    lines = base_lines()
    header, footer = lines[0], lines[-1]
    body = []
    steps = [v for v in variants(good_step()) if rng.random() < 0.08]
    samples = [v for v in variants(good_sample()) if rng.random() < 0.05]
    for i in range(600):
        step = good_step(i % 8)
        step["index"] = i
        body.append(json.dumps(step).encode() + b"\n")
        if i % 3 == 0:
            body.append(json.dumps(good_sample()).encode() + b"\n")
    for bad in steps + samples:
        body.insert(rng.randrange(len(body)), json.dumps(bad).encode() + b"\n")
    for junk in (b"NaN\n", b"\n", b"  \n", b'{"a":1e999}\n', DEEP.encode() + b"\n", BIG_INT.encode() + b"\n",
                 b"\xff\xfe\n", b'{"type":"status","t_ns":1,"message":"a"}\n'):
        body.insert(rng.randrange(len(body)), junk)
    return header + b"".join(body) + footer


@pytest.mark.parametrize("batch", [1, 3, 64, 256])
def test_the_reader_in_batches_reads_as_one_line_at_a_time(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(recording, "READ_BATCH", batch)
    rng = random.Random(SEED + batch)
    cases = [(name, data) for name, data in body_cases(rng)]
    whole = long_file(rng)
    cases += [("long", whole), ("long-cut", whole[: len(whole) - 40]),
              ("long-second-header", whole.replace(b"\n", b"\n" + base_lines()[0], 1))]
    mid = whole.index(b"\n", len(whole) // 2) + 1
    cases.append(("long-header-in-middle", whole[:mid] + base_lines()[0] + whole[mid:]))
    for n, (name, data) in enumerate(cases):
        path = tmp_path / f"{n}.jsonl"
        path.write_bytes(data)
        try:
            want, want_stats = read_one_by_one(path)
        except (BadLine, TypeError, KeyError, IndexError):  # a header the reader refuses: not this test's
            continue
        try:
            stats = recording.ReadStats()
            got = list(recording.RecordReader(path, stats))
        except recording.RecordingError:
            continue
        assert [repr(r) for r in got] == [repr(r) for r in want], name
        assert stats == want_stats, name
        assert stats.warnings() == want_stats.warnings(), name


# -- records → arrays: the fast conversion = row by row ---------------------------------------------------

def rows_as_before(steps: list[dict], key: str) -> np.ndarray:
    """The conversion as it was: odd rows → None rows, one np.array, row by row if that fails."""
    rows = [s.get(key) for s in steps]
    rows = [r if type(r) in (list, tuple) and len(r) == N else (None,) * N for r in rows]
    try:
        arr = np.array(rows, dtype=np.float64).reshape(len(steps), N)
    except (TypeError, ValueError, OverflowError):
        arr = np.array([_float_row(r, N) for r in rows], dtype=np.float64).reshape(len(steps), N)
    return _measured(arr)


def test_a_chunk_converts_as_before():
    rng = random.Random(SEED)
    cells = [0.5, 2, 0, None, -1.0, 1e300, 10 ** 400, True, 7, "1.5", "x", 2 ** 70]
    for _ in range(60):
        steps = []
        for i in range(rng.randrange(1, 30)):
            s = good_step(i % 8)
            for key in LAYER_FIELDS.values():
                pick = rng.random()
                if pick < 0.1:
                    s[key] = [rng.choice(cells) for _ in range(N)]
                elif pick < 0.15:
                    s.pop(key, None)
                elif pick < 0.18:
                    s[key] = [1.0] * (N + 1)
                elif pick < 0.2:
                    s[key] = [[1.0]] * N
                elif pick < 0.22:
                    s[key] = (1.0,) * N
            if rng.random() < 0.1:
                s["kind"] = rng.choice(["warmup", "", None, 5, ["decode"]])
            steps.append(s)
        cols = _convert(steps, N)
        for name, key in LAYER_FIELDS.items():
            np.testing.assert_array_equal(cols[name], rows_as_before(steps, key), err_msg=name)
        assert list(cols["kind"]) == [str(s.get("kind") or "?")[:8] for s in steps]


def test_step_chunks_convert_early_and_keep_one_row_per_record(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_mod, "CONVERT", 3)
    rec = make_session(50)
    rec[7]["layer_ms"] = [1.0] * (N + 2)           # dropped, counted
    rec[9]["layer_ms"] = "abcdef"                  # a text of the right length: dropped too
    whole = StepTable.from_steps(rec[0], [r for r in rec if r["type"] == "step"])
    sc = scan_mod.Scan(tmp_path, rec[0], _rec=recording.Recording(tmp_path, rec[0], steps=[r for r in rec if
                                                                                         r["type"] == "step"]))
    chunks = list(scan_mod.step_chunks(sc, size=8))
    assert sum(t.dropped for _, t in chunks) == 2 and sum(len(t) for _, t in chunks) == len(whole) == 48
    for steps, table in chunks:
        assert len(steps) == len(table) and [s["index"] for s in steps] == list(table.index)
    for name in ("ms", "cycles", "wall_ms", "positions", "context"):
        got = np.concatenate([t.column(name) for _, t in chunks])
        np.testing.assert_array_equal(got, whole.column(name), err_msg=name)
