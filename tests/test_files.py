"""Files are written safely (issue #8, item 6): nothing existing is overwritten unless asked
(``--force`` / ``overwrite=True``), a new file is created exclusively and never through a symlink,
a replace is a rename of a complete new file (never a write through a link, never a truncation in
place), recordings that hold text are 0600, and the UI's screenshot always goes to a new name."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from conftest import FakeClock, ids
from tui_fakes import FakeSource, capture_notifications, make_session, run, settle, write_recording

from llm_moments.engine import cli
from llm_moments.engine.core import files
from llm_moments.engine.core.hooks import count_hooks
from llm_moments.engine.core.recording import Recorder, load
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.monitor import Monitor

OLD = "precious data\n"


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the cheap checks")


def _one_error(code, capsys, *words):
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("moments: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- the helpers ------------------------------------------------------------------------------------


def test_create_is_exclusive_and_never_follows_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text(OLD)
    (tmp_path / "link").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("victim.txt", "link", "dangling"):
        with pytest.raises(files.FileExists):
            files.create(tmp_path / name)
    with pytest.raises(files.NotRegular):  # --force replaces a regular file only
        files.create(tmp_path / "link", force=True)
    with pytest.raises(files.NotRegular):
        files.create(tmp_path / "dangling", force=True)
    assert victim.read_text() == OLD and not (tmp_path / "nowhere").exists()
    assert (tmp_path / "link").is_symlink() and (tmp_path / "dangling").is_symlink()


def test_force_replaces_with_a_new_inode_never_truncating_the_old_one(tmp_path, umask022):
    target = tmp_path / "out.txt"
    target.write_text(OLD)
    os.chmod(target, 0o644)
    with open(target) as holder:  # someone reading the old file keeps reading the old content
        fd = files.create(target, force=True, mode=files.PRIVATE)
        os.write(fd, b"new\n")
        os.close(fd)
        assert holder.read() == OLD
    assert target.read_text() == "new\n" and _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary file left


def test_output_without_force_removes_its_file_when_the_writing_fails(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), files.output(target) as fh:
        fh.write("half")
        raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_output_with_force_keeps_the_old_file_when_the_writing_fails(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text(OLD)
    with pytest.raises(RuntimeError), files.output(target, force=True) as fh:
        fh.write("half")
        raise RuntimeError("export failed")
    assert target.read_text() == OLD and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_create_unique_skips_taken_names_and_links(tmp_path):
    victim = tmp_path / "victim.svg"
    victim.write_text(OLD)
    (tmp_path / "shot.svg").write_text(OLD)
    (tmp_path / "shot-1.svg").symlink_to(victim)
    fd, path = files.create_unique(tmp_path, "shot", ".svg")
    os.close(fd)
    assert path.name == "shot-2.svg"
    assert victim.read_text() == OLD and (tmp_path / "shot.svg").read_text() == OLD


# -- recordings: CLI ----------------------------------------------------------------------------------


def test_record_refuses_an_existing_file_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("llm_moments.engine.session.models.load_model", _must_not_load)
    target = tmp_path / "run.jsonl"
    target.write_text(OLD)
    code = cli.main(["run", "--headless", "--record", str(target)])
    _one_error(code, capsys, f"cannot record to {target}: it already exists", "--force")
    assert target.read_text() == OLD


@pytest.mark.parametrize("force", [False, True])
def test_record_never_follows_a_symlink(tmp_path, monkeypatch, capsys, force):
    monkeypatch.setattr("llm_moments.engine.session.models.load_model", _must_not_load)
    victim = tmp_path / "victim.txt"
    victim.write_text(OLD)
    link = tmp_path / "run.jsonl"
    link.symlink_to(victim)
    code = cli.main(["run", "--headless", "--record", str(link), *(["--force"] if force else [])])
    _one_error(code, capsys, "symbolic link")
    assert victim.read_text() == OLD and link.is_symlink()


def test_record_force_replaces_a_recording_with_a_private_new_file(tmp_path, capsys, umask022):
    target = tmp_path / "run.jsonl"
    target.write_text(OLD)
    os.chmod(target, 0o644)
    with open(target) as holder:
        code = cli.main(["run", "--headless", "--model", "tiny-gpt2", "--steps", "2", "--max-new-tokens", "1",
                         "--warmup", "0", "--no-calibrate", "--threads", "1", "--record", str(target), "--force"])
        assert code == 0, capsys.readouterr().err
        assert holder.read() == OLD  # replaced by a new file, not truncated in place
    assert _mode(target) == 0o600  # it holds the prompts and outputs
    rec = load(target)
    assert len(rec.steps) == 2 and any(r.get("type") == "text" for r in rec.others)


# -- recordings: Python API ---------------------------------------------------------------------------


def _run(mon, net):
    with mon, torch.inference_mode():
        net(ids())


def test_api_refuses_an_existing_file_unless_overwrite(plain_net, tmp_path):
    target = tmp_path / "run.jsonl"
    target.write_text(OLD)
    with pytest.raises(MomentsError, match=r"already exists \(pass overwrite=True"):
        Monitor(plain_net, record=target, clock_source=FakeClock())
    assert target.read_text() == OLD and count_hooks(plain_net) == 0
    _run(Monitor(plain_net, record=target, clock_source=FakeClock(), overwrite=True), plain_net)
    assert len(load(target).steps) == 1


def test_api_start_recording_refuses_an_existing_file_unless_overwrite(plain_net, tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    second.write_text(OLD)
    with Monitor(plain_net, record=first, clock_source=FakeClock()) as mon, torch.inference_mode():
        plain_net(ids())
        with pytest.raises(MomentsError, match="already exists"):
            mon.start_recording(second)
        assert second.read_text() == OLD
        mon.start_recording(second, overwrite=True)
        plain_net(ids())
    assert len(load(second).steps) == 1 and len(load(first).steps) == 1


@pytest.mark.parametrize("record_text, mode", [(True, 0o600), (False, 0o644)])
def test_recordings_with_text_are_owner_only(plain_net, tmp_path, umask022, record_text, mode):
    path = tmp_path / "run.jsonl"
    _run(Monitor(plain_net, record=path, clock_source=FakeClock(), record_text=record_text), plain_net)
    assert _mode(path) == mode
    mon = Monitor(plain_net, record=tmp_path / "first.jsonl", clock_source=FakeClock(), record_text=record_text)
    with mon:
        mon.start_recording(tmp_path / "second.jsonl")  # a switched-to recording follows the same rule
    assert _mode(tmp_path / "second.jsonl") == mode


def test_a_recorder_that_never_wrote_removes_only_its_own_file(tmp_path):
    path = tmp_path / "run.jsonl"
    rec = Recorder(path)
    os.replace(write_recording(tmp_path / "other.jsonl", make_session(1)), path)  # someone took the name
    rec.close()
    assert path.exists()


# -- report and export outputs ------------------------------------------------------------------------


@pytest.fixture
def recording(tmp_path):
    path = write_recording(tmp_path / "run.jsonl", make_session(4))
    os.chmod(path, 0o600)
    return path


def test_report_output_is_new_unless_force(recording, tmp_path, capsys):
    out = tmp_path / "report.md"
    out.write_text(OLD)
    code = cli.main(["report", str(recording), "--format", "md", "-o", str(out)])
    _one_error(code, capsys, f"cannot write to {out}: it already exists", "--force")
    assert out.read_text() == OLD
    assert cli.main(["report", str(recording), "--format", "md", "-o", str(out), "--force"]) == 0
    assert out.read_text() != OLD and _mode(out) == 0o600  # no more readable than its recording


@pytest.mark.parametrize("command", [["report", "--format", "md"], ["export", "--format", "csv"]])
def test_outputs_never_follow_a_symlink(recording, tmp_path, capsys, command):
    victim = tmp_path / "victim.txt"
    victim.write_text(OLD)
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    for force in ([], ["--force"]):
        code = cli.main([command[0], str(recording), *command[1:], "-o", str(link), *force])
        _one_error(code, capsys, "symbolic link")
    assert victim.read_text() == OLD and link.is_symlink()


def test_export_default_output_is_new_unless_force(recording, tmp_path, capsys):
    assert cli.main(["export", str(recording), "--format", "csv"]) == 0
    out = tmp_path / "run.csv"
    first = out.read_text()
    out.write_text(OLD)
    capsys.readouterr()
    code = cli.main(["export", str(recording), "--format", "csv"])
    _one_error(code, capsys, f"cannot write to {out}: it already exists")
    assert out.read_text() == OLD
    assert cli.main(["export", str(recording), "--format", "csv", "--force"]) == 0
    assert out.read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.csv", "run.jsonl"]  # no temporary left


def test_a_failed_forced_export_keeps_the_old_output(recording, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run.csv"
    out.write_text(OLD)

    def broken(scan, fmt, fh):
        fh.write("half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("llm_moments.engine.output.export.write_export", broken)
    code = cli.main(["export", str(recording), "--format", "csv", "--force"])
    _one_error(code, capsys, "No space left on device")
    assert out.read_text() == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["run.csv", "run.jsonl"]


def test_an_output_may_be_a_device(recording, capsys):
    assert cli.main(["export", str(recording), "--format", "csv", "-o", "/dev/null"]) == 0


@pytest.mark.parametrize("command", [["report"], ["export", "--format", "csv"]])
def test_an_empty_output_path_is_refused(recording, capsys, command):
    code = cli.main([command[0], str(recording), *command[1:], "-o", ""])
    _one_error(code, capsys, "cannot write to an empty path")


# -- the UI: screenshot and record dialog -------------------------------------------------------------


def test_x_screenshot_goes_to_a_new_name_never_through_a_link(tmp_path):
    from llm_moments.tui.app import MomentsApp

    victim = tmp_path / "victim.txt"
    victim.write_text(OLD)
    import time

    stamp = time.strftime("moments-%Y%m%d-%H%M%S", time.localtime(0))  # the app's clock says 0
    (tmp_path / f"{stamp}.svg").write_text(OLD)
    (tmp_path / f"{stamp}-1.svg").symlink_to(victim)

    async def body():
        app = MomentsApp(FakeSource(make_session(4)), screenshot_dir=tmp_path, clock=lambda: 0.0)
        notes = capture_notifications(app)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, app)
            await pilot.press("x")
            await pilot.pause()
            await pilot.press("x")
            await pilot.pause()
        assert sum("screenshot saved" in m for m, _ in notes) == 2

    run(body())
    assert victim.read_text() == OLD and (tmp_path / f"{stamp}.svg").read_text() == OLD
    for name in (f"{stamp}-2.svg", f"{stamp}-3.svg"):
        assert (tmp_path / name).read_text().lstrip().startswith("<svg")


def test_record_dialog_offers_a_free_name_and_refuses_an_existing_file(tmp_path, monkeypatch):
    import time

    from textual.widgets import Input

    from llm_moments.tui.app import MomentsApp

    monkeypatch.chdir(tmp_path)
    stamp = time.strftime("moments-%Y%m%d-%H%M%S", time.localtime(0))
    (tmp_path / f"{stamp}.jsonl").write_text(OLD)
    (tmp_path / "taken.jsonl").write_text(OLD)

    async def body():
        src = FakeSource(make_session(4, footer=False))
        app = MomentsApp(src, clock=lambda: 0.0)
        notes = capture_notifications(app)
        async with app.run_test(size=(100, 30)) as pilot:
            await settle(pilot, app)
            await pilot.press("r")
            await pilot.pause()
            field = app.screen.query_one(Input)
            assert field.value == f"{stamp}-1.jsonl"
            field.value = "taken.jsonl"
            await pilot.press("enter")
            await pilot.pause()
            assert src.recording_calls == [] and app.state.recording_path is None
            assert any(sev == "error" and "taken.jsonl already exists" in m for m, sev in notes)

    run(body())
    assert (tmp_path / "taken.jsonl").read_text() == OLD


def test_the_live_source_refuses_an_existing_file_at_once(tmp_path):
    from llm_moments.tui.sources import LiveSource

    target = tmp_path / "taken.jsonl"
    target.write_text(OLD)
    args = cli.build_parser()[0].parse_args(["run"])
    with pytest.raises(MomentsError, match="already exists"):  # before the engine is told anything
        LiveSource(args).start_recording(str(target))
    assert target.read_text() == OLD
