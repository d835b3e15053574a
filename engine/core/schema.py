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
    module: NotRequired[str]         # the module's class name ("(synthetic)" for a synthetic entry)
    # Placement (design §10), written by every session since sharded sessions landed:
    device: NotRequired[str | None]  # where the layer computes ("cpu", "cuda:1"); None when absent
    present: NotRequired[bool]       # False: another pipeline stage owns it (placeholder, never timed)
    comm: NotRequired[str | None]    # collective it holds from the TP plan: "all_reduce", "all_gather",
                                     # "+"-joined if several; "p2p+broadcast" for the pipeline row; None
    offload: NotRequired[str | None]  # "disk" | "cpu": weights loaded from there at every call (accelerate)
    synthetic: NotRequired[bool]     # not a module: "(pipeline recv/send)", the stage's communication wait
    transfer_in: NotRequired[bool]   # layers on several GPUs: the first entry on a GPU after another GPU;
                                     # its moment holds the copy of its inputs from there (absent: no)


class DistLayout(TypedDict):
    """This rank's place in the parallel layout."""

    tp: int                          # tensor-parallel size
    pp: int                          # pipeline stages
    dp: int                          # data-parallel replicas
    tp_rank: int
    pp_rank: int
    dp_rank: int
    mesh: NotRequired[dict[str, int]]  # transformers' device mesh, dim name → size


class DistInfo(TypedDict):
    """Header ``dist``: written when torch.distributed runs with world size > 1 (one file per rank)."""

    rank: int                        # global rank; the file is <name>.rank{rank}.<ext>
    local_rank: int
    world_size: int
    host: str
    backend: str | None              # "nccl", "gloo", ...
    layout: DistLayout
    engine: str | None               # "transformers-tp", "transformers-pp", "transformers-tp+pp",
                                     # "accelerate-device-map", "ddp", "fsdp", "replicated"
    session: str                     # the same on every rank of one session


class ClockOrigin(TypedDict):
    """Header ``clock_origin``: ``t_ns`` 0 of the session = ``perf_counter_ns``, read with ``time_ns``."""

    perf_counter_ns: int
    time_ns: int                     # wall clock (ns since the epoch): a record's wall time = time_ns + t_ns
    read_ns: NotRequired[int]        # how long the paired read took (its uncertainty)


class OverheadInfo(TypedDict):
    """Header ``overhead``: the monitor's own cost estimated at start (engine/core/overhead.py)."""

    depth: str
    hook_pair_us: float | None       # one pre/post hook pair, measured here at start (median of rounds)
    bare_call_us: NotRequired[float | None]  # the plain call of an nn.Identity, for scale
    calibration_rounds: NotRequired[int]
    hooks_per_step: int              # at start: the hooked modules (one pair each per step)
    worker_us_per_step: float | None  # unknown at start (None): the overhead records measure it
    step_ms: float | None            # a typical step timed before the session (unhooked warm-up), if any
    step_kind: NotRequired[str]      # "decode step" | "step"
    est_pct: float | None            # (hook pair × hooks + worker) / step × 100; None without a step time


class OverheadRecord(TypedDict):
    """``{"type": "overhead"}``: the cost measured while the session runs, every few seconds
    (``window: "period"``) and once over the whole session before the footer (``"session"``)."""

    type: Literal["overhead"]
    t_ns: int
    window: str                      # "period" | "session"
    steps: int                       # steps in the window
    hook_pair_us: float | None
    hooks_per_step: float | None     # hook pairs fired per step: calls + nested calls + the step's root
    worker_us_per_step: float | None  # the worker thread's CPU time per step (time.thread_time_ns)
    step_p50_ms: float | None
    est_pct: float | None


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
    dist: NotRequired[DistInfo]
    clock_origin: NotRequired[ClockOrigin]
    sharding: NotRequired[dict[str, Any]]  # {"engine", "device_map"?, "offload"?: ["disk", ...]} when split
    overhead: NotRequired[OverheadInfo | None]  # the monitor's own cost, estimated at start


class DeviceStep(TypedDict):
    """One GPU's part of a step (step ``devices``, written only when the layers sit on several GPUs)."""

    clock_mhz: float | None          # that device's clock during the step (its own samples)
    clock_samples: int               # its samples inside the step
    throttle_reasons: list[str] | None
    busy_ms: float                   # Σ top-level moments of the layers on it


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
    clock_buffered: NotRequired[int]   # driver-buffered clock samples inside the step (NVML), which then
                                       # set clock_mhz; absent where the driver buffers none (polled clock)
    cycles: NotRequired[int | None]
    unattributed_ms: NotRequired[float | None]
    throttle_reasons: NotRequired[list[str] | None]
    hooks_fired: NotRequired[bool]
    # Waits inside the moment (design §10). Each is the time inside the layer: an entry's own spans plus
    # its descendants'; None where the layer did not run or holds none. compute = layer_ms - comm - load.
    comm_ms: NotRequired[list[float | None]]   # in collectives (TP style transforms; the pipeline row: all)
    comm_outside_ms: NotRequired[float]        # collectives while no layer was open (absent when 0)
    load_ms: NotRequired[list[float | None]]   # loading offloaded weights (accelerate pre/post_forward)
    pipeline_ms: NotRequired[dict[str, float]]  # the pipeline row split: "recv", "send", "broadcast"
    variant: NotRequired[str]
    # Layers on several GPUs only (a device_map; absent on one device): each entry's clock is its own
    # device's, layer_cycles use it, and clock_mhz / cycles use the devices' clocks weighted by busy_ms.
    layer_clock_mhz: NotRequired[list[float | None]]
    devices: NotRequired[dict[str, DeviceStep]]   # "cuda:0" → that device's clock and busy time


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
    pcie_tx_kbps: float | None       # PCIe throughput, KB/s (NVML, read at most once a second)
    pcie_rx_kbps: float | None
    nvlink_tx_kbps: float | None     # NVLink data throughput, KB/s, from the counters' change (NVML)
    nvlink_rx_kbps: float | None
    clock_buffered: int              # driver-buffered clock samples that came with this read (NVML)
    devices: dict[str, dict[str, Any]]  # several GPUs: every device's fields by device ("cuda:1");
                                        # the top-level fields are the first device's


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
    name: str                  # the aten overload packet: "aten.mm"
    calls: int
    ms: float
    flops: NotRequired[int]    # only for ops with a torch.utils.flop_counter formula; absent when unknown


class OpsRecord(TypedDict):
    type: Literal["ops"]
    step: int
    layer: int
    layer_ms: NotRequired[float]   # the layer's own span with ops mode on
    ops: list[OpRow]


Record = (HeaderRecord | StepRecord | SampleRecord | StatusRecord | TextRecord | FooterRecord | OpsRecord
          | OverheadRecord)
