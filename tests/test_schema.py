"""The recording's types (engine.core.schema) match what a real session writes, and the Protocols
describe the real clock sources; ``print(mon.summary())`` is the CLI's table."""

from __future__ import annotations

import typing

import torch
from conftest import FakeClock, generate, read_lines

from llm_moments import Monitor
from llm_moments.engine.core import schema
from llm_moments.engine.core.sampler import ClockSource, CpuClockSource, UnavailableClockSource
from llm_moments.engine.output.text import render_text

TYPES = {"header": schema.HeaderRecord, "step": schema.StepRecord, "sample": schema.SampleRecord,
         "status": schema.StatusRecord, "text": schema.TextRecord, "footer": schema.FooterRecord}


def _keys(td: type) -> tuple[set[str], set[str]]:
    hints = typing.get_type_hints(td, include_extras=True)
    return set(td.__required_keys__), set(hints)


def test_every_record_of_a_real_session_fits_its_type(tmp_path, tiny_gpt2):
    path = tmp_path / "run.jsonl"
    with Monitor(tiny_gpt2, record=path, sample_hz=20, record_text=True) as mon:
        generate(tiny_gpt2, torch.tensor([[5, 6, 7]]), 3)
        mon.note_text(["hello"], ["world"]) if hasattr(mon, "note_text") else None
    records = read_lines(path)
    seen = set()
    for record in records:
        rtype = record["type"]
        if rtype not in TYPES:
            continue
        seen.add(rtype)
        required, known = _keys(TYPES[rtype])
        assert required <= set(record), (rtype, required - set(record))
        assert set(record) <= known, (rtype, set(record) - known)
    assert {"header", "step", "footer"} <= seen
    header = records[0]
    required, known = _keys(schema.LayerEntry)
    for layer in header["layers"]:
        assert required <= set(layer) and set(layer) <= known


def test_the_clock_sources_satisfy_the_protocol():
    assert isinstance(CpuClockSource(), ClockSource)
    assert isinstance(UnavailableClockSource("no clock"), ClockSource)
    assert isinstance(FakeClock(), ClockSource)


def test_print_of_the_summary_is_the_cli_table(plain_net, capsys):
    with Monitor(plain_net, clock_source=FakeClock()) as mon:
        for _ in range(3):
            plain_net(torch.randint(0, 16, (2, 5)))
    summary = mon.summary()
    print(summary)
    printed = capsys.readouterr().out
    assert printed == render_text(summary, mon.header) + "\n"
    assert printed.splitlines()[0].strip()  # the header line (model, device, clock) comes first
    assert "PlainNet" in printed.splitlines()[0]


def test_the_cpu_timer_satisfies_the_timer_protocol():
    from llm_moments.engine.core.timing import CpuTimer, Timer, make_timer

    timer = make_timer(3, "cpu")
    assert isinstance(timer, Timer) and isinstance(timer, CpuTimer)
    timer.begin_step()
    timer.start(1)
    timer.stop(1)
    timer.nest(2)
    done = timer.resolve(timer.end_step())
    assert done.calls == [0, 1, 0] and done.nested == [0, 0, 1] and done.layer_ns[1] > 0
