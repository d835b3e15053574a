"""The UI in a real pseudo-terminal: a hang-up, a terminal lost without any signal, and SIGTERM each
end the UI and its engine within seconds, on the main screen and on a second screen, with the
recording closed by an ``interrupted`` footer.

The UI is the real one (``llm_moments.tui.cli._run_app`` with a LiveSource and the hang-up-safe
driver) and its engine a real child process speaking the stream protocol, but a small fake (below)
that needs no torch, so a test takes 1–4 s. The engine's own side of the protocol (quit with a
reason, end of stdin) is tested on ``llm_moments.engine.session.stream.serve`` at the end of this
file; the real engine child is tested in test_live.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals only")

# The engine child: a header and a step every 20 ms on stdout, like `python -m engine stream`; the
# "recording" is a file with the header and, on every controlled end, a footer with its reason.
FAKE_ENGINE = textwrap.dedent("""
    import json, signal, sys, threading, time
    sys.path.insert(0, sys.argv[2])
    from tui_fakes import make_header, make_step
    rec = open(sys.argv[1], "w")
    stop, reason = threading.Event(), ["completed"]
    def end(why):
        reason[0] = why
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda s, f: end("interrupted"))
    def control():
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("cmd") == "quit":
                return end(cmd.get("reason", "completed"))
        end("interrupted")  # end of stdin without a quit: the UI is gone
    threading.Thread(target=control, daemon=True).start()
    header = make_header(device="cpu")
    lost = len(sys.argv) > 3  # play a write error: the recording stops, the session goes on
    rec.write(json.dumps(header) + "\\n"); rec.flush()
    print(json.dumps(header), flush=True)
    i = 0
    while not stop.wait(0.02):
        try:
            print(json.dumps(make_step(i)), flush=True)
            if lost and i == 2:
                print(json.dumps({"type": "status", "level": "error", "recording_lost": True,
                                  "message": "recording stopped: disk full after 2 steps; they are safely in X"}),
                      flush=True)
        except BrokenPipeError:
            end("interrupted")
        i += 1
    rec.write(json.dumps({"type": "footer", "steps": i, "reason": reason[0]}) + "\\n")
    rec.close()
""")

# The UI: moments' own _run_app, with the fake engine as the LiveSource's child.
LAUNCHER = textwrap.dedent("""
    import argparse, sys
    from llm_moments.tui.cli import _run_app
    from llm_moments.tui.sources import LiveSource
    src = LiveSource(argparse.Namespace())
    src.argv = [sys.executable, "-c", *sys.argv[1:]]
    sys.exit(_run_app(src, None))
""")


class UI:
    """The UI on the slave side of a pty; the test holds the master (the 'terminal')."""

    def __init__(self, tmp_path: Path, controlling_tty: bool = True, lost: bool = False):
        self.rec = tmp_path / "rec.jsonl"
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 48, 160, 0, 0))

        def child_setup() -> None:  # runs after setsid(): the pty becomes our controlling terminal
            if controlling_tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        env = dict(os.environ, TERM="xterm-256color", COLUMNS="160", LINES="48")
        env.pop("TEXTUAL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, FAKE_ENGINE, str(self.rec), str(ROOT / "tests"),
             *(["lost"] if lost else [])],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=child_setup,
            env=env, cwd=str(tmp_path))
        os.close(slave)
        self.screen = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:  # the terminal must be read, or the UI blocks on a full pty
        while True:
            try:
                r, _, _ = select.select([self.master], [], [], 0.1)
                if r:
                    data = os.read(self.master, 65536)
                    if not data:
                        return
                    self.screen = (self.screen + data)[-200_000:]
            except OSError:
                return

    def wait_for(self, text: bytes, timeout: float = 20.0) -> None:  # start-up on a busy machine
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            assert time.monotonic() < deadline, f"{text!r} never shown; exit {self.proc.poll()}"
            time.sleep(0.05)

    def engine_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def press(self, key: bytes) -> None:
        os.write(self.master, key)

    def hang_up(self) -> None:
        os.close(self.master)  # what sshd and tmux do: the terminal is gone

    def footer(self) -> dict | None:
        lines = self.rec.read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        return last if last.get("type") == "footer" else None

    def kill(self) -> None:
        for pid in [self.proc.pid, *self.engine_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of the UI (the test is its parent) counts as gone
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "Z"


def _assert_all_end(ui: UI, pids: list[int], within_s: float = 6.0) -> float:
    t0 = time.monotonic()
    while ui.proc.poll() is None or not all(_gone(p) for p in pids):
        if time.monotonic() - t0 > within_s:
            ui_alive = ui.proc.poll() is None
            ui.kill()
            pytest.fail(f"{'the UI' if ui_alive else 'its engine'} still ran {within_s} s later", pytrace=False)
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture
def ui(tmp_path):
    made: list[UI] = []

    def make(**kwargs) -> UI:
        made.append(UI(tmp_path, **kwargs))
        return made[-1]

    yield make
    for u in made:
        if u.proc.poll() is None:
            u.kill()


SCREENS = {"main": b"", "help": b"?", "detail": b"\r"}
SHOWN = {"main": b"", "help": b"esc or ? to close", "detail": b"moment history"}


def _started(ui: UI, screen: str) -> list[int]:
    ui.wait_for(b"blocks.3")            # the engine's first steps are on the screen
    if SCREENS[screen]:
        ui.press(SCREENS[screen])
        ui.wait_for(SHOWN[screen])
    pids = ui.engine_pids()
    assert len(pids) == 1
    return pids


@pytest.mark.parametrize("screen", list(SCREENS))
def test_a_hang_up_ends_the_ui_and_its_engine_with_the_recording_closed(ui, screen):
    u = ui(controlling_tty=True)          # the kernel sends SIGHUP + SIGCONT, as tmux kill-session does
    pids = _started(u, screen)
    u.hang_up()
    took = _assert_all_end(u, [u.proc.pid, *pids])
    assert u.proc.returncode == 130
    assert u.footer() == {"type": "footer", "steps": u.footer()["steps"], "reason": "interrupted"}
    assert took < 6.0


@pytest.mark.parametrize("screen", ["main", "help"])
def test_a_terminal_lost_without_any_signal_is_noticed(ui, screen):
    u = ui(controlling_tty=False)         # not our controlling tty: no SIGHUP comes (setsid, nohup, …)
    pids = _started(u, screen)
    u.hang_up()
    _assert_all_end(u, [u.proc.pid, *pids])
    assert u.proc.returncode == 130
    assert u.footer()["reason"] == "interrupted"


@pytest.mark.parametrize("screen", ["main", "help"])
def test_sigterm_ends_the_session_on_any_screen(ui, screen):
    u = ui()
    pids = _started(u, screen)
    u.proc.send_signal(signal.SIGTERM)
    _assert_all_end(u, [u.proc.pid, *pids])
    assert u.proc.returncode == 130
    assert u.footer()["reason"] == "interrupted"
    u.wait_for(b"\x1b[?1049l", timeout=2)  # and the terminal is left on its main screen


@pytest.mark.parametrize("signals", [
    (signal.SIGINT,), (signal.SIGHUP,), (signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT),
    (signal.SIGHUP, signal.SIGTERM)], ids=lambda sigs: "+".join(s.name for s in sigs))
def test_any_signal_once_or_twice_20_ms_apart_ends_it_with_an_interrupted_footer(ui, signals):
    u = ui(controlling_tty=False)
    pids = _started(u, "main")
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.02)
        u.proc.send_signal(sig)
    _assert_all_end(u, [u.proc.pid, *pids])
    assert u.proc.returncode == 130
    assert u.footer()["reason"] == "interrupted"


def test_sigterm_after_a_hang_up_still_ends_it(ui):
    """SIGTERM while the hang-up is being handled (`timeout` sends one) changes nothing."""
    u = ui(controlling_tty=False)
    pids = _started(u, "help")
    u.hang_up()
    u.proc.send_signal(signal.SIGTERM)
    _assert_all_end(u, [u.proc.pid, *pids])
    assert u.footer()["reason"] == "interrupted"


def test_q_still_ends_with_a_completed_footer(ui):
    u = ui()
    pids = _started(u, "main")
    u.press(b"q")
    _assert_all_end(u, [u.proc.pid, *pids])
    assert u.proc.returncode == 0
    assert u.footer()["reason"] == "completed"


# -- the engine's side: engine.stream.serve, with the model and the run loop replaced --------------

class _FakeMonitor:
    def __init__(self):
        self.reason = None
        self.recorder = None
        self.recording_lost = None
        self.started = threading.Event()

    def start(self):
        self.started.set()
        return self

    def stop(self, reason, error=None):
        self.reason = reason


@pytest.fixture
def fake_serve(monkeypatch):
    import llm_moments.engine.session.runner as runner
    import llm_moments.engine.session.setup as setup

    monitor = _FakeMonitor()
    monkeypatch.setattr(setup, "prepare_session", lambda args: ([], None))
    monkeypatch.setattr(setup, "warm_up", lambda *a: None)
    monkeypatch.setattr(setup, "make_monitor", lambda *a, **kw: monitor)
    monkeypatch.setattr(runner, "stream", lambda *a, stop, **k: stop.wait(5))
    return monitor


@pytest.mark.parametrize("stdin, reason, code", [
    ('{"cmd": "quit"}\n', "completed", 0),
    ('{"cmd": "quit", "reason": "interrupted"}\n', "interrupted", 130),
    ("", "interrupted", 130),             # end of stdin without a quit: the UI is gone
])
def test_the_engine_says_why_it_stopped(fake_serve, stdin, reason, code, monkeypatch):
    import argparse

    from llm_moments.engine.session.stream import serve

    def lines():  # the UI's commands come once the session runs
        fake_serve.started.wait(5)
        yield from stdin.splitlines(keepends=True)

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    saved_out = os.dup(1)
    try:
        args = argparse.Namespace(model="fake", record=None, batch_size=1, max_new_tokens=1, steps=None)
        assert serve(args, stdin=lines()) == code
    finally:
        os.dup2(saved_out, 1)  # serve points fd 1 at stderr
        os.close(saved_out)
        for s, h in old.items():
            signal.signal(s, h)
    assert fake_serve.reason == reason


def test_a_lost_recording_is_said_after_the_screen_closes_and_exits_3(ui):
    u = ui(lost=True)
    pids = _started(u, "main")
    u.wait_for(b"recording stopped: disk full")  # in the status line while the session goes on
    u.press(b"q")
    _assert_all_end(u, [u.proc.pid, *pids])
    assert u.proc.returncode == 3
    u.wait_for(b"moments: recording stopped: disk full after 2 steps; they are safely in X", timeout=2)
