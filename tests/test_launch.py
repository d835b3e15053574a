"""``moments run --tp N`` / ``--pp N``: local ranks started by the CLI (engine/session/launch.py).

Two real gloo ranks of the tiny-llama preset run headless (a few steps; then a Ctrl+C of a long run);
the rank group's death handling runs on fake rank processes (a few lines of Python each), so it
costs no model load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_moments.engine.errors import MomentsError

HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None
HAS_GLOO = torch.distributed.is_available() and torch.distributed.is_gloo_available()
needs_ranks = pytest.mark.skipif(not (HAS_ACCELERATE and HAS_GLOO),
                                 reason="a sharded model needs accelerate and torch.distributed with gloo")
MOMENTS = [sys.executable, "-P", "-m", "llm_moments.engine"]
FAST = ["--model", "tiny-llama", "--headless", "--max-new-tokens", "2", "--warmup", "0", "--no-calibrate",
        "--device", "cpu", "--sample-hz", "5", "--util-hz", "2"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _args(*argv: str) -> argparse.Namespace:
    from llm_moments.engine.cli import build_parser

    parser, _ = build_parser()
    return parser.parse_args(["run", *argv])


# -- options and checks (no rank starts) ---------------------------------------------------------------


def test_tp_and_pp_reach_the_child_from_the_one_definition():
    from llm_moments.engine.session.stream import to_argv

    argv = to_argv(_args("--tp", "2", "--pp", "2", "--model", "tiny-llama"))
    assert "--tp=2" in argv and "--pp=2" in argv


@pytest.mark.parametrize("model", ["tiny-gpt2", "minilm"])
def test_a_model_transformers_cannot_split_is_refused_in_one_line_before_anything_starts(model, tmp_path):
    t0 = time.monotonic()
    p = subprocess.run([*MOMENTS, "run", "--tp", "2", "--model", model, "--headless", "--record",
                        str(tmp_path / "run.jsonl")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be split" in lines[0] and "tiny-llama" in lines[0], p.stderr
    assert not list(tmp_path.iterdir())
    assert time.monotonic() - t0 < 30


def test_shapes_that_do_not_split_are_refused():
    from llm_moments.engine.session.launch import check_launch

    with pytest.raises(MomentsError, match="do not split into 4"):
        check_launch(_args("--tp", "4", "--model", "tiny-llama", "--device", "cpu"))   # 6 heads
    with pytest.raises(MomentsError, match="fewer than the 8 pipeline stages"):
        check_launch(_args("--pp", "8", "--model", "tiny-llama", "--device", "cpu"))   # 6 layers


def test_rank_records_are_checked_existing_and_stale_ones_refused(tmp_path):
    from llm_moments.engine.session.launch import check_rank_records

    base = tmp_path / "run.jsonl"
    assert [p.name for p in check_rank_records(str(base), 2)] == ["run.rank0.jsonl", "run.rank1.jsonl"]
    (tmp_path / "run.rank1.jsonl").write_text("x\n")
    with pytest.raises(MomentsError, match="already exists"):
        check_rank_records(str(base), 2)
    check_rank_records(str(base), 2, force=True)
    (tmp_path / "run.rank3.jsonl").write_text("x\n")
    with pytest.raises(MomentsError, match="earlier session"):
        check_rank_records(str(base), 2, force=True)
    with pytest.raises(MomentsError, match="base name"):
        check_rank_records(str(tmp_path / "run.rank0.jsonl"), 2)


def test_inside_torchrun_and_stdin_inputs_are_refused(monkeypatch):
    from llm_moments.engine.session.launch import check_launch

    with pytest.raises(MomentsError, match="stdin"):
        check_launch(_args("--tp", "2", "--model", "tiny-llama", "--inputs", "-"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MomentsError, match="already one of 2"):
        check_launch(_args("--tp", "2", "--model", "tiny-llama"))


def test_stream_with_tp_outside_a_launch_says_how_to_start_it(monkeypatch):
    from llm_moments.engine.session.launch_checks import LAUNCH_ENV
    from llm_moments.engine.session.rank import join_world

    monkeypatch.delenv(LAUNCH_ENV, raising=False)
    with pytest.raises(MomentsError, match="moments run --tp 2"):
        join_world(_args("--tp", "2"))


# -- the group: a rank that dies is said, the others are stopped ---------------------------------------

FAKE_RANK = r"""
import json, os, sys, time
r = int(os.environ["RANK"])
print(json.dumps({"type": "header", "schema": "moments/1", "layers": []}), flush=True)
if r == 1:
    print("boom: rank 1 lost its GPU", file=sys.stderr, flush=True)
    time.sleep(0.3)
    sys.exit(7)
for line in sys.stdin:
    if json.loads(line).get("cmd") == "quit":
        print(json.dumps({"type": "footer", "reason": "interrupted"}), flush=True)
        sys.exit(130)
sys.exit(130)
"""


def test_a_rank_that_dies_is_said_and_the_others_are_stopped():
    from llm_moments.engine.session.launch import RankGroup

    group = RankGroup(_args("--tp", "3"), argv=[sys.executable, "-c", FAKE_RANK], grace_s=5)
    group.start()
    t0 = time.monotonic()
    while not group.done() and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    records = group.drain()
    group.stop()
    assert group.done()
    died = [r for r in records if r.get("died")]
    assert len(died) == 1 and died[0]["rank"] == 1 and died[0]["type"] == "error"
    message = died[0]["message"]
    assert "rank 1 died: boom: rank 1 lost its GPU" in message and "stopping ranks 0, 2" in message
    footers = sorted(r["rank"] for r in records if r.get("type") == "footer")
    assert footers == [0, 2]                  # the others ended in a controlled way, asked by the group
    assert all("rank" in r for r in records)
    assert group.exit_code() == 1
    assert group.folder is not None and not group.folder.exists()   # the store's folder is removed


# -- two real ranks ------------------------------------------------------------------------------------


@needs_ranks
def test_tp2_headless_records_one_file_per_rank_and_prints_the_merged_summary(tmp_path):
    p = subprocess.run([*MOMENTS, "run", "--tp", "2", *FAST, "--steps", "4", "--record", str(tmp_path / "run.jsonl")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    r0, r1 = _records(tmp_path / "run.rank0.jsonl"), _records(tmp_path / "run.rank1.jsonl")
    assert not (tmp_path / "run.jsonl").exists()
    for r, recs in enumerate((r0, r1)):
        h = recs[0]
        assert h["dist"]["rank"] == r and h["dist"]["world_size"] == 2 and h["dist"]["backend"] == "gloo"
        assert h["dist"]["layout"]["tp"] == 2 and h["model"]["split"] == {"tp": 2, "pp": 1}
        assert recs[-1]["type"] == "footer" and recs[-1]["reason"] == "completed"
        assert sum(1 for x in recs if x["type"] == "step") >= 4
    assert r0[0]["dist"]["session"] == r1[0]["dist"]["session"]
    assert "2 of 2 ranks" in p.stdout and "culprit" in p.stdout and "Ranks: step time" in p.stdout
    assert "recorded 2 ranks" in p.stderr


@needs_ranks
def test_ctrl_c_of_tp2_headless_leaves_complete_rank_files_with_interrupted_footers(tmp_path):
    proc = subprocess.Popen([*MOMENTS, "run", "--tp", "2", *FAST, "--steps", "1000000", "--record",
                             str(tmp_path / "run.jsonl")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    try:
        files = [tmp_path / f"run.rank{r}.jsonl" for r in (0, 1)]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if all(f.exists() and f.read_text().count('"type":"step"') >= 2 for f in files):
                break
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    for f in files:
        lines = f.read_text().splitlines()
        recs = [json.loads(l) for l in lines]       # every line complete
        assert recs[-1]["type"] == "footer" and recs[-1]["reason"] == "interrupted"
        assert recs[-1]["steps"] == sum(1 for x in recs if x["type"] == "step")
    steps = [sum(1 for x in _records(f) if x["type"] == "step") for f in files]
    assert steps[0] == steps[1]                      # stopped together, at a batch boundary
    assert "interrupted" in err and "2 of 2 ranks" in out


@needs_ranks
def test_live_ui_shows_both_ranks_and_q_leaves_footers(tmp_path):
    """The live monitor over ``RankLiveSource``: both ranks' steps reach the merged view through
    their own pipes; quitting ends both ranks with footers."""
    import asyncio

    from llm_moments.tui.app import MomentsApp
    from llm_moments.tui.rank_sources import RankLiveSource
    from llm_moments.tui.screens.ranks import RanksScreen

    args = _args("--tp", "2", *[a for a in FAST if a != "--headless"], "--record", str(tmp_path / "run.jsonl"))
    source = RankLiveSource(args)

    async def body():
        app = MomentsApp(source)
        async with app.run_test(size=(160, 48)) as pilot:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                await pilot.pause(0.3)
                rl = app.state.ranks
                if rl is not None and len(rl.headers) == 2 and min(rl.view().steps) >= 2:
                    break
            assert app.state.ranks.view().steps[1] >= 2, (app.state.error, [s.message for s in app.state.statuses])
            assert app.state.header["dist"]["rank"] == 0
            await pilot.press("w")
            await pilot.pause(0.3)
            assert isinstance(app.screen, RanksScreen)
            await pilot.press("escape")
            await asyncio.to_thread(source.stop)
    try:
        asyncio.run(body())
    finally:
        source.stop(timeout_s=10)
    for r in (0, 1):
        recs = _records(tmp_path / f"run.rank{r}.jsonl")
        assert recs[-1]["type"] == "footer" and recs[-1]["reason"] == "completed"
    assert source.group.exit_code() == 0
