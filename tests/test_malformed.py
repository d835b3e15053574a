"""Malformed recordings, generated here (seeded; nothing binary is committed), through every command.

Every command (report, export, diff, replay) must end with an int exit code and either a valid output
or one clear line on stderr, never a traceback and never an internal error; a bad line anywhere is
skipped and counted while the rest loads; a bad header is one line.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from tui_fakes import make_session

from llm_moments.engine import cli as engine_cli
from llm_moments.engine.analysis.steptable import StepTable
from llm_moments.engine.core import recording
from llm_moments.engine.core.recording import RecordingError, check_record, iter_records, load, parse_line, read_header
from llm_moments.tui import cli as tui_cli
from llm_moments.tui.sources import ReplaySource
from llm_moments.tui.state import ViewState

SEED = 20240608

ROOF = {"peak_flops": 1.0e15, "peak_bytes_per_s": 4.8e12, "source": "datasheet"}


def base_records() -> list[dict]:
    records = make_session(6)
    header = records[0]
    header["roof"] = dict(ROOF)
    header["work"] = {"layers": [[1.0e6, 10.0, 1.0e6, 100.0, 10.0, 0, -1, -1] for _ in header["layers"]]}
    records.insert(5, {"type": "status", "t_ns": 120_000_000, "level": "warning", "message": "a note"})
    return records


def dumps(record) -> str:
    return json.dumps(record, separators=(",", ":"))


def base_lines() -> list[bytes]:
    return [(dumps(r) + "\n").encode() for r in base_records()]


N_LAYERS = len(base_records()[0]["layers"])
BIG_INT = "9" * 5000          # more than Python's 4300-digit limit
DEEP = "[" * 100_000          # deeper than json's recursion limit

# -- what goes wrong inside one record: (field, value) ---------------------------------------------------

BAD_VALUES = ["x", [1], {"a": 1}, True, 10 ** 30, -5]
STEP_FIELDS = ["index", "kind", "t_ns", "wall_ms", "tokens", "clock_mhz", "batch", "layer_ms", "layer_cycles",
               "throttle_reasons", "hooks_fired", "layer_start_ms"]
RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", BIG_INT, "-" + BIG_INT]


def body_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    """(name, file) whose header is fine and whose bad lines must be skipped, the rest loaded."""
    lines = base_lines()
    step_at = [i for i, line in enumerate(lines) if b'"type":"step"' in line]
    sample_at = [i for i, line in enumerate(lines) if b'"type":"sample"' in line]
    records = base_records()
    out: list[tuple[str, bytes]] = []

    def with_line(i: int, new: bytes, name: str) -> None:
        out.append((name, b"".join(lines[:i] + [new] + lines[i + 1:])))

    for field in STEP_FIELDS:
        value = rng.choice([v for v in BAD_VALUES if not (field == "hooks_fired" and v is True)])
        i = rng.choice(step_at[1:])
        with_line(i, (dumps({**records[i], field: value}) + "\n").encode(), f"step-{field}-{value!r}"[:60])
    for raw in RAW_NUMBERS:
        i = rng.choice(step_at)
        text = lines[i].decode()
        where = rng.choice(["layer_ms", "wall_ms", "t_ns"])
        new = re.sub(rf'"{where}":(\[)?[-0-9.e]+',
                     lambda m, where=where, raw=raw: f'"{where}":{m.group(1) or ""}{raw}', text, count=1)
        with_line(i, new.encode(), f"step-{where}-{raw[:12]}")
    for length in (0, N_LAYERS - 1, N_LAYERS + 1):
        i = rng.choice(step_at)
        ms = [1.0] * length
        with_line(i, (dumps({**records[i], "layer_ms": ms}) + "\n").encode(), f"layer_ms-length-{length}")
    for value in ([[1.0]] * N_LAYERS, ["1.0"] * N_LAYERS, [-1.0] * N_LAYERS, [10 ** 30] * N_LAYERS):
        i = rng.choice(step_at)
        with_line(i, (dumps({**records[i], "layer_ms": value}) + "\n").encode(), f"layer_ms-{value[0]!r}")
    i = rng.choice(step_at)
    with_line(i, (dumps({**records[i], "layer_cycles": [1] * (N_LAYERS + 3)}) + "\n").encode(), "cycles-length")
    i = rng.choice(step_at)
    with_line(i, (dumps({**records[i], "kind": "warmup"}) + "\n").encode(), "step-kind-unknown")
    i = rng.choice(step_at)
    with_line(i, (dumps({**records[i], "index": 2.5}) + "\n").encode(), "step-index-float")
    for field, value in (("sm_clock_mhz", "fast"), ("t_ns", "x"), ("t_ns", None), ("throttle_reasons", 5),
                         ("power_w", [1, 2]), ("t_ns", -1)):
        i = rng.choice(sample_at)
        with_line(i, (dumps({**records[i], field: value}) + "\n").encode(), f"sample-{field}-{value!r}")
    i = rng.choice(sample_at)
    with_line(i, lines[i].replace(b'"power_w":312.5', b'"power_w":NaN'), "sample-NaN")
    status_at = next(i for i, r in enumerate(records) if r["type"] == "status")
    with_line(status_at, b'{"type":"status","t_ns":1,"level":"error","message":{"a":1}}\n', "status-message-dict")
    with_line(status_at, b'{"type":"status","t_ns":"soon","message":"x"}\n', "status-t_ns-text")
    with_line(len(lines) - 1, b'{"type":"footer","steps":"many","reason":5}\n', "footer-bad")
    for junk in (b"[]", b"1", b'"s"', b"null", b"true", b'{"no":"type"}', b'{"type":5}', b"   ", b"\t"):
        with_line(rng.choice(step_at), junk + b"\n", f"junk-{junk.decode()!r}")
    with_line(rng.choice(step_at), DEEP.encode() + b"\n", "deep-nesting-middle")
    with_line(rng.choice(step_at), ('{"a":' * 5000).encode() + b"\n", "deep-objects-middle")
    with_line(rng.choice(step_at), BIG_INT.encode() + b"\n", "5000-digits-middle")
    with_line(rng.choice(step_at), bytes(rng.randrange(256) for _ in range(300)).replace(b"\n", b"") + b"\n",
              "binary-garbage-line")
    i = rng.choice(step_at)
    with_line(i, lines[i].replace(b'"decode"', b'"dec\xff\xfeode"').replace(b'"prefill"', b'"pre\xc3fill"'),
              "utf8-error-line")
    with_line(rng.choice(step_at[1:]), lines[0], "second-header")
    out.append(("crlf", b"".join(line.replace(b"\n", b"\r\n") for line in lines)))
    out.append(("blank-lines", b"\n".join(lines)))
    # a cut-off last line of each kind of trouble: the rest is kept
    for tail, name in ((DEEP.encode(), "cut-deep"), (BIG_INT.encode(), "cut-digits"),
                       (b'{"type":"step","layer_ms":[NaN', "cut-nan"), (b"\xff\xfe\x00", "cut-binary")):
        out.append((name, b"".join(lines[:-1]) + tail))
    whole = b"".join(lines)
    for _ in range(6):  # cut anywhere after the header
        out.append(("cut-random", whole[:rng.randrange(len(lines[0]) + 1, len(whole))]))
    many = list(lines)  # bad lines everywhere, not only at the end
    for i in sorted(rng.sample(range(1, len(lines) - 1), 6), reverse=True):
        many.insert(i, rng.choice([b"{bad\n", b"NaN\n", DEEP.encode()[:3000] + b"\n", b'{"type":"step"}\n']))
    out.append(("many-bad-lines", b"".join(many)))
    return out


def header_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    """(name, file) whose header is unusable: one line, whatever the command."""
    lines = base_lines()
    header = base_records()[0]
    rest = b"".join(lines[1:])

    def with_header(h, name: str) -> tuple[str, bytes]:
        return name, (dumps(h) + "\n").encode() + rest

    layers = header["layers"]
    return [
        ("empty", b""),
        ("only-newlines", b"\n\n\n"),
        ("binary-file", bytes(rng.randrange(256) for _ in range(2000))),
        ("header-not-first", lines[1] + lines[0] + rest),
        ("header-cut-off", lines[0][: len(lines[0]) // 2]),
        ("header-utf8-error", lines[0].replace(b"tiny-gpt2", b"tiny\xff\xfegpt2") + rest),
        ("header-deep", DEEP.encode() + b"\n" + rest),
        ("header-digits", BIG_INT.encode() + b"\n" + rest),
        ("header-nan", lines[0].replace(b'"sm_clock_max_mhz":1980.0', b'"sm_clock_max_mhz":NaN') + rest),
        ("header-list", b"[1,2]\n" + rest),
        with_header({**header, "schema": "moments/2"}, "schema-2"),
        with_header({**header, "schema": "moments/0"}, "schema-0"),
        with_header({**header, "schema": "moments/x"}, "schema-x"),
        with_header({**header, "schema": 5}, "schema-int"),
        with_header({**header, "schema": "moments/" + "9" * 400}, "schema-huge"),
        with_header({**header, "layers": "blocks"}, "layers-text"),
        with_header({**header, "layers": []}, "layers-empty"),
        with_header({**header, "layers": [5] + layers[1:]}, "layer-not-object"),
        with_header({**header, "layers": [{"name": 5}] + layers[1:]}, "layer-name-int"),
        with_header({**header, "layers": [{"name": "a", "parent": 99}] + layers[1:]}, "parent-out-of-range"),
        with_header({**header, "layers": [{"name": "a", "parent": 1}, {"name": "b", "parent": 0}] + layers[2:]},
                    "parent-cycle"),
        with_header({**header, "model": "gpt2"}, "model-text"),
        with_header({**header, "clock": ["nvml"]}, "clock-list"),
        with_header({**header, "clock": {**header["clock"], "sm_clock_max_mhz": "fast"}}, "clock-mhz-text"),
        with_header({**header, "roof": {**ROOF, "peak_flops": "lots"}}, "roof-text"),
        with_header({**header, "work": {"layers": [[1, 2, 3]]}}, "work-short"),
        with_header({**header, "work": {"layers": [[1.0, 0, 0, 0, 0, 0, 10 ** 12, -1]] * N_LAYERS}}, "work-head-huge"),
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, list[tuple[str, Path]]]:
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("malformed")
    out: dict[str, list[tuple[str, Path]]] = {}
    for kind, cases in (("body", body_cases(rng)), ("header", header_cases(rng))):
        out[kind] = []
        for n, (name, data) in enumerate(cases):
            path = root / f"{kind}-{n:02d}.jsonl"
            path.write_bytes(data)
            out[kind].append((name, path))
    good = root / "good.jsonl"
    good.write_bytes(b"".join(base_lines()))
    out["good"] = [("good", good)]
    return out


QUIET = {"blank-lines", "crlf", "junk-'   '", "junk-'\\t'"}  # blank lines are not faults: no warning


def strict_json(text: str):
    def no_constants(name):
        raise AssertionError(f"{name} in an export: not valid JSON")
    return json.loads(text, parse_constant=no_constants)


def run_cli(main, argv, capsys) -> tuple[int, str, str]:
    rc = main(argv)  # never raises: that is the point
    out, err = capsys.readouterr()
    assert isinstance(rc, int) and not isinstance(rc, bool), (argv, rc)
    assert "Traceback" not in err and "MOMENTS_DEBUG" not in err, (argv, err)
    other = [line for line in err.splitlines() if not line.startswith(("moments: warning:", "wrote "))]
    if rc != 0:
        assert len(other) == 1 and other[0].startswith("moments: error: "), (argv, err)
    else:
        assert other == [], (argv, err)
    for line in err.splitlines():
        assert len(line) < 2000, (argv, line[:200])
    return rc, out, err


def test_every_command_on_every_malformed_file(files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MOMENTS_DEBUG", raising=False)
    good = files["good"][0][1]
    for kind in ("body", "header"):
        for n, (name, path) in enumerate(files[kind]):
            f = str(path)
            rc, _out, err = run_cli(engine_cli.main, ["report", f], capsys)
            if kind == "header":
                assert rc == 2, (name, err)
                assert str(path) in err, (name, err)
            elif not name.startswith("cut-random"):
                assert rc == 0, (name, err)  # a body fault never makes the file unreadable
                assert "moments: warning:" in err or name in QUIET, (name, err)
            if n % 2 == 0:
                rc_j, out_j, _ = run_cli(engine_cli.main, ["report", f, "--format", "json"], capsys)
                if rc_j == 0:
                    strict_json(out_j)
            for fmt in ("chrome", "json", "csv"):
                target = tmp_path / f"{path.stem}.{fmt}"
                rc_e, _, _ = run_cli(engine_cli.main, ["export", f, "--format", fmt, "-o", str(target)], capsys)
                assert rc_e == rc or fmt == "csv", (name, fmt)
                if rc_e == 0 and fmt != "csv":
                    strict_json(target.read_text(encoding="utf-8"))
            if n % 3 == 0:  # a diff bootstraps: a third of the files, each way in turn (time)
                rc_d, _, _ = run_cli(engine_cli.main, ["diff", f, str(good)], capsys)
                assert rc_d in (0, 2)
            elif n % 3 == 1:
                rc_d, out_d, _ = run_cli(tui_cli.main, ["diff", str(good), f, "--format", "json"], capsys)
                assert rc_d in (0, 2)
                if rc_d == 0:
                    strict_json(out_d)


def test_html_reports_of_malformed_files(files, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MOMENTS_DEBUG", raising=False)
    for name, path in files["body"][::4] + files["header"][::6]:
        out = tmp_path / f"{path.stem}.html"
        rc, _, err = run_cli(engine_cli.main, ["report", str(path), "--format", "html", "-o", str(out)], capsys)
        assert rc in (0, 2), (name, err)


def test_replay_of_every_malformed_file_feeds_the_ui_only_valid_records(files):
    """ReplaySource + the UI's reducer and every view it draws from, over every file (no screen)."""
    for kind in ("body", "header"):
        for name, path in files[kind]:
            try:
                src = ReplaySource(path, speed=1000.0, clock=lambda: 0.0)
            except RecordingError as exc:
                assert kind == "header" or name == "cut-random", (name, exc)
                assert "\n" not in str(exc) and str(path) in str(exc)
                continue
            assert kind == "body", name
            n = len(src.rec.header["layers"])
            state = ViewState(mode="replay")
            src.start()
            src.seek_to_step(10 ** 9)  # to the end
            records = src.drain()
            for record in records:  # the reader let through nothing a check would refuse
                if record["type"] in ("step", "sample", "footer"):
                    assert check_record(record, n) is None, (name, record)
            state.apply(records)
            state.layer_view()
            state.step_percentiles()
            state.rates()
            state.step_distribution()
            state.heatmap(20)
            state.clock_history()
            if n and state.steps_total:
                state.layer_detail(0)
            src.seek_to_step(0)
            state.apply(src.drain())


def test_replay_app_survives_malformed_files(files):
    """The real app under a pilot, over files the reader had to clean up (a few: each run takes time)."""
    from tui_fakes import run, settle

    from llm_moments.tui.app import MomentsApp

    picked = [(n, p) for n, p in files["body"] if n in ("many-bad-lines", "second-header")]
    picked += [(n, p) for n, p in files["body"] if n.startswith("step-") and n.endswith(("NaN", "Infinity"))][:1]
    assert len(picked) == 3

    async def body():
        for name, path in picked:
            src = ReplaySource(path, speed=1000.0)
            app = MomentsApp(src, clock=lambda: 0.0)
            async with app.run_test(size=(100, 30)) as pilot:
                await settle(pilot, app, frames=2)
                await pilot.press("G")
                await settle(pilot, app, frames=2)
                await pilot.press("enter")
                await settle(pilot, app)
                assert app.state.error is None, name
            assert app.return_code in (0, None), name

    run(body())


@pytest.mark.parametrize("speed", ["nan", "inf", "-inf", "1e308", "0", "-1", "1001"])
def test_replay_refuses_a_bad_speed_in_one_line(files, capsys, speed):
    rc = tui_cli.main(["replay", str(files["good"][0][1]), f"--speed={speed}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--speed must be a number more than 0 and at most 1000" in err


def test_replay_of_a_file_with_no_header_is_one_line(files, capsys):
    for name, path in files["header"][:6]:
        rc = tui_cli.main(["replay", str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("moments: error: "), (name, err)


# -- the reader's rules, one by one --------------------------------------------------------------------------


def test_a_bad_line_anywhere_is_skipped_and_counted_with_its_line_number(files):
    path = dict(files["body"])["many-bad-lines"]
    rec = load(path)
    assert rec.skipped == 6
    assert len(rec.steps) == 6 and rec.footer is not None
    warning = rec.warnings[0]
    assert warning.startswith("skipped 6 bad lines (line ") and "and 1 more" in warning
    assert len(re.findall(r"line \d+: ", warning)) == recording.MAX_PROBLEMS


def test_a_cut_off_last_line_of_deep_brackets_or_huge_digits_keeps_the_rest(files):
    for name in ("cut-deep", "cut-digits", "cut-nan", "cut-binary"):
        rec = load(dict(files["body"])[name])
        assert len(rec.steps) == 6, name
        assert any("is cut off" in w for w in rec.warnings), (name, rec.warnings)


@pytest.mark.parametrize("text, why", [
    ("NaN", "NaN is not a number JSON allows"),
    ('{"a":-Infinity}', "-Infinity is not a number JSON allows"),
    ("[1e999]", "out of range"),
    (BIG_INT, "not a usable JSON value"),
    (DEEP, "nested too deep"),
    (b"\xff", "not UTF-8 text"),
    ("{x", "not valid JSON"),
])
def test_parse_line_says_what_is_wrong(text, why):
    with pytest.raises(recording.BadLine, match=re.escape(why)):
        parse_line(text)


def test_step_records_are_checked_against_the_header():
    step = base_records()[1]
    assert check_record(step, N_LAYERS) is None
    assert "has 5 values, the header has 6 layers" in check_record({**step, "layer_ms": [1.0] * 5}, N_LAYERS)
    assert "negative" in check_record({**step, "wall_ms": -1.0}, N_LAYERS)
    assert "negative" in check_record({**step, "layer_ms": [-1.0] * N_LAYERS}, N_LAYERS)
    assert "not one of prefill" in check_record({**step, "kind": "warmup"}, N_LAYERS)
    assert "index is float" in check_record({**step, "index": 1.0}, N_LAYERS)
    assert "out of range" in check_record({**step, "layer_ms": [1e30] * N_LAYERS}, N_LAYERS)
    assert "holds a str" in check_record({**step, "layer_cycles": ["1"] * N_LAYERS}, N_LAYERS)
    assert "t_ns is missing" in check_record({k: v for k, v in step.items() if k != "t_ns"}, N_LAYERS)
    assert check_record({"type": "something-new", "x": [1]}, N_LAYERS) is None  # forward compatible


def test_streaming_reader_api(files):
    path = dict(files["body"])["many-bad-lines"]
    header = read_header(path)
    assert header["type"] == "header" and len(header["layers"]) == N_LAYERS
    stats = recording.ReadStats()
    seen = []
    for record in iter_records(path, stats):
        seen.append((record["type"], stats.skipped))  # a running count
    assert [t for t, _ in seen].count("step") == 6 and seen[-1][0] == "footer"
    assert seen[0][1] < stats.skipped == 6
    assert stats.footer is not None and stats.records == len(seen)
    assert stats.warnings() == load(path).warnings
    with pytest.raises(RecordingError, match="is empty"):
        read_header(dict(files["header"])["empty"])


def test_an_overlong_line_is_skipped_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(recording, "MAX_LINE_BYTES", 2000)
    lines = base_lines()
    path = tmp_path / "long.jsonl"
    path.write_bytes(lines[0] + b'{"type":"text","x":"' + b"a" * 10_000 + b'"}\n' + b"".join(lines[1:]))
    rec = load(path)
    assert rec.skipped == 1 and len(rec.steps) == 6 and "line 2: longer than" in rec.warnings[0]


def test_the_step_table_never_takes_a_bad_value():
    """Records that never went through the reader (a live source, a test) still convert safely."""
    header = base_records()[0]
    good = base_records()[1]
    bad = [{**good, "layer_cycles": ["x"] * N_LAYERS, "wall_ms": "slow", "tokens": 10 ** 30,
            "clock_mhz": float("inf"), "throttle_reasons": 5},
           {**good, "layer_ms": [float("nan"), -1.0, 10 ** 400, 1.0, None, float("inf")]},
           {**good, "layer_ms": 5}, {**good, "layer_ms": [[1.0]] * N_LAYERS}]
    table = StepTable.from_steps(header, [good, *bad])
    assert len(table) == 4 and table.dropped == 1
    ms = table.column("ms")
    assert (ms[~(ms != ms)] >= 0).all() and not (ms == float("inf")).any()
    assert table.column("wall_ms")[1] != table.column("wall_ms")[1]   # "slow" → NaN
    assert table.column("tokens")[1] == 0
