"""Input streams: built-in sample texts, a file (one text a line, or JSON Lines with "text"), stdin."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

from llm_moments.engine.errors import MomentsError

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model turns a sequence of tokens into a distribution over the next one.",
    "Clock speed, memory bandwidth and kernel launch overhead all shape inference latency.",
    "Attention lets every position look at every other position in the sequence.",
    "The embedding layer maps token ids to dense vectors before the first block.",
    "Profilers that synchronize after every module change the very timing they measure.",
    "On a busy server, the GPU may drop its clock when it reaches its power limit.",
    "Sentence embeddings are compared with cosine similarity for semantic search.",
    "Decoding one token at a time reads every weight of the model once per token.",
    "Layer normalization rescales activations so that deep networks train stably.",
    "A small model on a fast GPU spends much of its time launching kernels.",
    "Batching several requests together raises throughput at the cost of latency.",
    "The key-value cache grows with every generated token and every layer.",
    "Thermal throttling shows up as a slow step with a lower SM clock.",
    "Mixed precision halves the bytes read for each weight and speeds up matrix units.",
    "What gets measured gets improved, as long as the measurement is honest.",
]


def read_texts(source: str | None) -> list[str]:
    """Texts from ``source``: None → built-in samples, "-" → stdin, else a file path."""
    if source is None:
        return list(SAMPLE_TEXTS)
    if source == "-":
        lines = sys.stdin.read().splitlines()
        where = "stdin"
    else:
        path = Path(source).expanduser()
        where = str(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise MomentsError(f"inputs file {path} does not exist") from None
        except IsADirectoryError:
            raise MomentsError(f"inputs file {path} is a directory") from None
        except UnicodeDecodeError:
            raise MomentsError(f"inputs file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise MomentsError(f"cannot read inputs file {path}: {exc.strerror or exc}") from None
    texts = _parse(lines, where)
    if not texts:
        raise MomentsError(f"inputs from {where} are empty: give one text per line, or JSON Lines with a \"text\" field")
    return texts


def _parse(lines: Iterable[str], where: str) -> list[str]:
    texts = []
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise MomentsError(f"{where}:{lineno}: looks like JSON but does not parse") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise MomentsError(f"{where}:{lineno}: a JSON line needs a string \"text\" field")
            if text.strip():
                texts.append(text)
        else:
            texts.append(line)
    return texts


def batches(texts: list[str], batch_size: int, loop: bool) -> Iterator[list[str]]:
    """Groups of ``batch_size`` texts, wrapping round the list; for ever when ``loop``."""
    if batch_size < 1:
        raise MomentsError("--batch-size must be at least 1")
    stream = itertools.cycle(texts) if loop else iter(texts)
    while True:
        batch = list(itertools.islice(stream, batch_size))
        if not batch:
            return
        yield batch
        if not loop and len(batch) < batch_size:
            return
