"""What decides whether the score job may reuse pieces an earlier run committed: a fingerprint of
the model's files and of every option that changes a score or the written rows.

The model's part reads, for each file of the model directory (hidden files aside): its relative
path and size, and

- the whole content of files up to ``WHOLE_BYTES`` that are not weights (``config.json``, the
  tokenizer files, the chat template): a changed tokenizer or config changes the fingerprint;
- for weight files and anything larger, ``SAMPLES`` blocks of ``BLOCK`` bytes spread evenly over
  the file (first and last included): a fine-tune of the same shape differs in essentially every
  block, so it is told apart without reading gigabytes.

Modification times are left out, so a model copied again (a new node, a new bootstrap) keeps its
fingerprint. The options part is in ``score_basis``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from promptscore import __version__, hadoop
from udfs.uris import has_scheme

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".npz", ".onnx")
WHOLE_BYTES = 64 << 20
SAMPLES = 16
BLOCK = 64 << 10


def sample_offsets(size: int, samples: int = SAMPLES, block: int = BLOCK) -> list[tuple[int, int]]:
    """(offset, length) of the blocks read from a file of ``size`` bytes: evenly spread, the first
    at 0 and the last ending at the end of the file; the whole file when it is that small."""
    if size <= samples * block:
        return [(0, size)] if size else []
    step = (size - block) / (samples - 1)
    return [(round(i * step), block) for i in range(samples)]


def digest_files(files: Iterable[tuple[str, int]], read: Callable[[str, int, int], bytes]) -> str:
    """The digest of a model directory given its files (relative path, size) and a reader
    ``read(relative path, offset, length)``."""
    h = hashlib.sha256()
    for rel, size in sorted(files):
        h.update(f"{rel}\0{size}\0".encode())
        whole = size <= WHOLE_BYTES and not rel.endswith(WEIGHT_SUFFIXES)
        for offset, length in [(0, size)] if whole else sample_offsets(size):
            if length:
                h.update(read(rel, offset, length))
    return h.hexdigest()


def _local_files(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath) / name
                out.append((path.relative_to(root).as_posix(), path.stat().st_size))
    return out


def model_digest(spark, model: str, manifest: list[tuple[str, int]] | None) -> str:
    """The digest of the model at ``model``: a local directory, or a URI whose files (relative
    path, size) are ``manifest``, read through the cluster's file system."""
    if not has_scheme(model):
        root = Path(model)

        def read_local(rel: str, offset: int, length: int) -> bytes:
            with open(root / rel, "rb") as f:
                f.seek(offset)
                return f.read(length)

        return digest_files(_local_files(root), read_local)
    base = model.rstrip("/")
    files = [(rel, size) for rel, size in manifest or [] if not any(p.startswith(".") for p in rel.split("/"))]
    return digest_files(files, lambda rel, offset, length: hadoop.read_range(spark, f"{base}/{rel}", offset, length))


def score_basis(model: str, backend: str, template: str, text_col: str, response_col: str | None,
                engine: Any, compression: str, schema_json: str) -> dict:
    """Everything that changes a score or the rows a piece holds: the model, the backend and
    the engine options that change numbers (dtype, quantization, max-model-len, tensor
    parallelism, the transformers device, every ``--engine-args`` entry), the template and
    columns, the input's schema, the Parquet codec and this package's version. Left out, so that
    a rerun may change them and still resume: ``--gpu-memory-utilization``,
    ``--max-num-batched-tokens``, ``--max-num-seqs``, ``--partitions`` and ``--cache-dir``."""
    return {
        "promptscore": __version__, "model": model, "backend": backend, "template": template,
        "text_col": text_col, "response_col": response_col, "max_model_len": engine.max_model_len,
        "dtype": engine.dtype, "quantization": engine.quantization,
        "tensor_parallel_size": engine.tensor_parallel_size, "device": engine.device,
        "engine_args": engine.engine_args, "compression": compression, "schema": schema_json,
    }


def fingerprint(basis: dict) -> str:
    """A short, stable name for ``basis``."""
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:16]
