"""Shared fixtures for the engine's behavioural tests: tiny models, a fake clock, a CLI runner.

Everything here is small on purpose: models are built in the test with random weights (a few
thousand parameters), so the whole suite runs in a few minutes on a 2-core CPU machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

# Tiny ops on two threads spend their time in the thread pool's hand-offs, and on a shared
# machine that turns a 1 ms forward into 100 ms. One thread keeps the suite fast and steady.
torch.set_num_threads(1)


# -- fake clock sources ------------------------------------------------------------------------


class FakeClock:
    """A clock source with a fixed clock: cycles become exactly moment × clock."""

    def __init__(self, clock_mhz: float | None = 1000.0, name: str = "fake", status: str | None = None):
        self.clock_mhz = clock_mhz
        self.name = name
        self.status = status
        self.fast_reads = 0

    def info(self) -> dict[str, Any]:
        return {"name": "fake clock", "nominal_mhz": self.clock_mhz}

    def read_fast(self) -> dict[str, Any]:
        self.fast_reads += 1
        return {"clock_mhz": self.clock_mhz}

    def read_slow(self) -> dict[str, Any]:
        return {"util_pct": None}

    def close(self) -> None:
        pass


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(1000.0)


# -- plain models --------------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return x + self.drop(self.fc(self.norm(x)))


class PlainNet(nn.Module):
    """An embedding, a list of same-typed blocks, a head: the shape every transformer has."""

    def __init__(self, n_blocks: int = 3, dim: int = 8, vocab: int = 16, block: type[nn.Module] = Block):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(block(dim) for _ in range(n_blocks))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Bare(nn.Module):
    """A model without children: it is its own only layer."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.weight


@pytest.fixture
def plain_net() -> PlainNet:
    torch.manual_seed(0)
    return PlainNet().eval()


def ids(batch: int = 2, seq: int = 5, vocab: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq))


# -- tiny transformers models (random weights) -----------------------------------------------------

_IDS = {"vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_gpt2():
    _quiet_transformers()
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **_IDS)).eval()


@pytest.fixture(scope="session")
def tiny_llama():
    _quiet_transformers()
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=64, **_IDS)).eval()


@pytest.fixture(scope="session")
def tiny_bert():
    _quiet_transformers()
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                num_attention_heads=2, max_position_embeddings=64,
                                vocab_size=64, pad_token_id=0)).eval()


def generate(model, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy generation of exactly ``new_tokens`` tokens (one prefill + new_tokens - 1 decodes)."""
    with torch.inference_mode():
        return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=0)


# -- recordings -----------------------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


# -- the command line -------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MOMENTS_DEBUG", None)
    env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "NO_COLOR": "1",
                "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def _default_sigint() -> None:
    # A child of a non-interactive shell's background job inherits SIGINT ignored, and Python then
    # leaves it ignored: give the CLI the disposition a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


MOMENTS = Path(sys.executable).parent / "moments"  # the installed console script


def cli_cmd(*args: str, moments: bool = False) -> list[str]:
    """``python -m llm_moments.engine ARGS`` (the engine alone), or the installed ``moments ARGS`` when asked."""
    if moments and MOMENTS.exists():
        return [str(MOMENTS), *args]
    return [sys.executable, "-P", "-m", "llm_moments.engine", *args]


def run_cli(*args: str, timeout: float = 180, env: dict[str, str] | None = None,
            cwd: Path | str | None = None, moments: bool = False) -> subprocess.CompletedProcess:
    """The CLI in a subprocess; the timeout only guards against hangs."""
    return subprocess.run(cli_cmd(*args, moments=moments), capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env(), cwd=cwd or ROOT)


def popen_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | str | None = None) -> subprocess.Popen:
    return subprocess.Popen(cli_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or cli_env(), cwd=cwd or ROOT, preexec_fn=_default_sigint)


# -- sharded sessions ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sharded(tmp_path_factory):
    """Two gloo ranks run once for the whole suite (tests/dist_worker.py: tensor parallel with a 20 ms
    straggler on rank 1, then pipeline parallel); the sharded-session tests read what they recorded:
    {"dir": out, "model": model dir}."""
    import importlib.util
    import time

    import dist_worker as W
    import torch.multiprocessing as mp

    if importlib.util.find_spec("accelerate") is None or not torch.distributed.is_gloo_available():
        pytest.skip("needs accelerate and gloo")

    out = tmp_path_factory.mktemp("ranks")
    model_dir = W.save_tiny_llama(out / "model")
    ctx = mp.spawn(W.main, args=(2, str(out / "store"), model_dir, str(out), ("tp", "pp")), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the two ranks did not finish in {240} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()  # only our own children, by handle
    errors = sorted(out.glob("error.rank*.txt"))
    assert not errors, errors[0].read_text()
    return {"dir": out, "model": model_dir}
