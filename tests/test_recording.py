"""Recordings: schema moments/1 written by a session, read back tolerantly, followed while growing."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import FakeClock, generate, ids, read_lines

from llm_moments import Monitor
from llm_moments.engine.core.follow import follow
from llm_moments.engine.core.recording import Recorder, RecordingError, check_writable, load
from llm_moments.engine.errors import MomentsError


@pytest.fixture(scope="module")
def session_file(tmp_path_factory, tiny_gpt2) -> Path:
    """A finished recording of a tiny GPT-2: two generate() calls, batch 2, fixed 1000 MHz clock."""
    path = tmp_path_factory.mktemp("rec") / "session.jsonl"
    with Monitor(tiny_gpt2, record=path, clock_source=FakeClock(1000.0), depth="sublayers",
                 run_info={"note": "test"}) as mon:
        generate(tiny_gpt2, ids(2, 5, vocab=64), 3)
        mon.note_text(["p1", "p2"], ["o1", "o2"])
        generate(tiny_gpt2, ids(2, 3, vocab=64), 2)
    return path


# -- what a session writes ------------------------------------------------------------------------


def test_every_line_is_one_typed_json_object(session_file):
    lines = session_file.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # ends with a newline: the last line is complete
    records = [json.loads(line) for line in lines[:-1]]
    assert all(isinstance(r, dict) and r.get("type") for r in records)
    assert records[0]["type"] == "header"
    assert records[-1]["type"] == "footer"
    assert [r["type"] for r in records].count("header") == 1
    assert {r["type"] for r in records} >= {"header", "step", "sample", "text", "footer"}


def test_header_fields(session_file):
    h = read_lines(session_file)[0]
    assert h["schema"] == "moments/1"
    m = h["model"]
    assert m["architecture"] == "GPT2LMHeadModel" and m["model_type"] == "gpt2"
    assert m["parameters"] > 0 and m["dtype"] == "float32" and m["generative"] is True
    assert "name" in m and "random_weights" in m
    d = h["device"]
    assert d["kind"] == "cpu"
    assert {"name", "driver", "torch", "transformers"} <= set(d)
    assert d["torch"] and d["transformers"]
    assert h["clock"]["source"] == "fake"
    assert h["depth"] == "sublayers"
    assert h["run"] == {"note": "test"}
    layers = h["layers"]
    assert layers[0] == {"name": "transformer.wte", "parent": None, "module": "Embedding"}
    assert {"name": "transformer.h.1.mlp", "parent": 7, "module": "GPT2MLP"} in layers
    for layer in layers:
        assert set(layer) >= {"name", "parent"}
        assert layer["parent"] is None or layers[layer["parent"]]["parent"] is None
    assert len({layer["name"] for layer in layers}) == len(layers)  # no repeated names


def test_step_fields_are_aligned_with_the_layers(session_file):
    rec = load(session_file)
    n = len(rec.header["layers"])
    assert [s["index"] for s in rec.steps] == [0, 1, 2, 3, 4]
    assert [s["kind"] for s in rec.steps] == ["prefill", "decode", "decode", "prefill", "decode"]
    assert [s["tokens"] for s in rec.steps] == [10, 2, 2, 6, 2]
    for s in rec.steps:
        assert {"index", "kind", "t_ns", "wall_ms", "tokens", "layer_ms", "layer_cycles", "clock_mhz"} <= set(s)
        assert len(s["layer_ms"]) == len(s["layer_cycles"]) == n
        assert isinstance(s["t_ns"], int) and s["t_ns"] >= 0
        assert s["clock_mhz"] == 1000.0
        assert "names" not in s and "layers" not in s  # names live in the header only
    assert [s["t_ns"] for s in rec.steps] == sorted(s["t_ns"] for s in rec.steps)


def test_samples_and_footer(session_file):
    rec = load(session_file)
    assert rec.samples
    assert all(isinstance(s["t_ns"], int) and s["clock_mhz"] == 1000.0 for s in rec.samples)
    assert rec.footer["steps"] == 5 and rec.footer["reason"] == "completed"
    assert rec.warnings == [] and not rec.truncated
    texts = [o for o in rec.others if o["type"] == "text"]
    assert texts == [{**texts[0], "prompts": ["p1", "p2"], "outputs": ["o1", "o2"], "after_step": 2}]


def test_layer_names_property(session_file):
    rec = load(session_file)
    assert rec.layer_names == [layer["name"] for layer in rec.header["layers"]]


# -- a tolerant reader -------------------------------------------------------------------------------


def test_a_last_line_cut_in_the_middle_keeps_every_step_before_it(session_file, tmp_path):
    lines = session_file.read_text(encoding="utf-8").splitlines(keepends=True)
    last_step = max(i for i, line in enumerate(lines) if '"type":"step"' in line)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("".join(lines[:last_step]) + lines[last_step][: len(lines[last_step]) // 2],
                   encoding="utf-8")
    rec = load(cut)
    assert [s["index"] for s in rec.steps] == [0, 1, 2, 3]
    assert rec.footer is None and rec.truncated
    assert any("cut off" in w for w in rec.warnings)
    assert any("no footer" in w for w in rec.warnings)


def test_a_killed_writer_leaves_a_file_that_loads(session_file, tmp_path):
    lines = session_file.read_text(encoding="utf-8").splitlines(keepends=True)
    killed = tmp_path / "killed.jsonl"
    killed.write_text("".join(lines[:-1]), encoding="utf-8")  # everything but the footer
    rec = load(killed)
    assert len(rec.steps) == 5 and rec.truncated
    assert rec.warnings == ["no footer: the session did not end cleanly (killed, or still being written)"]


def test_a_bad_line_in_the_middle_is_skipped_with_a_warning(session_file, tmp_path):
    lines = session_file.read_text(encoding="utf-8").splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "{not json\n" + "".join(lines[1:]), encoding="utf-8")
    rec = load(bad)
    assert len(rec.steps) == 5 and rec.footer is not None
    assert rec.warnings == ["skipped 1 bad line (line 2: not valid JSON: expecting property name enclosed "
                            "in double quotes, column 2)"]
    assert rec.skipped == 1


def test_a_minor_schema_version_loads(tmp_path):
    path = tmp_path / "minor.jsonl"
    path.write_text(json.dumps({"type": "header", "schema": "moments/1.4",
                                "layers": [{"name": "a", "parent": None}],
                                "new_field": 1}) + "\n", encoding="utf-8")
    assert load(path).header["new_field"] == 1


def test_a_newer_schema_is_refused_with_one_line(tmp_path):
    path = tmp_path / "v2.jsonl"
    path.write_text(json.dumps({"type": "header", "schema": "moments/2", "layers": []}) + "\n",
                    encoding="utf-8")
    with pytest.raises(RecordingError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert "moments/2" in message and "moments/1" in message and "upgrade" in message


@pytest.mark.parametrize("content, expected", [
    ("hello, this is a text file\nwith two lines\n", "is not a moments recording: line 1 is not JSON"),
    ('{"a": 1}\n{"type": "step"}\n', "is not a moments recording: its first line is not a header"),
    ("[1, 2, 3]\n", "its first line is not a header"),
    ('{"type": "header", "schema": "other/1", "layers": []}\n', "unknown schema 'other/1'"),
    ('{"type": "header", "layers": []}\n', "unknown schema ''"),
    ('{"type": "header", "schema": "moments/1"}\n', "its header has no layer list"),
    ("", "is empty: nothing was recorded"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01", "it is not text"),
])
def test_files_that_are_not_recordings(tmp_path, content, expected):
    path = tmp_path / "file.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(RecordingError) as info:
        load(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_directory_and_a_missing_file_are_not_recordings(tmp_path):
    with pytest.raises(RecordingError, match="is a directory, not a recording"):
        load(tmp_path)
    with pytest.raises(RecordingError, match="no such recording"):
        load(tmp_path / "missing.jsonl")
    assert issubclass(RecordingError, MomentsError)  # the CLI prints it as one line


# -- following a growing file -------------------------------------------------------------------------


HEADER = {"type": "header", "schema": "moments/1", "layers": [{"name": "a", "parent": None}]}


def _step(i):
    return {"type": "step", "index": i, "kind": "encode", "t_ns": i, "wall_ms": 1.0, "tokens": 1,
            "layer_ms": [0.5], "layer_cycles": [None], "clock_mhz": None}


def test_follow_yields_records_as_they_are_appended(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_text("", encoding="utf-8")  # the reader opens an empty file and waits

    def writer():
        time.sleep(0.05)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(HEADER) + "\n")
            fh.flush()
            time.sleep(0.05)
            line = json.dumps(_step(0)) + "\n"
            fh.write(line[:10])  # half a line: not yielded until its newline comes
            fh.flush()
            time.sleep(0.1)
            fh.write(line[10:])
            fh.write(json.dumps(_step(1)) + "\n")
            fh.flush()
            time.sleep(0.05)
            fh.write(json.dumps({"type": "footer", "steps": 2, "reason": "completed"}) + "\n")
            fh.write(json.dumps(_step(99)) + "\n")  # after the footer: never read
            fh.flush()

    thread = threading.Thread(target=writer)
    thread.start()
    got = list(follow(path, poll_s=0.01, idle_timeout_s=20))
    thread.join()
    assert [r["type"] for r in got] == ["header", "step", "step", "footer"]
    assert [r.get("index") for r in got[1:3]] == [0, 1]
    assert got[1] == _step(0)  # the line written in two halves comes out whole


def test_follow_starts_after_the_writer_has_begun(tmp_path):
    path = tmp_path / "late.jsonl"

    def writer():
        time.sleep(0.1)
        path.write_text(json.dumps(HEADER) + "\n" + json.dumps(_step(0)) + "\n"
                        + json.dumps({"type": "footer", "steps": 1, "reason": "interrupted"}) + "\n",
                        encoding="utf-8")

    thread = threading.Thread(target=writer)
    thread.start()
    got = list(follow(path, poll_s=0.01, wait_for_file_s=20, idle_timeout_s=20))
    thread.join()
    assert [r["type"] for r in got] == ["header", "step", "footer"]
    assert got[-1]["reason"] == "interrupted"


def test_follow_stops_when_asked_or_when_idle(tmp_path):
    path = tmp_path / "idle.jsonl"
    path.write_text(json.dumps(HEADER) + "\n" + json.dumps(_step(0)) + "\n", encoding="utf-8")
    got = list(follow(path, poll_s=0.01, idle_timeout_s=0.1))  # no footer: ends when idle
    assert [r["type"] for r in got] == ["header", "step"]

    stop = threading.Event()
    got = []
    for record in follow(path, poll_s=0.01, stop=stop):
        got.append(record)
        stop.set()
    assert [r["type"] for r in got] == ["header", "step"]


def test_follow_refuses_what_is_not_a_recording(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("hello\n", encoding="utf-8")
    with pytest.raises(RecordingError, match="line 1 is not JSON"):
        list(follow(text, poll_s=0.01, idle_timeout_s=1))
    newer = tmp_path / "v2.jsonl"
    newer.write_text(json.dumps({**HEADER, "schema": "moments/2"}) + "\n", encoding="utf-8")
    with pytest.raises(RecordingError, match="moments/2"):
        list(follow(newer, poll_s=0.01, idle_timeout_s=1))
    with pytest.raises(RecordingError, match="no such recording"):
        list(follow(tmp_path / "missing.jsonl", poll_s=0.01))


# -- the writer ----------------------------------------------------------------------------------------


def test_recorder_removes_its_file_when_no_header_was_written(tmp_path):
    path = tmp_path / "never.jsonl"
    rec = Recorder(path)
    assert path.exists()
    rec.close({"type": "footer", "steps": 0, "reason": "error"})
    assert not path.exists() and rec.closed


def test_recorder_flushes_each_step_and_writes_the_footer_once(tmp_path):
    path = tmp_path / "w.jsonl"
    rec = Recorder(path)
    rec.write(HEADER)
    rec.write(_step(0))
    # another reader sees the step at once, before the writer closes
    assert [r["type"] for r in read_lines(path)] == ["header", "step"]
    rec.close({"type": "footer", "steps": 1, "reason": "completed"})
    rec.close({"type": "footer", "steps": 1, "reason": "completed"})  # idempotent
    assert [r["type"] for r in read_lines(path)] == ["header", "step", "footer"]
    assert rec.steps_written == 1 and rec.header_written


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "ok.jsonl") == tmp_path / "ok.jsonl"
    assert not (tmp_path / "ok.jsonl").exists()  # checking creates nothing
    with pytest.raises(MomentsError, match="is a directory"):
        check_writable(tmp_path)
    with pytest.raises(MomentsError, match="does not exist"):
        check_writable(tmp_path / "no" / "such" / "x.jsonl")


# -- the writer under write errors (disk full, EIO, special files) ---------------------------------------


class FullDisk:
    """A binary file that takes ``room`` bytes, then refuses writes with ENOSPC (a partial write first,
    as a real file system does), and then takes ``after`` bytes again once cut back by truncate()."""

    def __init__(self, room: int, error: int = 28, after: int = 10_000):
        self.data, self.room, self.error, self.after = bytearray(), room, error, after
        self.pos, self.closed, self.full = 0, False, False

    def write(self, b) -> int:
        import errno

        b = bytes(b)
        free = (self.after if self.full else self.room) - len(self.data)
        if free <= 0:
            self.full = True
            raise OSError(self.error, errno.errorcode.get(self.error, "?"))
        self.data[self.pos:self.pos + min(len(b), free)] = b[:free]
        self.pos += min(len(b), free)
        return min(len(b), free)

    def truncate(self, n: int) -> None:
        del self.data[n:]

    def seek(self, n: int) -> None:
        self.pos = n

    def close(self) -> None:
        self.closed = True

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.data.decode().splitlines()]


def test_a_full_disk_stops_the_recording_after_its_last_complete_step(tmp_path):
    from llm_moments.engine.core.recording import RecordingLost

    header = json.dumps(HEADER, separators=(",", ":"))
    disk = FullDisk(room=len(header) + 1 + 3 * len(json.dumps(_step(0), separators=(",", ":"))) + 50)
    rec = Recorder(tmp_path / "r.jsonl", fh=disk)
    rec.write(HEADER)
    with pytest.raises(RecordingLost) as lost:
        for i in range(10):
            rec.write(_step(i))
    assert lost.value.steps == 3 and rec.steps_on_disk == 3
    assert str(lost.value) == f"recording stopped: disk full after 3 steps; they are safely in {tmp_path / 'r.jsonl'}"
    assert rec.closed and disk.closed and rec.lost == str(lost.value)
    # the torn fourth line is cut off; a footer says why the file ends here
    lines = disk.lines()
    assert [r["type"] for r in lines] == ["header", "step", "step", "step", "footer"]
    assert lines[-1] == {"type": "footer", "steps": 3, "reason": "error",
                         "error": "recording stopped: disk full"}
    rec.write(_step(11))  # later writes and the close are quiet no-ops: the session goes on
    rec.flush()
    rec.close({"type": "footer", "steps": 12, "reason": "completed"})
    assert disk.lines() == lines


@pytest.mark.parametrize("error, why", [(5, "input/output error"), (27, "file too large"), (122, "disk full")])
def test_every_write_error_is_said_once_in_words(tmp_path, error, why):
    from llm_moments.engine.core.recording import RecordingLost

    rec = Recorder(tmp_path / "r.jsonl", fh=FullDisk(room=0, error=error, after=0))
    with pytest.raises(RecordingLost, match=f"^recording stopped: {why}; nothing was recorded to "):
        rec.write(HEADER)


def test_samples_wait_for_the_next_flush_but_are_never_torn(tmp_path):
    from llm_moments.engine.core.recording import RecordingLost

    header = json.dumps(HEADER, separators=(",", ":"))
    disk = FullDisk(room=len(header) + 1 + 10)
    rec = Recorder(tmp_path / "r.jsonl", fh=disk)
    rec.write(HEADER)
    for t in range(20):
        rec.write({"type": "sample", "t_ns": t, "clock_mhz": 1000.0})  # kept in memory: no error yet
    assert disk.lines() == [HEADER]
    with pytest.raises(RecordingLost, match="after 0 steps"):
        rec.flush()
    assert [r["type"] for r in disk.lines()] == ["header", "footer"]


@pytest.mark.parametrize("target", ["/dev/full", "/dev/null", "/proc/version", "fifo"])
def test_a_recording_must_be_a_regular_file(tmp_path, target):
    from llm_moments.engine.core.recording import check_record_path

    if target == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    if not Path(target).exists():
        pytest.skip(f"{target} is not on this system")
    with pytest.raises(MomentsError, match=r"^cannot record to .*: not a regular file"):
        check_record_path(target)
    with pytest.raises(MomentsError, match="not a regular file"):
        Recorder(target)
    assert check_writable("/dev/null", what="write to") == Path("/dev/null")  # an output file may be one


def test_a_monitor_carries_on_when_its_recording_fails(tmp_path, tiny_gpt2, monkeypatch):
    """Disk full mid-session: one status line (with the count of steps on disk), the statistics and the
    listeners keep every step, and no thread dies."""
    import llm_moments.engine.session.monitor as monitor_mod

    died: list = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args))
    disk = FullDisk(room=9_000)
    monkeypatch.setattr(monitor_mod, "Recorder", lambda path, **kw: Recorder(path, fh=disk))
    seen: list[dict] = []
    with Monitor(tiny_gpt2, record=tmp_path / "r.jsonl", clock_source=FakeClock(1000.0),
                 listeners=[seen.append]) as mon:
        for _ in range(4):
            generate(tiny_gpt2, ids(1, 4, vocab=64), 4)
    assert died == []
    lost = [r for r in seen if r.get("recording_lost")]
    assert len(lost) == 1 and lost[0]["level"] == "error"
    on_disk = [r for r in disk.lines() if r["type"] == "step"]
    assert 0 < len(on_disk) < 16
    assert lost[0]["message"].startswith(f"recording stopped: disk full after {len(on_disk)} steps; ")
    assert mon.recording_lost == lost[0]["message"]
    assert mon.steps_recorded == 16 and sum(r["type"] == "step" for r in seen) == 16
    after_loss = seen[seen.index(lost[0]) + 1]
    assert {k: v for k, v in after_loss.items() if k != "t_ns"} == {"type": "recording", "path": None}
    assert disk.lines()[-1]["reason"] == "error"
    assert [s["index"] for s in on_disk] == list(range(len(on_disk)))
