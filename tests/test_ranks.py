"""Multi-rank recordings read as one session (design §10): finding every rank's file from the base name
or any rank's file, the missing-rank warning, the one-session check, the merged view (per-rank p50,
skew, the culprit rank by compute, not by moment), and what report / export / diff make of it.

Synthetic rank files (tests/tui_fakes.py records plus a ``dist`` header) for speed; one test reads the
real two-rank tensor-parallel recordings of tests/test_dist.py (slow: it starts two gloo ranks).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import test_dist
from tui_fakes import BLOCK_LAYERS, make_header, make_step

from llm_moments.engine import cli
from llm_moments.engine.analysis.ranks import RankScan, analyze_ranks, diff_ranks
from llm_moments.engine.analysis.report import analyze
from llm_moments.engine.core.rankfiles import find_ranks, rank_files, split_rank
from llm_moments.engine.core.recording import RecordingError, rank_record_path
from llm_moments.engine.output import ranks as out_ranks
from llm_moments.engine.output.export import export

SLOW = 2          # blocks.1: rank 1 computes 5 ms more; rank 0 waits for it inside the all-reduce
EXTRA_MS = 5.0
HOSTILE = "\x1b]0;pwned\x07<script>alert(1)</script>|*x*\u202e"


def rank_header(rank: int, world: int = 2, session: str = "sess-1", host: str = "node-a", **kw) -> dict:
    h = make_header(**kw)
    h["dist"] = {"rank": rank, "local_rank": rank, "world_size": world, "host": host, "backend": "gloo",
                 "layout": {"tp": world, "pp": 1, "dp": 1, "tp_rank": rank, "pp_rank": 0, "dp_rank": 0},
                 "engine": "transformers-tp", "session": session}
    h["clock_origin"] = {"perf_counter_ns": 1_000_000 + rank, "time_ns": 1_700_000_000_000_000_000 + rank * 1_000_000}
    return h


def rank_step(i: int, rank: int) -> dict:
    """Both ranks' moments of blocks.1 look alike (rank 0's is even a little longer); rank 0's holds the
    wait (comm_ms), rank 1's is compute."""
    s = make_step(i, kind="decode")
    ms = list(s["layer_ms"])
    comm = [None] * len(ms)
    if rank == 0:
        ms[SLOW] = round(ms[SLOW] + EXTRA_MS + 0.05, 5)
        comm[SLOW] = EXTRA_MS
    else:
        ms[SLOW] = round(ms[SLOW] + EXTRA_MS, 5)
        comm[SLOW] = 0.02
    s["layer_ms"], s["comm_ms"] = ms, comm
    s["wall_ms"] = round(sum(ms) + 0.1 + 0.1 * rank, 5)
    return s


def write_rank(folder: Path, rank: int, n: int = 40, base: str = "run.jsonl", **kw) -> Path:
    path = rank_record_path(folder / base, rank)
    recs = [rank_header(rank, **kw)] + [rank_step(i, rank) for i in range(n)]
    recs.append({"type": "footer", "steps": n, "reason": "completed"})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture
def two(tmp_path):
    write_rank(tmp_path, 0)
    write_rank(tmp_path, 1)
    return tmp_path


# -- discovery -----------------------------------------------------------------------------------------


def test_split_rank_is_the_inverse_of_rank_record_path():
    for name in ("run.jsonl", "/x/y/run", "a.b.jsonl"):
        p = rank_record_path(name, 3)
        assert split_rank(p) == (Path(name), 3)
    assert split_rank("run.jsonl") == (Path("run.jsonl"), None)


def test_discovery_from_the_base_name_and_from_any_rank_file(two):
    for given in (two / "run.jsonl", two / "run.rank1.jsonl", two / "run.rank0.jsonl"):
        rs = find_ranks(given)
        assert rs is not None and rs.ranks == [0, 1] and rs.world_size == 2 and rs.session == "sess-1"
        assert rs.files[1] == two / "run.rank1.jsonl" and not rs.missing and not rs.warnings
    assert rank_files(two / "run.jsonl") == {0: two / "run.rank0.jsonl", 1: two / "run.rank1.jsonl"}


def test_a_plain_recording_is_not_a_rank_set(tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps(make_header()) + "\n" + json.dumps(make_step(0)) + "\n")
    assert find_ranks(plain) is None
    assert find_ranks(tmp_path / "nothing.jsonl") is None
    # a file named like a rank file whose header has no dist: a single session
    odd = tmp_path / "odd.rank0.jsonl"
    odd.write_text(plain.read_text())
    assert find_ranks(odd) is None


def test_missing_ranks_are_one_warning_line(tmp_path):
    write_rank(tmp_path, 0, world=4)
    write_rank(tmp_path, 2, world=4)
    rs = find_ranks(tmp_path / "run.jsonl")
    assert rs.ranks == [0, 2] and rs.missing == [1, 3]
    assert len(rs.warnings) == 1 and "\n" not in rs.warnings[0]
    assert "2 of 4 ranks" in rs.warnings[0] and "1, 3 missing" in rs.warnings[0]
    ra = analyze_ranks(rs)
    assert ra.missing == [1, 3] and ra.rank_ids == [0, 2]


def test_files_of_two_sessions_are_refused_in_one_line(tmp_path):
    write_rank(tmp_path, 0, session="new")
    write_rank(tmp_path, 1, session="old-stale")
    with pytest.raises(RecordingError) as exc:
        find_ranks(tmp_path / "run.rank0.jsonl")
    msg = str(exc.value)
    assert "\n" not in msg and "different sessions" in msg and "old-stale" in msg
    code = cli.main(["report", str(tmp_path / "run.jsonl")])
    assert code == 2


def test_a_rank_file_whose_header_says_another_rank_is_refused(tmp_path):
    write_rank(tmp_path, 0)
    p = write_rank(tmp_path, 1)
    p.rename(tmp_path / "run.rank5.jsonl")
    with pytest.raises(RecordingError, match="named rank 5"):
        find_ranks(tmp_path / "run.jsonl")


# -- the merged view -----------------------------------------------------------------------------------


def test_culprit_is_the_slow_compute_rank_not_the_rank_that_waited(two):
    ra = analyze_ranks(find_ranks(two / "run.jsonl"))
    layer = ra.layers[SLOW]
    assert layer.name == BLOCK_LAYERS[SLOW][0]
    # the moments look alike, rank 0's is even the longer one ...
    assert layer.p50_ms[0] > layer.p50_ms[1]
    assert layer.skew_ms == pytest.approx(0.05, abs=1e-6)
    # ... but rank 0's moment holds the wait: rank 1 is the culprit, last in every step
    assert layer.compute_p50_ms[1] > layer.compute_p50_ms[0] + 4
    assert layer.culprit_rank == 1
    assert layer.last_share == {0: 0.0, 1: 1.0} and layer.steps_compared == 40
    # layers where both ranks compute the same: nobody is last, no culprit
    assert ra.layers[0].culprit_rank is None and ra.layers[0].steps_compared == 0 and ra.layers[0].skew_ms == 0
    assert ra.has_comm
    # per rank: steps, step p50, the worst rank
    assert [r.steps for r in ra.ranks] == [40, 40] and ra.worst_rank == 1
    assert ra.ranks[1].vs_worst_pct == 0 and ra.ranks[0].vs_worst_pct < 0
    assert ra.ranks[0].host == "node-a" and ra.ranks[0].device == "NVIDIA H200"


def test_rank_scan_gives_the_report_and_the_merged_view_in_one_pass(two):
    sc = RankScan(find_ranks(two / "run.rank1.jsonl"))
    data = analyze(sc)
    assert data.n_steps == 40 and data.rec.path == two / "run.rank0.jsonl"
    assert sc.result().layers[SLOW].culprit_rank == 1


def test_steps_align_by_index_when_a_rank_lacks_some(tmp_path):
    write_rank(tmp_path, 0, n=10)
    p = write_rank(tmp_path, 1, n=10)
    lines = p.read_text().splitlines()
    p.write_text("\n".join(l for l in lines if '"index": 3,' not in l and '"index": 7,' not in l) + "\n")
    ra = analyze_ranks(find_ranks(tmp_path / "run.jsonl"))
    assert [r.steps for r in ra.ranks] == [10, 8]
    assert ra.layers[SLOW].steps_compared == 8 and ra.layers[SLOW].culprit_rank == 1


# -- report ----------------------------------------------------------------------------------------------


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_json_has_ranks_skew_and_culprit(two, capsys):
    code, out, err = _run(capsys, "report", str(two / "run.jsonl"), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert [r["rank"] for r in doc["ranks"]] == [0, 1]
    r0 = doc["ranks"][0]
    assert {"rank", "host", "device", "file", "steps", "step_p50_ms"} <= set(r0)
    assert r0["file"].endswith("run.rank0.jsonl") and r0["steps"] == 40
    layer = next(l for l in doc["layers"] if l["name"] == BLOCK_LAYERS[SLOW][0])
    assert layer["culprit_rank"] == 1 and layer["skew_ms"] == pytest.approx(0.05, abs=1e-6)
    assert layer["last_share"] == {"0": 0.0, "1": 1.0}
    assert doc["rank_session"]["world_size"] == 2 and doc["rank_session"]["missing_ranks"] == []


@pytest.mark.parametrize("fmt", ["text", "md", "html"])
def test_reports_show_a_per_rank_section(two, capsys, fmt):
    code, out, err = _run(capsys, "report", str(two / "run.rank0.jsonl"), "--format", fmt)
    assert code == 0, err
    assert "rank 1" in out and "culprit" in out.lower()
    if fmt == "html":
        assert 'id="ranks"' in out and "heatmap of p50 moments: layers by ranks" in out


def test_missing_rank_warning_reaches_stderr_once(tmp_path, capsys):
    write_rank(tmp_path, 0, world=3)
    write_rank(tmp_path, 1, world=3)
    code, _, err = _run(capsys, "report", str(tmp_path / "run.jsonl"), "--format", "json")
    assert code == 0
    lines = [l for l in err.splitlines() if "missing" in l]
    assert len(lines) == 1 and "rank 2 missing" in lines[0]


# -- export ----------------------------------------------------------------------------------------------


def test_chrome_trace_puts_each_rank_on_its_own_process_with_distributed_info(two, tmp_path, capsys):
    out = tmp_path / "t.trace.json"
    code, _, err = _run(capsys, "export", str(two / "run.jsonl"), "--format", "chrome", "-o", str(out))
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["distributedInfo"]["world_size"] == 2 and doc["distributedInfo"]["backend"] == "gloo"
    assert doc["distributedInfo"]["rank"] == 0 and doc["distributedInfo"]["ranks"] == [0, 1]
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e.get("name") == "process_name"}
    assert names == {0: "rank 0 (node-a)", 1: "rank 1 (node-a)"}
    spans = [e for e in doc["traceEvents"] if e.get("ph") == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    # ranks on one wall clock (clock_origin): rank 1 started 1 ms later
    first = {pid: min(e["ts"] for e in spans if e["pid"] == pid) for pid in (0, 1)}
    assert first[1] - first[0] == pytest.approx(1000.0)


def test_split_ranks_writes_one_trace_per_rank_for_hta(two, tmp_path, capsys):
    out = tmp_path / "t.trace.json"
    code, _, err = _run(capsys, "export", str(two / "run.jsonl"), "--format", "chrome", "-o", str(out),
                        "--split-ranks")
    assert code == 0, err
    for r in (0, 1):
        doc = json.loads((tmp_path / f"t.rank{r}.trace.json").read_text())
        assert doc["distributedInfo"] == {"rank": r, "world_size": 2, "backend": "gloo"}
        assert {e["pid"] for e in doc["traceEvents"]} == {r}
    assert not out.exists()


def test_csv_has_a_rank_column_and_json_a_section_per_rank(two):
    rs = find_ranks(two / "run.jsonl")
    buf = io.StringIO()
    out_ranks.write_rank_export(rs, "csv", buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows[0][0] == "rank" and rows[0][1:] == next(csv.reader(io.StringIO(export(rs.files[0], "csv"))))
    assert {r[0] for r in rows[1:]} == {"0", "1"} and len(rows) == 1 + 2 * 40 * len(BLOCK_LAYERS)
    buf = io.StringIO()
    out_ranks.write_rank_export(rs, "json", buf)
    doc = json.loads(buf.getvalue())
    assert [s["rank"] for s in doc["ranks"]] == [0, 1] and doc["world_size"] == 2
    assert len(doc["ranks"][1]["recording"]["steps"]) == 40
    assert doc["ranks"][1]["recording"]["header"]["dist"]["rank"] == 1


# -- diff ------------------------------------------------------------------------------------------------


def test_diff_of_two_rank_sets_compares_per_rank_and_merged(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for r in (0, 1):
        write_rank(a, r, session="A")
        write_rank(b, r, session="B")
    d = diff_ranks(find_ranks(a / "run.jsonl"), find_ranks(b / "run.jsonl"))
    assert sorted(d.per_rank) == [0, 1] and d.merged.a_steps == 80
    assert all(not l.significant for l in d.merged.layers)
    code, out, err = _run(capsys, "diff", str(a / "run.jsonl"), str(b / "run.rank1.jsonl"), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc["ranks"]) == {"0", "1"} and doc["merged"]["kind"] == "decode"


def test_single_file_diff_is_unchanged(tmp_path, capsys):
    p = tmp_path / "one.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [make_header()] + [make_step(i) for i in range(10)]))
    code, out, err = _run(capsys, "diff", str(p), str(p), "--format", "json")
    assert code == 0, err
    assert "ranks" not in json.loads(out) and "merged" not in json.loads(out)


# -- hostile strings -------------------------------------------------------------------------------------


def test_hostile_host_and_layer_names_stay_inert(tmp_path, capsys):
    layers = [(HOSTILE, None, 0.5), ("ok", None, 0.3)]
    for r in (0, 1):
        h = rank_header(r, host=HOSTILE, layers=layers)
        steps = [make_step(i, layers=layers, kind="decode") for i in range(5)]
        rank_record_path(tmp_path / "run.jsonl", r).write_text("".join(json.dumps(x) + "\n" for x in [h] + steps))
    for fmt in ("text", "md", "html"):
        code, out, err = _run(capsys, "report", str(tmp_path / "run.jsonl"), "--format", fmt)
        assert code == 0, err
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
        assert "\\x1b" in out                       # shown as an escape
        if fmt == "html":
            assert "<script>" not in out and "&lt;script&gt;" in out
        if fmt == "md":   # the host is a table cell: HTML as entities (names are code spans, shown as is)
            host_row = next(l for l in out.splitlines() if l.startswith("| 0"))
            assert "<script>" not in host_row and "&lt;script&gt;" in host_row
    out = tmp_path / "t.trace.json"
    assert cli.main(["export", str(tmp_path / "run.jsonl"), "--format", "csv", "-o", str(tmp_path / "t.csv")]) == 0
    assert "\x1b" not in (tmp_path / "t.csv").read_text()
    assert cli.main(["export", str(tmp_path / "run.jsonl"), "--format", "chrome", "-o", str(out)]) == 0
    json.loads(out.read_text())   # strict JSON; the escapes are JSON's own
    capsys.readouterr()


# -- the real two-rank recordings (tests/test_dist.py: tensor parallel, a straggler in rank 1) ---------------


@test_dist.needs_ranks
def test_real_tp_recording_blames_the_straggler_rank(sharded, capsys):
    base = sharded["dir"] / "tp" / "run.jsonl"
    rs = find_ranks(base)
    assert rs is not None and rs.ranks == [0, 1] and not rs.missing
    ra = analyze_ranks(rs)
    layer = ra.layer("model.layers.1")
    # rank 0 waits inside the all-reduce for rank 1's 20 ms of extra compute: the moments are alike
    assert layer.culprit_rank == 1, layer
    assert layer.last_share[1] > 0.5
    assert layer.compute_p50_ms[1] - layer.compute_p50_ms[0] > 0.5 * test_dist.W.STRAGGLER_S * 1e3
    code, out, err = _run(capsys, "report", str(sharded["dir"] / "tp" / "run.rank1.jsonl"), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert next(l for l in doc["layers"] if l["name"] == "model.layers.1")["culprit_rank"] == 1
    assert [r["rank"] for r in doc["ranks"]] == [0, 1]
