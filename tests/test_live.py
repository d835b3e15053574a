"""The live path: the real engine child (``python -P -m llm_moments.engine stream``) driven through the
UI's LiveSource, without the screen. Record / stop-record / quit, the child killed, a broken pipe,
signals to the child, a write error in the child, and the run options reaching it from their one
definition. The UI's own side (hang-ups, signals to the UI, a lost terminal) is in test_tui_hangup.py.

Each test starts one child with torch and the tiny-gpt2 preset (about 5 s here); the tests wait on
conditions (records seen, steps in the file), never on fixed sleeps.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env

from llm_moments.engine.cli import build_parser
from llm_moments.engine.core.recording import load
from llm_moments.engine.session.setup import add_run_options
from llm_moments.engine.session.stream import to_argv
from llm_moments.tui.cli import _parser as ui_parser
from llm_moments.tui.sources import LiveSource

TINY = ["--model", "tiny-gpt2", "--no-calibrate", "--threads", "1", "--warmup", "0", "--max-new-tokens", "4"]


def live_args(*extra: str) -> argparse.Namespace:
    return ui_parser().parse_args(["run", *TINY, *extra])


class Live:
    """A LiveSource and everything it delivered so far."""

    def __init__(self, source: LiveSource):
        self.source, self.records = source, []

    def pump(self) -> list[dict]:
        self.records += self.source.drain()
        return self.records

    WAIT_S = 60.0

    def wait(self, what, timeout: float | None = None, why: str = "") -> list[dict]:
        deadline = time.monotonic() + (self.WAIT_S if timeout is None else timeout)
        while not what(self.pump()):
            assert time.monotonic() < deadline, f"{why or what} never came; exit {self.source.proc.poll()}; " \
                                                f"stderr: {''.join(self.source._stderr_tail)[-800:]}"
            time.sleep(0.02)
        return self.records

    def steps(self) -> list[int]:
        return [r["index"] for r in self.pump() if r.get("type") == "step"]

    def of_type(self, rtype: str) -> list[dict]:
        return [r for r in self.pump() if r.get("type") == rtype]


@pytest.fixture
def live(monkeypatch):
    for k, v in cli_env().items():
        monkeypatch.setenv(k, v)
    made: list[Live] = []

    def start(*extra: str, argv_prefix: list[str] | None = None) -> Live:
        src = LiveSource(live_args(*extra))
        if argv_prefix:
            src.argv = [*argv_prefix, *src.argv[4:]]  # python -P -m llm_moments.engine → a wrapper
        src.start()
        made.append(Live(src))
        return made[-1]

    yield start
    for lv in made:
        if lv.source.proc is not None and lv.source.proc.poll() is None:
            lv.source.proc.kill()
            lv.source.proc.wait()


def _n_steps(path: Path) -> int:
    try:
        return path.read_text(encoding="utf-8").count('"type":"step"')
    except FileNotFoundError:
        return 0


# -- commands ----------------------------------------------------------------------------------------


def test_record_stop_record_and_quit(live, tmp_path):
    from llm_moments.engine.errors import MomentsError

    lv = live()
    lv.wait(lambda rs: any(r.get("type") == "step" for r in rs), why="a step")
    for bad in ("/dev/full", str(tmp_path / "no" / "x.jsonl"), str(tmp_path)):  # refused at once
        with pytest.raises(MomentsError, match=r"^cannot record to "):
            lv.source.start_recording(bad)
    a = tmp_path / "a.jsonl"
    assert lv.source.start_recording(str(a)) == str(a)
    lv.wait(lambda rs: _n_steps(a) >= 3, why="3 steps in a.jsonl")
    lv.source.stop_recording()
    lv.wait(lambda rs: [r.get("path") for r in rs if r.get("type") == "recording"] == [str(a), None],
            why="the recording note and its end")
    first = len(lv.steps())
    lv.wait(lambda rs: len(lv.steps()) > first + 2, why="more steps after stop-record")
    lv.source.stop(timeout_s=30)
    assert lv.source.exit_code == 0
    rec = load(a)
    assert rec.warnings == [] and rec.footer["reason"] == "completed"
    idx = [s["index"] for s in rec.steps]
    assert idx == list(range(idx[0], idx[0] + len(idx)))  # every step while it recorded, none after
    assert rec.footer["steps"] == len(idx) and idx[-1] < max(lv.steps())
    assert lv.of_type("error") == []


def test_record_while_loading_is_refused_and_the_ui_is_told_no_file_is_open(live, tmp_path):
    """`r` while the model loads (a --compile warm-up takes minutes): a warning, and `recording: null`
    so the UI does not show REC for a file nobody writes."""
    path = tmp_path / "early.jsonl"
    lv = live()
    lv.wait(lambda rs: any(r.get("type") == "loading" for r in rs), why="the loading note")
    lv.source.start_recording(str(path))
    lv.wait(lambda rs: any(r.get("type") == "recording" and r.get("path") is None for r in rs),
            why="recording: null")
    assert any("not running yet" in str(r.get("message")) for r in lv.of_type("status"))
    lv.source.stop(timeout_s=30, interrupted=True)
    assert not path.exists()


def test_an_engine_still_loading_leaves_at_once_when_the_ui_goes(live, tmp_path):
    """A hang-up while the model loads: nothing is recorded yet, so the child does not finish loading."""
    path = tmp_path / "early.jsonl"
    lv = live("--record", str(path))
    lv.wait(lambda rs: any(r.get("type") == "loading" for r in rs), why="the loading note")
    t0 = time.monotonic()
    lv.source.stop(timeout_s=30, interrupted=True)
    assert lv.source.proc.returncode == 130 and time.monotonic() - t0 < 3
    assert not path.exists()


# -- the child dies, the UI goes away, signals --------------------------------------------------------


def test_a_killed_engine_is_said_in_the_status_and_its_recording_keeps_every_step(live, tmp_path):
    """SIGKILL leaves no footer: the UI never writes into the engine's file (it does not own it); the
    reader loads it with a warning, and every step the UI was shown is in it."""
    path = tmp_path / "k.jsonl"
    lv = live("--record", str(path))
    lv.wait(lambda rs: len(lv.steps()) >= 3, why="3 steps")
    lv.source.proc.send_signal(signal.SIGKILL)
    errors = lv.wait(lambda rs: any(r.get("type") == "error" for r in rs), why="an error record")
    message = next(r["message"] for r in errors if r.get("type") == "error")
    assert message.startswith("the engine process stopped: killed by SIGKILL; the recording ")
    assert f"{path} keeps every step up to here, without a footer" in message
    assert lv.source.exit_code == -signal.SIGKILL
    rec = load(path)
    assert rec.footer is None and any("no footer" in w for w in rec.warnings)
    shown = lv.steps()
    assert [s["index"] for s in rec.steps][:len(shown)] == shown  # flushed before the UI saw them
    lv.source.stop(timeout_s=1)  # a dead child: nothing to do, no error


def test_a_broken_pipe_ends_the_engine_with_an_interrupted_footer(live, tmp_path):
    """The UI is gone (its end of the pipe closed) but stdin stays open: the engine notices on its next
    write and ends the session itself."""
    path = tmp_path / "p.jsonl"
    lv = live("--record", str(path))
    lv.wait(lambda rs: _n_steps(path) >= 2, why="2 recorded steps")
    proc = lv.source.proc
    proc.stdout.close()  # our reader thread stops with it; the child's next write gets EPIPE
    assert proc.wait(30) == 130
    rec = load(path)
    assert rec.warnings == [] and rec.footer["reason"] == "interrupted" and rec.footer["steps"] == len(rec.steps)


@pytest.mark.parametrize("sigs", [(signal.SIGTERM,), (signal.SIGHUP,), (signal.SIGINT, signal.SIGINT)],
                         ids=lambda sigs: "+".join(s.name for s in sigs))
def test_a_signal_to_the_engine_leaves_an_interrupted_footer(live, tmp_path, sigs):
    path = tmp_path / "s.jsonl"
    lv = live("--record", str(path))
    lv.wait(lambda rs: _n_steps(path) >= 2, why="2 recorded steps")
    for i, sig in enumerate(sigs):
        if i:
            time.sleep(0.02)
        lv.source.proc.send_signal(sig)
    assert lv.source.proc.wait(30) == 130
    lv.wait(lambda rs: any(r.get("type") == "footer" for r in rs), timeout=5, why="the footer record")
    assert lv.of_type("error") == []  # an interrupted end is not an engine failure
    rec = load(path)
    assert rec.warnings == [] and rec.footer["reason"] == "interrupted"


def test_a_write_error_in_the_engine_stops_the_recording_not_the_session(live, tmp_path):
    """A file-size limit (EFBIG, as a full disk would give ENOSPC) in the child: one status line that
    says how many steps are on disk, the steps go on, the child exits 3 and the source says why."""
    path = tmp_path / "f.jsonl"
    wrapper = [sys.executable, "-P", "-c",
               "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (16000, 16000)); "
               "sys.argv[0] = 'moments'; runpy.run_module('llm_moments.engine', run_name='__main__')"]
    lv = live("--record", str(path), argv_prefix=wrapper)
    lv.wait(lambda rs: any(r.get("recording_lost") for r in rs), why="the recording_lost status")
    n = len(lv.steps())
    lv.wait(lambda rs: len(lv.steps()) > n + 2, why="steps after the loss")
    lv.source.stop(timeout_s=30)
    assert lv.source.exit_code == 3
    rec = load(path)
    # The footer goes in when the disk leaves room for it; either way the file ends on a whole step.
    assert (rec.footer is not None and rec.footer["reason"] == "error" and rec.warnings == []) or (
        rec.footer is None
        and rec.warnings == ["no footer: the session did not end cleanly (killed, or still being written)"])
    assert lv.source.recording_lost == (f"recording stopped: file too large after {len(rec.steps)} steps; "
                                        f"they are safely in {path}")
    assert [r.get("path") for r in lv.of_type("recording")][-1] is None  # the UI's indicator goes off
    assert lv.of_type("error") == []


# -- run options: one definition ------------------------------------------------------------------------


def _run_option_actions() -> list[argparse.Action]:
    probe = argparse.ArgumentParser(add_help=False)
    add_run_options(probe)
    return [a for a in probe._actions if a.option_strings]


def _other_value(action: argparse.Action) -> str | None:
    """A command-line value unlike the default, for each run option (None: a flag)."""
    if action.nargs == 0:
        return None
    if action.choices:
        return [c for c in action.choices if c != action.default][-1]
    if action.type is not None and action.type.__name__ in ("positive_int", "non_negative_int"):
        return "7"
    if action.type is not None and action.type.__name__ == "rate_hz":
        return "3.25"
    return "-odd value=with spaces.jsonl"  # a value that starts with - and holds = and spaces


def test_every_run_option_reaches_the_child_unchanged():
    """Every option of add_run_options, set away from its default on `moments run`, parses back from the
    child's argv to the same value: a new option cannot be dropped on the way."""
    argv = ["run"]
    for action in _run_option_actions():
        value = _other_value(action)
        argv += [action.option_strings[-1]] if value is None else [f"{action.option_strings[-1]}={value}"]
    given = ui_parser().parse_args(argv)
    child_argv = to_argv(given)
    assert child_argv[0] == "stream"
    got = build_parser()[0].parse_args(child_argv)
    dests = [a.dest for a in _run_option_actions()]
    assert len(dests) >= 16
    for dest in dests:
        assert getattr(got, dest) == getattr(given, dest), dest
        assert getattr(got, dest) != _run_option_actions()[dests.index(dest)].default, dest  # really moved
    # and with every default, nothing changes either
    defaults = ui_parser().parse_args(["run"])
    back = build_parser()[0].parse_args(to_argv(defaults))
    assert all(getattr(back, d) == getattr(defaults, d) for d in dests)
    assert LiveSource(given).argv[1:4] == ["-P", "-m", "llm_moments.engine"]


def test_a_run_option_the_child_cannot_be_given_fails_loudly(monkeypatch):
    import llm_moments.engine.session.setup as setup

    real = setup.add_run_options

    def with_a_list_option(p):
        real(p)
        p.add_argument("--tag", nargs="+")   # several words per flag: not carried (append is)

    monkeypatch.setattr(setup, "add_run_options", with_a_list_option)
    with pytest.raises(TypeError, match="--tag"):
        to_argv(argparse.Namespace(tag=["a"], model="x"))
