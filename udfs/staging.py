"""Copying a model directory to local disk once per node: locked, size-checked, marked complete.

Two ways in, one lock, one marker and one check:

- ``stage(source, dest)`` copies a source (``DirSource``, or for ``oss://`` the
  ``promptscore.tools.oss_source.OssSource`` that ``promptscore.tools.stage_model`` picks) file by
  file, keeping files already there with the right size and resuming partial ones.
  ``python -m promptscore.tools.stage_model`` (the EMR bootstrap action) runs it.
- ``local_model(model, cache_dir, manifest)`` is what every Spark worker calls: a plain path is
  used in place; a URI is copied into ``cache_dir`` by the first worker of the node while the
  others wait, through the cluster's own ``hadoop fs -copyToLocal`` (the job's connector and
  credentials: JindoSDK and the ECS RAM role on EMR), or directly for ``file:``.

Either way the copy holds the node-wide lock ``<dest>.lock``, is checked against the source's file
sizes, and gets a marker file (``MARKER``) once complete; a later call finds the marker and sizes
right and returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence
from urllib.parse import urlparse

from udfs.locks import file_lock
from udfs.uris import has_scheme, redact

MARKER = ".promptscore-complete"

Manifest = Sequence[tuple[str, int]]


class StagingError(Exception):
    """The model could not be copied to local disk; the message (one line) says why and what to do."""


@dataclass(frozen=True, order=True)
class Entry:
    """One file of a model directory: its path relative to the directory ("/"-separated), its size."""

    path: str
    size: int


class Source(Protocol):
    """Where a model directory comes from."""

    def entries(self) -> list[Entry]:
        """Every file of the directory."""

    def fetch(self, entry: Entry, target: Path) -> None:
        """Bring ``entry`` to ``target``, resuming a partial ``target`` if there is one."""


def local_path(uri: str) -> str:
    """The path of a ``file:`` URI (``file:///x`` or ``file:/x``); any other string unchanged."""
    return urlparse(uri).path if uri.startswith("file:") else uri


class DirSource:
    """A model directory on a local or mounted file system (a path or a ``file:`` URI)."""

    def __init__(self, root: str):
        self.root = Path(local_path(root))
        if not self.root.is_dir():
            raise StagingError(f"source {root} is not a directory")

    def entries(self) -> list[Entry]:
        """Every file under the directory."""
        return sorted(Entry(p.relative_to(self.root).as_posix(), p.stat().st_size)
                      for p in self.root.rglob("*") if p.is_file())

    def fetch(self, entry: Entry, target: Path) -> None:
        """Copy ``entry`` to ``target``, appending to a shorter ``target``."""
        have = target.stat().st_size if target.exists() else 0
        if have > entry.size:
            target.unlink()
            have = 0
        with open(self.root / entry.path, "rb") as src, open(target, "ab") as dst:
            src.seek(have)
            shutil.copyfileobj(src, dst, 8 << 20)


def size_problems(directory: Path, entries: Iterable[Entry | tuple[str, int]]) -> list[str]:
    """What in ``directory`` differs from ``entries`` (path, size): missing files, wrong sizes."""
    problems = []
    for e in entries:
        rel, size = (e.path, e.size) if isinstance(e, Entry) else e
        f = directory / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif f.stat().st_size != size:
            problems.append(f"{rel} has {f.stat().st_size} bytes, expected {size}")
    return problems


def _complete(directory: Path, entries: Iterable[Entry | tuple[str, int]]) -> bool:
    return (directory / MARKER).is_file() and not size_problems(directory, entries)


def _mark_complete(directory: Path, source: str, entries: Iterable[Entry | tuple[str, int]]) -> None:
    files = [[e.path, e.size] if isinstance(e, Entry) else list(e) for e in entries]
    (directory / MARKER).write_text(json.dumps({"source": redact(source), "files": files}))


def _log(msg: str) -> None:
    print(f"[promptscore staging] {msg}", file=sys.stderr, flush=True)


def _node_lock(dest: Path):
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Readable by all: a model cache directory may be shared by the users of a node.
    return file_lock(str(dest) + ".lock", mode=0o644)


def stage(source: Source, dest: str | Path, label: str = "") -> dict[str, int]:
    """Copy ``source`` into ``dest`` unless it is there already; returns what was done."""
    dest = Path(dest)
    with _node_lock(dest):
        entries = source.entries()
        if not entries:
            raise StagingError(f"source {redact(label)} holds no files")
        if _complete(dest, entries):
            _log(f"{dest} is complete already ({len(entries)} files)")
            return {"copied": 0, "kept": len(entries), "bytes": 0}
        dest.mkdir(parents=True, exist_ok=True)
        (dest / MARKER).unlink(missing_ok=True)
        start, copied, kept, nbytes = time.monotonic(), 0, 0, 0
        for e in entries:
            final = dest / e.path
            if final.is_file() and final.stat().st_size == e.size:
                kept += 1
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(final.name + ".partial")
            if final.exists():
                final.unlink()  # wrong size: copy again
            source.fetch(e, partial)
            if partial.stat().st_size != e.size:
                raise StagingError(f"{e.path}: got {partial.stat().st_size} bytes, expected {e.size}; "
                                   "run again to resume")
            os.replace(partial, final)
            copied += 1
            nbytes += e.size
            _log(f"copied {e.path} ({e.size:,} bytes)")
        problems = size_problems(dest, entries)
        if problems:
            raise StagingError(f"{dest} does not match {redact(label)}: {'; '.join(problems[:3])}")
        _mark_complete(dest, label, entries)
        shutil.rmtree(dest / ".oss2-checkpoints", ignore_errors=True)
        _log(f"{dest} complete: {copied} copied ({nbytes:,} bytes), {kept} kept, {time.monotonic() - start:.1f} s")
        return {"copied": copied, "kept": kept, "bytes": nbytes}


def cache_path(uri: str, cache_dir: str) -> Path:
    """Where ``uri`` is cached: a readable name plus a hash of the whole URI."""
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    return Path(cache_dir) / f"{name}-{hashlib.sha1(uri.encode()).hexdigest()[:12]}"


def _copy_tree(uri: str, target: Path) -> None:
    if uri.startswith("file:"):
        shutil.copytree(local_path(uri), target)
        return
    hadoop = shutil.which("hadoop")
    if hadoop is None:
        raise StagingError(f"cannot copy {redact(uri)}: no `hadoop` command on this node; stage the model to "
                           "local disk first (bootstrap/stage-model.sh) and pass that directory to --model")
    proc = subprocess.run([hadoop, "fs", "-copyToLocal", uri.rstrip("/"), str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StagingError(f"hadoop fs -copyToLocal {redact(uri)} failed: {last}")


def local_model(model: str, cache_dir: str, manifest: Manifest | None = None) -> str:
    """A local directory holding the model: ``model`` itself, or its copy in ``cache_dir``,
    checked against ``manifest`` (relative path, size) when given."""
    if not has_scheme(model):
        return model
    dest = cache_path(model, cache_dir)
    with _node_lock(dest):
        if _complete(dest, manifest or []):
            return str(dest)
        start = time.monotonic()
        partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        _copy_tree(model, partial)
        problems = size_problems(partial, manifest or [])
        if problems:
            shutil.rmtree(partial, ignore_errors=True)
            raise StagingError(f"copy of {redact(model)} is incomplete: {'; '.join(problems[:3])}")
        _mark_complete(partial, model, manifest or [])
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(partial, dest)
        _log(f"copied {redact(model)} to {dest} in {time.monotonic() - start:.1f} s")
        return str(dest)
