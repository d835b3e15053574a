"""``watch`` on a file that changes under it: truncated, replaced, deleted, or given a new session.

Each test has a real file written by a thread (or a child process) while a WatchSource follows it;
the UI's reducer folds what the source gives, and must end up with the new session only, the status
line saying what happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from tui_fakes import SUB_LAYERS, make_session

from llm_moments.engine.core.follow import follow
from llm_moments.engine.core.recording import RecordingError
from llm_moments.tui.sources import WatchSource
from llm_moments.tui.state import ViewState

POLL_S = 0.01


def lines_of(records) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


OLD = make_session(3, footer=False)                    # session A: 3 steps, still running
NEW = make_session(42, layers=SUB_LAYERS)              # session B: other layers, 42 steps, a footer
NEW[0]["model"]["name"] = "session-b"


class Watched:
    """A WatchSource over ``path`` and the state it feeds, drained the way the UI's timer does."""

    def __init__(self, path: Path):
        self.src = WatchSource(path, poll_s=POLL_S)
        self.state = ViewState(mode="watch")
        self.records: list[dict] = []

    def __enter__(self) -> Watched:
        self.src.start()
        return self

    def __exit__(self, *exc) -> None:
        self.src.stop()

    def pump(self) -> None:
        got = self.src.drain()
        self.records += got
        self.state.apply(got)

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            if predicate():
                return True
            time.sleep(POLL_S)
        self.pump()
        return predicate()

    def messages(self) -> list[str]:
        return [s.message for s in self.state.statuses]


def start_old_session(path: Path):
    """A writer that has written session A and keeps its file open (as a running Recorder does)."""
    fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - returned open: the test closes it, like a live writer
    fh.write(lines_of(OLD))
    fh.flush()
    return fh


def assert_only_the_new_session(w: Watched, event: str) -> None:
    assert w.wait(lambda: w.state.footer is not None and w.state.steps_total == 42), \
        (w.state.steps_total, w.messages())
    assert w.state.header["model"]["name"] == "session-b"
    assert w.state.stats.n_layers == len(SUB_LAYERS)
    kinds = [r["type"] for r in w.records]
    assert kinds.count("reset") == 1 and kinds.index("reset") < [i for i, k in enumerate(kinds) if k == "header"][-1]
    after = kinds[kinds.index("reset"):]
    assert after.count("step") == 42                        # nothing of session A after the reset
    assert any(event in m for m in w.messages()), w.messages()
    assert w.state.error is None


@pytest.mark.parametrize("pause", [True, False], ids=["noticed-while-idle", "rewritten-at-once"])
def test_truncation_restarts_from_the_new_sessions_header(tmp_path, pause):
    path = tmp_path / "run.jsonl"
    fh = start_old_session(path)
    with Watched(path) as w:
        assert w.wait(lambda: w.state.steps_total == 3)
        ino = os.stat(path).st_ino

        def writer():
            fh.seek(0)
            fh.truncate()                                   # the same file, cut (a Recorder reopening it)
            fh.flush()
            if pause:
                time.sleep(0.2)                             # the watcher sees it empty first
            for line in lines_of(NEW).splitlines(keepends=True):
                fh.write(line)
                fh.flush()
            fh.close()

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
        assert os.stat(path).st_ino == ino
        assert_only_the_new_session(w, "truncated")


def test_replacement_by_another_file_restarts_from_its_header(tmp_path):
    path = tmp_path / "run.jsonl"
    fh = start_old_session(path)
    with Watched(path) as w:
        assert w.wait(lambda: w.state.steps_total == 3)

        def writer():
            other = tmp_path / "other.jsonl"
            other.write_text(lines_of(NEW[:20]), encoding="utf-8")
            os.replace(other, path)                         # a new inode at the same path
            with open(path, "a", encoding="utf-8") as out:
                for line in lines_of(NEW[20:]).splitlines(keepends=True):
                    out.write(line)
                    out.flush()
                    time.sleep(0.001)
            fh.write(lines_of(make_session(5, start=3, header=False, footer=False)))  # the old writer goes on
            fh.close()

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join()
        assert_only_the_new_session(w, "replaced")


def test_deletion_is_said_and_nothing_more_is_read_from_the_deleted_file(tmp_path):
    path = tmp_path / "run.jsonl"
    fh = start_old_session(path)
    with Watched(path) as w:
        assert w.wait(lambda: w.state.steps_total == 3)
        os.unlink(path)
        assert w.wait(lambda: any("deleted" in m for m in w.messages()))
        assert w.src.note() == "file deleted — waiting for a new session"
        fh.write(lines_of(make_session(5, start=3, header=False, footer=False)))  # into the deleted file
        fh.flush()
        time.sleep(0.1)
        w.pump()
        assert w.state.steps_total == 3                     # the old session stays on screen, no more
        assert "reset" not in [r["type"] for r in w.records]
        fh.close()
        path.write_text(lines_of(NEW), encoding="utf-8")   # a new session appears at the path
        assert_only_the_new_session(w, "replaced")
        assert w.src.note() == "writer finished"


def test_a_second_header_appended_starts_a_new_session(tmp_path):
    path = tmp_path / "run.jsonl"
    fh = start_old_session(path)
    with Watched(path) as w:
        assert w.wait(lambda: w.state.steps_total == 3)
        fh.write(lines_of(NEW))
        fh.close()
        assert_only_the_new_session(w, "new session")


def test_a_writer_process_that_restarts_on_the_same_path(tmp_path):
    """A child process writes session A, then truncates and writes session B, as two headless runs would."""
    path = tmp_path / "run.jsonl"
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(lines_of(OLD), encoding="utf-8")
    b.write_text(lines_of(NEW), encoding="utf-8")
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "path, a, b, go = sys.argv[1:]\n"
        "fh = open(path, 'wb', buffering=0)\n"
        "fh.write(open(a, 'rb').read())\n"
        "while not os.path.exists(go): time.sleep(0.01)\n"
        "fh.seek(0); fh.truncate()\n"
        "for line in open(b, 'rb'): fh.write(line)\n"
        "fh.close()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(path), str(a), str(b), str(go)])
    try:
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with Watched(path) as w:
            assert w.wait(lambda: w.state.steps_total == 3, timeout=20)
            go.write_text("", encoding="utf-8")
            assert proc.wait(20) == 0
            assert_only_the_new_session(w, "truncated")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_lines_while_watching_are_skipped_and_said(tmp_path):
    path = tmp_path / "run.jsonl"
    fh = start_old_session(path)
    with Watched(path) as w:
        assert w.wait(lambda: w.state.steps_total == 3)
        fh.write('{"type":"step","index":3,"kind":"decode","t_ns":1,"layer_ms":[NaN]}\n{oops\n')
        fh.write(lines_of(make_session(2, start=3, header=False)))
        fh.close()
        assert w.wait(lambda: w.state.footer is not None)
        assert w.state.steps_total == 5
        assert any("skipped 2 bad lines" in m for m in w.messages()), w.messages()


def test_plain_follow_refuses_a_file_that_changes_under_it(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(lines_of(OLD), encoding="utf-8")
    got = []
    with pytest.raises(RecordingError, match="was truncated while it was being followed"):
        for record in follow(path, poll_s=POLL_S, idle_timeout_s=10):
            got.append(record)
            if len(got) == 4:
                path.write_text("", encoding="utf-8")
    assert len(got) == 7  # what was there: header, 3 steps, 3 samples
