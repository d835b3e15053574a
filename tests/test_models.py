"""Model loading (devices, dtypes, specs, local directories) and the runner over a loaded model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import FakeClock

from llm_moments import Monitor
from llm_moments.engine.core.recording import load
from llm_moments.engine.errors import MomentsError
from llm_moments.engine.session.models import PRESETS, load_model, minilm_dir, resolve_device, resolve_dtype
from llm_moments.engine.session.monitor import NO_LAYER_TIMING
from llm_moments.engine.session.runner import run_batch, stream

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages on a machine without a GPU")


@no_gpu
def test_auto_device_is_the_cpu_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")


@no_gpu
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_an_error(spec):
    with pytest.raises(MomentsError, match=f"--device {spec}: no CUDA GPU is visible"):
        resolve_device(spec)


def test_unknown_device_and_dtype():
    with pytest.raises(MomentsError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(MomentsError, match="unknown dtype 'int4'"):
        resolve_dtype("int4", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_unknown_preset_and_missing_path(tmp_path):
    with pytest.raises(MomentsError, match="unknown model 'no-such-preset': not a preset"):
        load_model("no-such-preset", device="cpu")
    with pytest.raises(MomentsError, match="unknown model"):
        load_model(str(tmp_path / "missing" / "dir"), device="cpu")


def test_directory_without_config(tmp_path):
    with pytest.raises(MomentsError, match=r"is not a Hugging Face model directory \(no config.json\)"):
        load_model(str(tmp_path), device="cpu")


def test_directory_with_a_broken_config(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(MomentsError, match=f"cannot load the model in {tmp_path}"):
        load_model(str(tmp_path), device="cpu")


def test_presets_are_described():
    assert set(PRESETS) >= {"minilm", "tiny-gpt2", "tiny-llama"}
    assert "RANDOM" in PRESETS["tiny-gpt2"]["about"] and "real weights" in PRESETS["minilm"]["about"]
    assert (minilm_dir() / "config.json").is_file()


# -- a local model directory, and the runner over it ------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 saved as a Hugging Face directory, with the MiniLM tokenizer's files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-gpt2-dir")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=128, vocab_size=30522,
                        bos_token_id=101, eos_token_id=102, pad_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, path / name)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(str(model_dir), device="cpu")


def test_local_directory_loads_as_a_decoder(loaded, model_dir):
    assert loaded.generative is True
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    info = loaded.info
    assert info["source"] == "directory" and info["name"] == str(model_dir.resolve())
    assert info["architecture"] == "GPT2LMHeadModel"
    assert info["random_weights"] is False  # loaded from files: whatever they hold is "real"
    assert info["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.tokenizer.padding_side == "left"  # decoders continue from the last real token
    assert not loaded.model.training


def test_run_batch_generates_the_asked_number_of_tokens(loaded):
    outputs, expected = run_batch(loaded, ["hello world", "a longer second prompt here"], 3)
    assert expected == 3
    assert isinstance(outputs, list) and len(outputs) == 2 and all(isinstance(o, str) for o in outputs)


def test_stream_finishes_the_batch_it_started(loaded, tmp_path):
    path = tmp_path / "stream.jsonl"
    with Monitor(loaded.model, record=path, clock_source=FakeClock(), model_info=loaded.info) as mon:
        n = stream(loaded, ["one text", "two texts", "three"], mon, batch_size=2, max_new_tokens=2, steps=3)
    assert n == 2  # 2 steps per generate(): after the first batch 2 < 3, after the second 4 ≥ 3
    rec = load(path)
    assert [s["kind"] for s in rec.steps] == ["prefill", "decode"] * 2
    assert all(s["batch"] == 2 for s in rec.steps)
    assert [s["tokens"] for s in rec.steps][1::2] == [2, 2]
    texts = [o for o in rec.others if o["type"] == "text"]
    assert [t["prompts"] for t in texts] == [["one text", "two texts"], ["three", "one text"]]
    assert [t["after_step"] for t in texts] == [1, 3]
    assert rec.header["model"]["source"] == "directory"


def test_stream_stops_when_asked(loaded):
    import threading

    stop = threading.Event()
    with Monitor(loaded.model, clock_source=FakeClock(), model_info=loaded.info) as mon:
        n = stream(loaded, ["x"], mon, max_new_tokens=2, steps=None, stop=stop,
                   on_batch=lambda i: stop.set() if i == 2 else None)
    assert n == 2 and mon.steps_recorded == 4


def test_stream_reports_steps_the_hooks_did_not_see(loaded):
    import threading

    stop = threading.Event()
    with Monitor(loaded.model, clock_source=FakeClock(), model_info=loaded.info) as mon:
        mon.hooks.detach()  # the model runs, the monitor sees none of it (as under CUDA graph replay)
        stream(loaded, ["x"], mon, max_new_tokens=2, steps=None, stop=stop, on_batch=lambda i: stop.set())
    assert mon.steps_recorded == 0
    assert [s for s in mon.statuses if s.startswith("no per-layer timing")] == [
        f"{NO_LAYER_TIMING}: saw 0 of 2 forward steps"]
