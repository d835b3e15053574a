"""Input streams: built-in sample texts, a file (one text a line, or JSON Lines with "text"), stdin."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

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


INPUTS_CAP = 64 << 20  # bytes of inputs read at most (file or stdin): they are all held in memory


def read_texts(source: str | None) -> list[str]:
    """Texts from ``source``: None → built-in samples, "-" → stdin, else a file path.

    A file must be a regular file (a device such as /dev/zero, a FIFO or a socket is refused before
    anything is read, and the open never waits); a file or stdin larger than ``INPUTS_CAP`` is refused."""
    from llm_moments.engine.core import files

    if source is None:
        return list(SAMPLE_TEXTS)
    cap = files.human_bytes(INPUTS_CAP)
    if not str(source).strip():
        raise MomentsError("--inputs is empty: give a file (one text per line, or JSON Lines), or - for stdin")
    if source == "-":
        where = "stdin"
        stream = getattr(sys.stdin, "buffer", None)
        try:
            data = files.read_stream(stream, INPUTS_CAP) if stream is not None else \
                sys.stdin.read(INPUTS_CAP + 1).encode("utf-8")
        except files.TooLarge:
            raise MomentsError(f"inputs from stdin are larger than {cap}") from None
        if len(data) > INPUTS_CAP:
            raise MomentsError(f"inputs from stdin are larger than {cap}")
    else:
        path = Path(source).expanduser()
        where = str(path)
        try:
            data = files.read_regular(path, INPUTS_CAP)
        except FileNotFoundError:
            raise MomentsError(f"inputs file {path} does not exist") from None
        except IsADirectoryError:
            raise MomentsError(f"inputs file {path} is a directory") from None
        except files.NotRegular:
            raise MomentsError(f"inputs file {path} is not a regular file (a device, pipe or socket is not "
                               "read; give a file, or - for stdin)") from None
        except files.TooLarge:
            raise MomentsError(f"inputs file {path} is larger than {cap}") from None
        except OSError as exc:
            raise MomentsError(f"cannot read inputs file {path}: {exc.strerror or exc}") from None
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        what = "inputs from stdin are" if source == "-" else f"inputs file {where} is"
        raise MomentsError(f"{what} not UTF-8 text") from None
    texts = _parse(lines, where)
    if not texts:
        raise MomentsError(f"inputs from {where} are empty: give one text per line, "
                           "or JSON Lines with a \"text\" field")
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
