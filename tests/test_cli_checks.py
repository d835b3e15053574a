"""CLI values are checked before anything loads (issue #8, item 7): numeric ranges, empty paths,
special files and a size cap for inputs, the model's position limit from its config, and a bad
``--theme`` on the command line. Every check: one line on stderr, exit 2, no traceback, and the model
loader is never called (it is replaced by one that fails the test)."""

from __future__ import annotations

import io
import json
import os
import threading

import pytest
from conftest import FakeClock

from llm_moments.engine import cli
from llm_moments.engine.core.hooks import count_hooks
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session import inputs, models
from llm_moments.engine.session.monitor import Monitor
from llm_moments.tui import cli as tui_cli


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the cheap checks")


@pytest.fixture(autouse=True)
def no_loading(monkeypatch):
    monkeypatch.setattr("llm_moments.engine.session.models.load_model", _must_not_load)


def _main(main, argv):
    """Exit status of ``main(argv)``: argparse's own errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _assert_one_line(code, capfd, *words):
    out, err = capfd.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("moments: error: "), err
    assert "Traceback" not in err and "AssertionError" not in err and out == ""
    for w in words:
        assert w in err, err


def _tiny_config_dir(tmp_path, **config):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return d


RUN = ["run", "--headless", "--warmup", "0", "--steps", "1"]
CASES = {
    # numeric ranges
    "sample rate too small": (RUN + ["--sample-hz", "1e-300"], "--sample-hz must be from 0.1 to 20"),
    "sample rate zero": (RUN + ["--sample-hz", "0"], "--sample-hz must be from 0.1 to 20"),
    "sample rate nan": (RUN + ["--sample-hz", "nan"], "--sample-hz must be from 0.1 to 20"),
    "sample rate inf": (RUN + ["--sample-hz", "inf"], "--sample-hz must be from 0.1 to 20"),
    "util rate too high": (RUN + ["--util-hz", "11"], "--util-hz must be from 0.1 to 10"),
    "util rate too small": (RUN + ["--util-hz", "1e-9"], "--util-hz must be from 0.1 to 10"),
    "steps zero": (RUN + ["--steps", "0"], "--steps: must be at least 1"),
    "steps too many": (RUN + ["--steps", "10000000000"], "--steps: must be at most 1,000,000,000"),
    "warmup too many": (RUN + ["--warmup", "1000000"], "--warmup: must be at most 10,000"),
    "batch too big": (RUN + ["--batch-size", "5000"], "--batch-size: must be at most 4,096"),
    "threads too many": (RUN + ["--threads", "100000"], "--threads: must be at most 1,024"),
    "threads zero": (RUN + ["--threads", "0"], "--threads: must be at least 1"),
    "tokens beyond a preset's positions": (RUN + ["--model", "tiny-gpt2", "--max-new-tokens", "2000"],
                                           "--max-new-tokens 2000 does not fit: tiny-gpt2 holds at most 1024 "
                                           "positions, prompt included; give at most 1023"),
    "tokens at a preset's limit": (RUN + ["--model", "tiny-llama", "--max-new-tokens", "1024"], "give at most 1023"),
    "tokens beyond a directory's positions": (RUN + ["--model", "{model}", "--max-new-tokens", "64"],
                                              "holds at most 64 positions"),
    # empty paths
    "empty record path": (RUN + ["--record", ""], "cannot record to an empty path"),
    "empty inputs path": (RUN + ["--inputs", ""], "--inputs is empty"),
    "empty model": (RUN + ["--model", ""], "--model is empty"),
    "empty report output": (["report", "{d}/missing.jsonl", "-o", ""], "cannot write to an empty path"),
    # special files
    "inputs from /dev/zero": (RUN + ["--inputs", "/dev/zero"], "inputs file /dev/zero is not a regular file"),
    "inputs from a fifo": (RUN + ["--inputs", "{d}/fifo"], "is not a regular file"),
    "inputs too large": (RUN + ["--inputs", "{d}/big.txt"], "is larger than 1 KiB"),
    "record to a fifo": (RUN + ["--record", "{d}/fifo"], "not a regular file"),
    # themes on the command line
    "unknown theme": (RUN + ["--theme", "solarized"], "unknown theme 'solarized'"),
    "broken theme file": (RUN + ["--theme", "{d}/broken.toml"], "is not valid TOML"),
    "theme from /dev/zero": (RUN + ["--theme", "/dev/zero"], "theme file /dev/zero is not a regular file"),
    "empty theme": (RUN + ["--theme", ""], "--theme is empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_is_one_line_before_the_model_loads(case, tmp_path, monkeypatch, capfd):
    argv, expect = CASES[case]
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big.txt").write_text("a line\n" * 200, encoding="utf-8")
    (tmp_path / "broken.toml").write_text("name = [", encoding="utf-8")
    model = _tiny_config_dir(tmp_path, architectures=["GPT2LMHeadModel"], n_positions=64)
    monkeypatch.setattr(inputs, "INPUTS_CAP", 1024)
    fill = {"{d}": str(tmp_path), "{model}": str(model)}
    argv = [fill.get(a, a).replace("{d}", str(tmp_path)) for a in argv]
    # the UI's command line (it has --theme) runs the same checks; themes exist only there
    main = tui_cli.main if "--theme" in argv else cli.main
    done = threading.Event()
    result: dict = {}

    def go():  # a FIFO opened for reading without a writer would block: a hang fails the test
        result["code"] = _main(main, argv)
        done.set()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    assert done.wait(60), "the check blocked"
    _assert_one_line(result["code"], capfd, expect)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "broken.toml", "fifo", "model"]


def test_max_new_tokens_below_the_limit_passes_the_checks(tmp_path):
    from llm_moments.engine.session.setup import check_run_options

    args = cli.build_parser()[0].parse_args(["run", "--model", "tiny-gpt2", "--max-new-tokens", "1023"])
    assert check_run_options(args)  # the input texts
    # an encoder never generates: --max-new-tokens does not apply to it
    args = cli.build_parser()[0].parse_args(["run", "--model", "minilm", "--max-new-tokens", "5000"])
    assert check_run_options(args)


def test_position_limit_comes_from_the_config_without_weights(tmp_path):
    assert models.position_limit("tiny-gpt2") == (1024, True)
    assert models.position_limit("minilm") == (512, False)
    d = _tiny_config_dir(tmp_path, architectures=["LlamaForCausalLM"], max_position_embeddings=4096)
    assert models.position_limit(str(d)) == (4096, True)
    assert models.position_limit(str(tmp_path / "nothing")) == (None, None)
    (d / "config.json").write_text("not json", encoding="utf-8")
    assert models.position_limit(str(d)) == (None, None)  # the loader says what is wrong with it


def test_stdin_inputs_are_capped(monkeypatch):
    monkeypatch.setattr(inputs, "INPUTS_CAP", 1024)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"x\n" * 1000)))
    with pytest.raises(MomentsError, match="inputs from stdin are larger than 1 KiB"):
        inputs.read_texts("-")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
    assert inputs.read_texts("-") == ["one", "two"]


def test_tiny_sample_rate_leaves_no_file_and_no_attribute_error(tmp_path, capfd):
    """The reported case: `--sample-hz 1e-300 --record F` once crashed with AttributeError and left F."""
    target = tmp_path / "run.jsonl"
    code = cli.main(["run", "--headless", "--sample-hz", "1e-300", "--record", str(target)])
    _assert_one_line(code, capfd, "--sample-hz")
    assert not target.exists()


@pytest.mark.parametrize("kwargs, words", [
    ({"sample_hz": 1e-300}, "sample-hz"), ({"sample_hz": float("nan")}, "sample-hz"),
    ({"sample_hz": True}, "sample-hz"), ({"util_hz": 0}, "util-hz"), ({"util_hz": 50}, "util-hz"),
    ({"window_steps": 0}, "window_steps"),
])
def test_monitor_checks_its_numbers_before_building_anything(plain_net, tmp_path, kwargs, words):
    target = tmp_path / "run.jsonl"
    with pytest.raises(MomentsError, match=words):
        Monitor(plain_net, record=target, clock_source=FakeClock(), **kwargs)
    assert not target.exists() and count_hooks(plain_net) == 0


@pytest.mark.parametrize("command", [["replay", "{rec}"], ["watch", "{rec}"], ["run", "--headless"]])
def test_a_bad_theme_on_the_command_line_is_an_error(command, tmp_path, capfd):
    from tui_fakes import make_session, write_recording

    rec = write_recording(tmp_path / "run.jsonl", make_session(2))
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nprimary = "not a colour"\n', encoding="utf-8")
    argv = [str(rec) if a == "{rec}" else a for a in command] + ["--theme", str(bad)]
    code = _main(tui_cli.main, argv)
    _assert_one_line(code, capfd, "is not a colour")


def test_the_live_precheck_runs_the_same_checks(capfd):
    args = tui_cli._parser().parse_args(["run", "--model", "tiny-gpt2", "--max-new-tokens", "5000"])
    with pytest.raises(MomentsError, match="does not fit"):
        tui_cli._precheck_live(args)


def test_usage_errors_are_one_line(capfd):
    code = _main(cli.main, ["run", "--depth", "everything"])
    _assert_one_line(code, capfd, "argument --depth: invalid choice", "see moments run --help")
