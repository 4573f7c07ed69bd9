"""What decides whether the score job may reuse pieces an earlier run committed: a fingerprint of
the model's files and of every option that changes a score or the written rows.

The model's part covers every file of the model directory (hidden files aside): its relative
path, its size and a digest of its whole content, so that no change to any byte goes unseen.
A file's digest is SHA-256 over the SHA-256 of each of its ``BLOCK`` (64 MiB) blocks, which lets
the blocks be read and hashed in parallel threads: a local directory with Python's ``hashlib``,
a model given as a URI (``oss://``, ``hdfs://``, ``file:``) in the driver's JVM through the
cluster's file system (positioned reads of whole blocks; only the 32-byte digests cross to
Python). Both give the same digest for the same bytes.

Digests are cached on the driver's node in ``<--cache-dir>/file-digests.json`` (the score job's
``--cache-dir``, default ``/tmp/promptscore-models``), keyed by the file's path, size and
modification time (and, for a local file, its inode and change time, which no copy tool can set
back), so a 16 GB model is read once per node, not once per run. Modification times are not
part of the digest: a model copied again (a new node, a new bootstrap) keeps its fingerprint.
The options part is in ``score_basis``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from promptscore.io import files, hadoop
from promptscore.score.pieces import FORMAT
from udfs.uris import has_scheme

# File names the model loaders read weights from; the tokenizer never needs them.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".npz", ".onnx")
WHOLE_BYTES = 64 << 20
BLOCK = 64 << 20
_PIECE = 8 << 20
CACHE_FILE = "file-digests.json"
MAX_CACHED = 4096
_LOCAL_THREADS = min(8, os.cpu_count() or 1)
_REMOTE_THREADS = 16


def block_ranges(size: int, block: int = BLOCK) -> list[tuple[int, int]]:
    """(offset, length) of the blocks a file of ``size`` bytes is hashed in (one empty block for an
    empty file)."""
    return [(o, min(block, size - o)) for o in range(0, size, block)] or [(0, 0)]


def _combine(blocks: list[bytes]) -> str:
    h = hashlib.sha256()
    for b in blocks:
        h.update(b)
    return h.hexdigest()


def _hash_local_block(path: str, offset: int, length: int) -> bytes:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < length:
            piece = os.pread(fd, min(_PIECE, length - done), offset + done)
            if not piece:
                raise OSError(f"{path} is shorter than it was listed ({offset + done} < {offset + length} bytes)")
            h.update(piece)
            done += len(piece)
    finally:
        os.close(fd)
    return h.digest()


class DigestCache:
    """File digests already computed on this node, by (path, size, times): a JSON file, written
    aside and renamed (two drivers at once lose an entry at worst, never corrupt the file), at
    most ``MAX_CACHED`` entries, the least recently used dropped first. Without a writable
    directory nothing is cached."""

    def __init__(self, directory: str | None):
        self.path = Path(directory) / CACHE_FILE if directory else None
        self.entries: dict[str, str] = {}
        self.changed = False
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text())
                if isinstance(data, dict) and isinstance(data.get("digests"), dict):
                    self.entries = {str(k): str(v) for k, v in data["digests"].items()}
            except (OSError, ValueError):
                pass

    def get(self, key: str) -> str | None:
        digest = self.entries.pop(key, None)
        if digest is not None:
            self.entries[key] = digest  # most recently used last
        return digest

    def put(self, key: str, digest: str) -> None:
        self.entries.pop(key, None)
        self.entries[key] = digest
        self.changed = True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        keep = dict(list(self.entries.items())[-MAX_CACHED:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            aside = self.path.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
            aside.write_text(json.dumps({"version": 1, "digests": keep}))
            os.replace(aside, self.path)
        except OSError:
            pass


def _digests(files: list[tuple[str, int, str]], hash_block: Callable[[str, int, int], bytes], threads: int,
             cache: DigestCache) -> dict[str, str]:
    """The digest of each file (name, size, cache key), from the cache or computed block by block
    in ``threads`` threads."""
    out: dict[str, str] = {}
    todo = []
    for name, size, key in files:
        hit = cache.get(key)
        if hit:
            out[name] = hit
        else:
            todo.append((name, size, key))
    jobs = [(name, i, off, length) for name, size, _ in todo for i, (off, length) in enumerate(block_ranges(size))]
    if jobs:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(jobs))),
                                thread_name_prefix="promptscore-hash") as pool:
            blocks = list(pool.map(lambda j: hash_block(j[0], j[2], j[3]), jobs))
        by_file: dict[str, list[bytes]] = {}
        for (name, _, _, _), digest in zip(jobs, blocks):
            by_file.setdefault(name, []).append(digest)
        for name, _, key in todo:
            out[name] = _combine(by_file[name])
            cache.put(key, out[name])
    return out


def _local_files(root: Path) -> list[tuple[str, int, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                path = Path(dirpath) / name
                st = path.stat()
                key = f"{os.path.realpath(path)}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ino}\t{st.st_ctime_ns}"
                out.append((path.relative_to(root).as_posix(), st.st_size, key))
    return out


def _remote_files(spark, base: str) -> list[tuple[str, int, str]]:
    root, found = files.walk(spark, base)
    prefix = root.rstrip("/") + "/"
    out = []
    for f in found:
        rel = f.path.removeprefix(prefix)
        if not any(part.startswith(".") for part in rel.split("/")):
            out.append((rel, f.size, f"{f.path}\t{f.size}\t{f.mtime_ms}"))
    return out


def model_digest(spark, model: str, manifest: list[tuple[str, int]] | None = None,
                 cache_dir: str | None = None, note: Callable[[str], Any] | None = None) -> str:
    """The digest of the model at ``model``: a local directory, or a URI read through the
    cluster's file system. ``manifest`` is unused (the files are listed here with their
    modification times). Digests not in ``cache_dir``'s cache are computed and added; ``note``
    gets one line before more than 1 GB is read."""
    cache = DigestCache(cache_dir)
    if not has_scheme(model):
        root = Path(model)
        files = _local_files(root)

        def hash_block(rel: str, offset: int, length: int) -> bytes:
            return _hash_local_block(str(root / rel), offset, length)

        threads = _LOCAL_THREADS
    else:
        base = model.rstrip("/")
        files = _remote_files(spark, base)

        def hash_block(rel: str, offset: int, length: int) -> bytes:
            return hadoop.sha256_range(spark, f"{base}/{rel}", offset, length, _PIECE)

        threads = _REMOTE_THREADS
    new_bytes = sum(size for _, size, key in files if key not in cache.entries)
    started = time.monotonic()
    if note is not None and new_bytes > 1 << 30:
        note(f"reading the model's {new_bytes / 2**30:.1f} GiB once on this node for the resume fingerprint "
             f"(cached in {cache.path or 'nothing: no --cache-dir'})")
    digests = _digests(files, hash_block, threads, cache)
    cache.save()
    h = hashlib.sha256()
    for rel, size, _ in sorted(files):
        h.update(f"{rel}\0{size}\0{digests[rel]}\n".encode())
    if note is not None and new_bytes > 1 << 30:
        note(f"hashed {new_bytes / 2**30:.1f} GiB in {time.monotonic() - started:.0f} s")
    return h.hexdigest()


def score_basis(model: str, backend: str, template: str, text_col: str, response_col: str | None,
                engine: Any, compression: str, schema_json: str) -> dict:
    """Everything that changes a score or the rows a piece holds: the model, the backend and
    the engine options that change numbers (dtype, quantization, max-model-len, tensor
    parallelism, the transformers device, every ``--engine-args`` entry), the template and
    columns, the input's schema, the Parquet codec and the pieces' format version. Left out, so that
    a rerun may change them and still resume: ``--gpu-memory-utilization``,
    ``--max-num-batched-tokens``, ``--max-num-seqs``, ``--partitions`` and ``--cache-dir``."""
    return {
        "pieces_format": FORMAT, "model": model, "backend": backend, "template": template,
        "text_col": text_col, "response_col": response_col, "max_model_len": engine.max_model_len,
        "dtype": engine.dtype, "quantization": engine.quantization,
        "tensor_parallel_size": engine.tensor_parallel_size, "device": engine.device,
        "engine_args": engine.engine_args, "compression": compression, "schema": schema_json,
    }


def fingerprint(basis: dict) -> str:
    """A short, stable name for ``basis``."""
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()[:16]
