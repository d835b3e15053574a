"""The records of a ``moments/1`` recording, as types: one JSON object per line (design §4 and §10).

Every field added after the first landing is optional (``NotRequired``): readers ignore what they do
not know and tolerate what is missing, so old recordings stay loadable. Arrays named ``layer_*``
follow the header's ``layers`` list; ``None`` stands where a layer did not run.
"""

from typing import Any, Literal, NotRequired, TypedDict

StepKind = Literal["prefill", "decode", "encode"]
EndReason = Literal["completed", "interrupted", "error"]


class LayerEntry(TypedDict):
    """One hooked module, in the order that every per-step array follows."""

    name: str                        # module path in the model, e.g. "model.layers.3.self_attn"
    parent: int | None               # index of the enclosing layer entry; None for a top-level layer
    module: NotRequired[str]         # the module's class name


class HeaderRecord(TypedDict):
    type: Literal["header"]
    schema: str                      # "moments/1"
    model: dict[str, Any]            # name, architecture, parameters, dtype, random_weights
    device: dict[str, Any]           # kind, name, driver, torch and transformers versions
    clock: dict[str, Any]            # source ("nvml", "cpufreq", "cpu-nominal", "unavailable"), ...
    depth: str                       # "blocks" | "sublayers" | "leaves"
    attribution: NotRequired[str]    # "enclosing": a call counts to the entry whose parent is open
    layers: list[LayerEntry]
    tool: NotRequired[dict[str, Any]]
    started_at: NotRequired[str]
    timer: NotRequired[str]          # "perf_counter" | "cuda-events"
    sample_hz: NotRequired[float]
    util_hz: NotRequired[float]
    record_text: NotRequired[bool]
    run: NotRequired[dict[str, Any]]
    work: NotRequired[dict[str, Any]]   # per-layer FLOPs / bytes coefficients (engine.core.work)
    roof: NotRequired[dict[str, Any] | None]
    dist: NotRequired[dict[str, Any]]
    clock_origin: NotRequired[dict[str, int]]


class StepRecord(TypedDict):
    type: Literal["step"]
    index: int
    kind: StepKind
    t_ns: int                        # step start, ns since the session start (monotonic)
    wall_ms: float
    tokens: int
    layer_ms: list[float | None]
    layer_cycles: list[int | None]
    clock_mhz: float | None
    host_ms: NotRequired[float]
    batch: NotRequired[int]
    seq_len: NotRequired[int]
    past_len: NotRequired[int | None]          # positions cached before this step; None: unknown
    kv_len: NotRequired[int | list[int | None]]  # keys attention spans: one int, or one per cache layer
    head_tokens: NotRequired[list[int | None]]   # positions each head computed (header work column "head")
    layer_calls: NotRequired[list[int]]        # calls counted to each entry; its moment is their sum
    layer_nested_calls: NotRequired[list[int]]  # calls that ran inside a layer not their parent (time there)
    layer_start_ms: NotRequired[list[float | None]]
    clock_samples: NotRequired[int]
    cycles: NotRequired[int | None]
    unattributed_ms: NotRequired[float | None]
    throttle_reasons: NotRequired[list[str] | None]
    hooks_fired: NotRequired[bool]
    comm_ms: NotRequired[list[float | None]]
    variant: NotRequired[str]


class SampleRecord(TypedDict, total=False):
    """One reading of the clock sampler; a field the device does not support is ``None``."""

    type: Literal["sample"]
    t_ns: int
    source: str
    clock_mhz: float | None          # the clock that cycles use: the SM clock on GPU, the CPU clock on CPU
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    throttle_reasons: list[str] | None
    gpu_util_pct: float | None
    mem_util_pct: float | None
    power_w: float | None
    temp_c: float | None
    cpu_clock_mhz: float | None
    cpu_util_pct: float | None
    process_cpu_pct: float | None


class StatusRecord(TypedDict):
    type: Literal["status"]
    t_ns: NotRequired[int]
    level: str                       # "info" | "warning" | "error"
    message: str


class TextRecord(TypedDict):
    """Prompts and outputs; written only when the session records text."""

    type: Literal["text"]
    t_ns: int
    after_step: int
    prompts: list[str]
    outputs: NotRequired[list[str] | None]


class FooterRecord(TypedDict):
    type: Literal["footer"]
    t_ns: NotRequired[int]
    steps: int | None
    reason: EndReason
    error: NotRequired[str | None]


class OpRow(TypedDict):
    name: str
    calls: int
    ms: float


class OpsRecord(TypedDict):
    type: Literal["ops"]
    step: int
    layer: int
    ops: list[OpRow]


Record = HeaderRecord | StepRecord | SampleRecord | StatusRecord | TextRecord | FooterRecord | OpsRecord
