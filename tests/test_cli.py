"""The headless command line end to end: real presets run in subprocesses with their recordings
checked field by field, one-line errors for every bad input, nothing lost when a run is interrupted.

Starting Python with torch costs seconds here, so the subprocesses are few, independent ones run two
at a time from module fixtures, and the bad inputs are checked by calling ``engine.cli.main`` in
this process (a few again as real processes). Timeouts only guard against hangs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_cmd, cli_env, popen_cli, run_cli

from llm_moments.engine import cli
from llm_moments.engine.core.recording import load
from llm_moments.engine.session.inputs import SAMPLE_TEXTS

BERT_BLOCKS = ["embeddings", *(f"encoder.layer.{i}" for i in range(6)), "pooler"]
GPT2_BLOCKS = ["transformer.wte", "transformer.wpe", *(f"transformer.h.{i}" for i in range(6)),
               "transformer.ln_f", "lm_head"]


def run_many(jobs: dict[str, dict]) -> dict[str, subprocess.CompletedProcess]:
    """Run CLI commands two at a time (the machine has two cores); jobs: name → run_cli kwargs."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, *job["args"], env=job.get("env"), moments=job.get("moments", False))
                   for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# -- successful runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    common = ["--warmup", "0", "--threads", "1"]
    results = run_many({
        "minilm": {"args": ["run", "--headless", "--model", "minilm", "--steps", "3", "--batch-size", "2",
                            "--no-text", "--format", "json", "--record", str(d / "minilm.jsonl"), *common]},
        "gpt2": {"args": ["run", "--model", "tiny-gpt2", "--steps", "4", "--max-new-tokens", "2",
                          "--record", str(d / "gpt2.jsonl"), *common]},
    })
    return d, results


def test_minilm_run(runs):
    d, results = runs
    result = results["minilm"]
    assert_ok(result)
    rec = load(d / "minilm.jsonl")
    assert rec.warnings == []
    h = rec.header
    assert h["schema"] == "moments/1"
    assert rec.layer_names == BERT_BLOCKS
    assert all(layer["parent"] is None for layer in h["layers"])
    assert h["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert h["model"]["architecture"] == "BertModel" and h["model"]["source"] == "preset"
    assert h["model"]["random_weights"] is False and h["model"]["generative"] is False
    assert h["device"]["kind"] == "cpu" and h["depth"] == "blocks"
    assert isinstance(h["clock"]["source"], str) and h["clock"]["source"]
    assert h["record_text"] is False
    assert h["run"]["batch_size"] == 2 and h["run"]["max_new_tokens"] is None
    assert len(rec.steps) == 3
    for s in rec.steps:
        assert s["kind"] == "encode"
        assert s["batch"] == 2 and s["tokens"] == 2 * s["seq_len"] and s["seq_len"] > 5
        assert len(s["layer_ms"]) == len(BERT_BLOCKS) and None not in s["layer_ms"]
        assert s["hooks_fired"] is True
    assert not [o for o in rec.others if o["type"] == "text"]  # --no-text
    assert rec.footer["reason"] == "completed" and rec.footer["steps"] == 3

    doc = json.loads(result.stdout)  # --format json: the summary only, on stdout
    assert [l["name"] for l in doc["layers"]] == BERT_BLOCKS
    assert [(s["kind"], s["count"]) for s in doc["steps"]] == [("encode", 3)]
    assert doc["steps_total"] == 3


def test_tiny_gpt2_run(runs):
    d, results = runs
    result = results["gpt2"]
    assert_ok(result)
    rec = load(d / "gpt2.jsonl")
    assert rec.warnings == []
    assert rec.layer_names == GPT2_BLOCKS
    m = rec.header["model"]
    assert (m["name"], m["architecture"], m["random_weights"], m["generative"]) == \
        ("tiny-gpt2", "GPT2LMHeadModel", True, True)
    assert rec.header["run"]["max_new_tokens"] == 2 and rec.header["record_text"] is True
    assert [s["kind"] for s in rec.steps] == ["prefill", "decode", "prefill", "decode"]
    prefill, decode = rec.steps[0], rec.steps[1]
    assert prefill["tokens"] == prefill["seq_len"] > 5 and prefill["batch"] == 1
    assert decode["tokens"] == 1 and decode["seq_len"] == 1
    assert [s["index"] for s in rec.steps] == [0, 1, 2, 3]
    for s in rec.steps:
        assert len(s["layer_ms"]) == len(s["layer_cycles"]) == len(GPT2_BLOCKS)
        assert s["unattributed_ms"] == pytest.approx(s["wall_ms"] - sum(s["layer_ms"]), abs=1e-3)
    assert rec.samples and all("t_ns" in s for s in rec.samples)
    texts = [o for o in rec.others if o["type"] == "text"]
    assert [t["prompts"] for t in texts] == [[SAMPLE_TEXTS[0]], [SAMPLE_TEXTS[1]]]
    assert all(len(t["outputs"]) == 1 and isinstance(t["outputs"][0], str) for t in texts)
    assert rec.footer["reason"] == "completed" and rec.footer["steps"] == 4

    out = result.stdout
    assert "Moments per layer" in out and "Step time by kind" in out
    for name in ("transformer.h.5", "lm_head", "prefill", "decode", "[RANDOM WEIGHTS]"):
        assert name in out
    assert "random weights" in result.stderr
    assert f"recorded 4 steps to {d / 'gpt2.jsonl'}" in result.stderr


@pytest.fixture(scope="module")
def reports(runs):
    d, results = runs
    assert results["gpt2"].returncode == 0
    path = str(d / "gpt2.jsonl")
    return run_many({"text": {"args": ["report", path], "moments": True}})


def test_report_prints_the_table(reports):
    result = reports["text"]  # through the installed `moments` command
    assert_ok(result)
    assert result.stderr == ""  # a clean recording: no warnings
    rows = [[cell.strip() for cell in line.split("│")] for line in result.stdout.splitlines() if "│" in line]
    by_first = {row[0]: row for row in rows}
    for name in GPT2_BLOCKS:
        assert by_first[name][1] == "4", name  # layer row: name, calls, ...
    assert by_first["prefill"][1:3] == ["2", by_first["prefill"][2]] and int(by_first["prefill"][2]) > 10
    assert by_first["decode"][1:3] == ["2", "2"]  # kind, steps, tokens: one token per decode step
    assert "tiny-gpt2" in result.stdout and "[RANDOM WEIGHTS]" in result.stdout


def test_report_json(runs, capfd):
    d, results = runs
    assert results["gpt2"].returncode == 0
    assert cli.main(["report", str(d / "gpt2.jsonl"), "--format", "json"]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    doc = json.loads(out)
    assert [l["name"] for l in doc["layers"]] == GPT2_BLOCKS
    assert all(l["count"] == 4 for l in doc["layers"])
    assert {s["kind"]: s["count"] for s in doc["steps"]} == {"prefill": 2, "decode": 2}
    assert doc["model"]["random_weights"] is True
    assert 0 < doc["coverage"] <= 1


def test_report_warns_about_a_cut_off_recording(runs, tmp_path, capfd):
    d, results = runs
    assert results["gpt2"].returncode == 0
    text = (d / "gpt2.jsonl").read_text(encoding="utf-8")
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[: text.rindex('{"type":"step"') + 40], encoding="utf-8")
    assert cli.main(["report", str(cut), "--format", "json"]) == 0
    out, err = capfd.readouterr()
    assert f"moments: warning: {cut}: the last line" in err and "cut off" in err
    assert json.loads(out)["steps_total"] == 3


# -- bad inputs: one line on stderr, a non-zero exit, no traceback -------------------------------------


def _bad_files(d: Path) -> Path:
    (d / "no-config").mkdir()
    (d / "empty.txt").write_text("", encoding="utf-8")
    (d / "no-text.jsonl").write_text('{"text": "fine"}\n{"prompt": "no text field"}\n', encoding="utf-8")
    (d / "notes.txt").write_text("just some notes\nnot a recording\n", encoding="utf-8")
    (d / "v2.jsonl").write_text(json.dumps({"type": "header", "schema": "moments/2", "layers": []}) + "\n",
                                encoding="utf-8")
    return d


RUN = ["run", "--headless", "--warmup", "0", "--steps", "1"]
# name: (arguments with {d} for the folder of bad files, part of the message, fails before any model loads)
BAD = {
    "unknown preset": (RUN + ["--model", "no-such-preset"], "unknown model 'no-such-preset'", False),
    "missing model path": (RUN + ["--model", "{d}/missing/model"], "not an existing directory", False),
    "directory without config": (RUN + ["--model", "{d}/no-config"], "no config.json", False),
    "cuda without a gpu": (RUN + ["--device", "cuda"], "no CUDA GPU is visible", False),
    "missing inputs": (RUN + ["--inputs", "{d}/missing.txt"], "inputs file {d}/missing.txt does not exist", True),
    "empty inputs": (RUN + ["--inputs", "{d}/empty.txt"], "are empty", True),
    "json line without text": (RUN + ["--inputs", "{d}/no-text.jsonl"], ':2: a JSON line needs a string "text"', True),
    "record into a missing folder": (RUN + ["--record", "{d}/nope/run.jsonl"], "folder {d}/nope does not exist", True),
    "record onto a directory": (RUN + ["--record", "{d}/no-config"], "{d}/no-config: it is a directory", True),
    "sample rate too high": (RUN + ["--sample-hz", "50"], "--sample-hz must be", True),
    "report on notes": (["report", "{d}/notes.txt"], "{d}/notes.txt is not a moments recording", True),
    "report on a newer schema": (["report", "{d}/v2.jsonl"], "uses schema moments/2, this moments reads moments/1",
                                 True),
    "report on a missing file": (["report", "{d}/missing.jsonl"], "no such recording: {d}/missing.jsonl", True),
    "report on an empty file": (["report", "{d}/empty.txt"], "is empty", True),
    "report on a directory": (["report", "{d}/no-config"], "is a directory, not a recording", True),
}


def _fill(items, d):
    return [item.replace("{d}", str(d)) for item in items]


def _assert_one_error_line(code, out, err, expect):
    assert code == 2, err
    assert err.count("\n") == 1, err  # exactly one line ...
    assert err.startswith("moments: error: ")  # ... in the one format
    assert expect in err
    assert out == ""
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(case, tmp_path, monkeypatch, capfd):
    args, expect, before_load = BAD[case]
    if case == "cuda without a gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    d = _bad_files(tmp_path)
    if before_load:
        monkeypatch.setattr("llm_moments.engine.session.models.load_model", _must_not_load)
    code = cli.main(_fill(args, d))
    out, err = capfd.readouterr()
    _assert_one_error_line(code, out, err, _fill([expect], d)[0])
    assert sorted(p.name for p in d.iterdir()) == ["empty.txt", "no-config", "no-text.jsonl", "notes.txt", "v2.jsonl"]
    assert list((d / "no-config").iterdir()) == []  # no recording was left anywhere


def test_a_hub_id_not_in_the_cache_fails_at_once_offline(tmp_path):
    hub_env = cli_env(HF_HOME=str(tmp_path / "hf-home"))
    for key in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        hub_env.pop(key, None)  # the engine must go offline by itself
    (tmp_path / "hf-home").mkdir()
    result = run_cli(*RUN, "--model", "some-org/some-model", "--record", str(tmp_path / "run.jsonl"),
                     env=hub_env, timeout=120)  # a network wait would hang far longer than this
    _assert_one_error_line(result.returncode, result.stdout, result.stderr,
                           "model 'some-org/some-model' is not in the local Hugging Face cache")
    assert "huggingface-cli download some-org/some-model" in result.stderr
    assert not (tmp_path / "run.jsonl").exists()  # the model failed: no recording is left behind
    assert list((tmp_path / "hf-home").rglob("*.json")) == []  # nothing was fetched


# -- in-process checks of the parser and of the order of checks ----------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["run", "--batch-size", "0"], "--batch-size: must be at least 1, not 0"),
    (["run", "--steps", "many"], "--steps: 'many' is not a whole number"),
    (["run", "--warmup", "-1"], "--warmup: must be 0 or more"),
    (["run", "--max-new-tokens", "0"], "--max-new-tokens: must be at least 1"),
    (["run", "--depth", "everything"], "--depth: invalid choice"),
    (["run", "--sample-hz", "fast"], "'fast' is not a number"),
    (["report"], "the following arguments are required: FILE"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),  # run is the default command
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_run_is_the_default_command_with_options(monkeypatch, capsys):
    # `python -m llm_moments.engine --model X` runs X (it once told the user that X was not a command)
    monkeypatch.setattr("llm_moments.engine.session.models.load_model", _must_not_load)
    assert cli.main(["--model", "no-such-preset", "--inputs", "/no/such/inputs.txt"]) == 2
    assert capsys.readouterr().err == "moments: error: inputs file /no/such/inputs.txt does not exist\n"


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the cheap checks")


@pytest.mark.parametrize("where", ["missing folder", "directory"])
def test_record_path_is_checked_before_the_model_loads(where, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("llm_moments.engine.session.models.load_model", _must_not_load)
    target = tmp_path / "missing" / "run.jsonl" if where == "missing folder" else tmp_path
    before = sorted(tmp_path.rglob("*"))
    code = cli.main(["run", "--headless", "--record", str(target), "--inputs", str(tmp_path / "nothing.txt")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("moments: error: cannot record to ") and err.count("\n") == 1  # not the inputs error
    assert "AssertionError" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("llm-moments ")


# -- interruption: nothing recorded is lost ------------------------------------------------------------


def _count_steps(path: Path) -> int:
    try:
        return path.read_text(encoding="utf-8").count('"type":"step"')
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Two long runs, stopped by SIGINT and by SIGTERM once each has recorded two steps."""
    d = tmp_path_factory.mktemp("signals")
    procs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        path = d / f"{sig.name}.jsonl"
        procs[sig] = (path, popen_cli("run", "--headless", "--model", "tiny-gpt2", "--steps", "100000",
                                      "--max-new-tokens", "4", "--warmup", "0", "--threads", "1",
                                      "--record", str(path)))
    out = {}
    deadline = time.monotonic() + 240  # a guard against a hang, not a performance check
    waiting = dict(procs)
    while waiting and time.monotonic() < deadline:
        for sig, (path, proc) in list(waiting.items()):
            if proc.poll() is not None:
                del waiting[sig]  # ended early: the test will say why
            elif _count_steps(path) >= 2:
                proc.send_signal(sig)
                del waiting[sig]
        time.sleep(0.1)
    for sig, (path, proc) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[sig] = (path, proc.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_keeps_its_recording(interrupted, sig):
    path, code, stdout, stderr = interrupted[sig]
    assert code == 130, stderr
    assert "Traceback" not in stderr
    rec = load(path)
    assert rec.warnings == []  # every line complete, footer present
    assert rec.footer["reason"] == "interrupted"
    assert rec.footer["steps"] == len(rec.steps) >= 2
    assert [s["index"] for s in rec.steps] == list(range(len(rec.steps)))
    assert rec.steps[0]["kind"] == "prefill"
    assert "Moments per layer" in stdout  # the summary of what was measured is still printed
    assert "moments: interrupted" in stderr


# -- every signal, once or twice, and every write error end a headless run cleanly ------------------------

LONG_RUN = ["run", "--headless", "--model", "tiny-gpt2", "--no-calibrate", "--steps", "100000",
            "--max-new-tokens", "4", "--warmup", "0", "--threads", "1"]


@pytest.fixture
def signals_caught():
    """While a test runs the CLI in this process: a SIGHUP or SIGTERM the CLI failed to handle is caught
    here (and fails the test) instead of ending pytest."""
    caught: list[int] = []
    old = {s: signal.signal(s, lambda n, f: caught.append(n)) for s in (signal.SIGHUP, signal.SIGTERM)}
    yield caught
    for s, h in old.items():
        signal.signal(s, h)


def _signal_when_recording(path: Path, sigs: tuple[signal.Signals, ...], steps: int = 2) -> threading.Thread:
    def send() -> None:
        deadline = time.monotonic() + 60
        while _count_steps(path) < steps and time.monotonic() < deadline:
            time.sleep(0.01)
        for i, sig in enumerate(sigs):
            if i:
                time.sleep(0.02)
            os.kill(os.getpid(), sig)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("sigs", [
    (signal.SIGHUP,), (signal.SIGTERM,), (signal.SIGINT,),
    (signal.SIGHUP, signal.SIGHUP), (signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT),
    (signal.SIGHUP, signal.SIGTERM)], ids=lambda sigs: "+".join(s.name for s in sigs))
def test_any_signal_once_or_twice_20_ms_apart_leaves_an_interrupted_footer(sigs, tmp_path, capsys, signals_caught):
    path = tmp_path / "run.jsonl"
    sender = _signal_when_recording(path, sigs)
    code = cli.main([*LONG_RUN, "--record", str(path)])
    sender.join(5)
    err = capsys.readouterr().err
    assert signals_caught == []  # the CLI's own handlers took every signal
    assert code == 130, err
    rec = load(path)
    assert rec.warnings == [] and rec.footer["reason"] == "interrupted"
    assert rec.footer["steps"] == len(rec.steps) >= 2
    assert [s["index"] for s in rec.steps] == list(range(len(rec.steps)))
    assert "moments: interrupted; the summary covers the steps before it" in err
    assert f"recorded {len(rec.steps)} steps to {path}" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back


@pytest.mark.parametrize("target", ["/dev/full", "/proc/version"])
def test_a_special_file_is_refused_before_the_model_loads(target, monkeypatch, capsys):
    monkeypatch.setattr("llm_moments.engine.session.models.load_model", _must_not_load)
    assert cli.main(["run", "--headless", "--record", target]) == 2
    err = capsys.readouterr().err
    assert err == f"moments: error: cannot record to {target}: not a regular file (a recording needs one; " \
                  "give a file name such as run.jsonl)\n"


def test_a_full_disk_stops_the_recording_not_the_session(tmp_path, monkeypatch, capsys):
    """ENOSPC mid-run: one line with the steps on disk, the summary covers every step, exit 3."""
    from test_recording import FullDisk

    import llm_moments.engine.session.monitor as monitor_mod
    from llm_moments.engine.core.recording import Recorder

    died: list = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args))
    disk = FullDisk(room=12_000)
    monkeypatch.setattr(monitor_mod, "Recorder", lambda path, **kw: Recorder(path, fh=disk))
    code = cli.main(["run", "--headless", "--model", "tiny-gpt2", "--no-calibrate", "--steps", "24",
                     "--max-new-tokens", "4", "--warmup", "0", "--format", "json",
                     "--record", str(tmp_path / "r.jsonl")])
    _out, err = capsys.readouterr()
    assert code == 3 and died == []
    on_disk = sum(r["type"] == "step" for r in disk.lines())
    assert 0 < on_disk < 24
    lines = [l for l in err.splitlines() if "record" in l]
    assert lines == [f"moments: recording stopped: disk full after {on_disk} steps; they are safely in "
                     f"{tmp_path / 'r.jsonl'}"]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def hung_up_and_full(tmp_path_factory):
    """Real processes: a SIGHUP once two steps are recorded, and a file-size limit (EFBIG) mid-run."""
    import resource

    d = tmp_path_factory.mktemp("hup")
    hup = d / "hup.jsonl"
    p_hup = popen_cli(*LONG_RUN, "--record", str(hup))

    def small_files() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))

    full = d / "full.jsonl"
    p_full = subprocess.Popen(cli_cmd("run", "--headless", "--model", "tiny-gpt2", "--no-calibrate", "--steps",
                                      "40", "--max-new-tokens", "4", "--warmup", "0", "--threads", "1",
                                      "--record", str(full)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                              cwd=ROOT, preexec_fn=small_files)
    deadline = time.monotonic() + 120
    while _count_steps(hup) < 2 and p_hup.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p_hup.send_signal(signal.SIGHUP)
    out = {}
    for name, path, proc in (("hup", hup, p_hup), ("full", full, p_full)):
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[name] = (path, proc.returncode, stdout, stderr)
    return out


def test_a_hang_up_leaves_an_interrupted_footer_in_a_real_process(hung_up_and_full):
    path, code, _stdout, stderr = hung_up_and_full["hup"]
    assert code == 130, stderr
    rec = load(path)
    assert rec.warnings == [] and rec.footer["reason"] == "interrupted" and len(rec.steps) >= 2
    assert "Traceback" not in stderr


def test_a_write_error_in_a_real_process_exits_3_with_one_line(hung_up_and_full):
    path, code, stdout, stderr = hung_up_and_full["full"]
    assert code == 3, stderr
    assert "Traceback" not in stderr
    rec = load(path)
    # The footer goes in when the disk leaves room for it; either way the file ends on a whole step.
    assert (rec.footer is not None and rec.footer["reason"] == "error" and rec.warnings == []) or (
        rec.footer is None
        and rec.warnings == ["no footer: the session did not end cleanly (killed, or still being written)"])
    said = [l for l in stderr.splitlines() if "record" in l]
    assert said == [f"moments: recording stopped: file too large after {len(rec.steps)} steps; they are "
                    f"safely in {path}"]
    assert "Moments per layer" in stdout  # the session ran to its end
