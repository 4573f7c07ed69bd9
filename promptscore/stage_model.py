"""Copy a model directory to local disk once per node: resumable, size-checked, locked.

    python -m promptscore.stage_model oss://bucket/models/skywork-8b/ /mnt/models/skywork-8b
    python -m promptscore.stage_model /nas/models/skywork-8b /mnt/models/skywork-8b

(``bootstrap/stage-model.sh`` runs this as an EMR bootstrap action.)

- ``oss://`` sources are read with oss2. Credentials come from the environment
  (``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``/``OSS_SESSION_TOKEN``, or the
  ``ALIBABA_CLOUD_*`` names) or else from the ECS instance's RAM role; they are never arguments
  and never printed. The endpoint is ``--endpoint``, ``OSS_ENDPOINT``, or the internal endpoint of
  the instance's region.
- Any other source is a directory.
- A file already there with the source's size is kept; a partial one is resumed; at the end every
  file's size is checked against the source and a marker is written. A second run finds the
  marker and returns at once; concurrent runs wait on a lock instead of copying twice.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

MARKER = ".promptscore-complete"
METADATA = "http://100.100.100.200/latest/meta-data"


class StageError(Exception):
    """Staging failed; the message says why and what to do."""


@dataclass(frozen=True, order=True)
class Entry:
    path: str  # relative, "/"-separated
    size: int


class Source(Protocol):
    def entries(self) -> list[Entry]: ...

    def fetch(self, entry: Entry, target: Path) -> None:
        """Bring ``entry`` to ``target``, resuming a partial ``target`` if there is one."""


class DirSource:
    """A model directory on a local or mounted file system."""

    def __init__(self, root: str):
        self.root = Path(root.removeprefix("file://"))
        if not self.root.is_dir():
            raise StageError(f"source {root} is not a directory")

    def entries(self) -> list[Entry]:
        return sorted(Entry(p.relative_to(self.root).as_posix(), p.stat().st_size)
                      for p in self.root.rglob("*") if p.is_file())

    def fetch(self, entry: Entry, target: Path) -> None:
        have = target.stat().st_size if target.exists() else 0
        if have > entry.size:
            target.unlink()
            have = 0
        with open(self.root / entry.path, "rb") as src, open(target, "ab") as dst:
            src.seek(have)
            shutil.copyfileobj(src, dst, 8 << 20)


class OssSource:
    """A prefix in an OSS bucket, read with oss2 (resumable, multipart downloads)."""

    def __init__(self, uri: str, endpoint: str | None = None, threads: int = 8):
        import oss2

        rest = uri.removeprefix("oss://")
        bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.oss2 = oss2
        self.threads = threads
        region = None if endpoint or os.environ.get("OSS_ENDPOINT") else _metadata("region-id")
        endpoint = endpoint or os.environ.get("OSS_ENDPOINT") or f"https://oss-{region}-internal.aliyuncs.com"
        self.bucket = oss2.Bucket(oss2.ProviderAuth(_credentials_provider(oss2)), endpoint, bucket)

    def entries(self) -> list[Entry]:
        out = []
        for obj in self.oss2.ObjectIterator(self.bucket, prefix=self.prefix, max_keys=1000):
            if not obj.key.endswith("/"):
                out.append(Entry(obj.key[len(self.prefix):], int(obj.size)))
        return sorted(out)

    def fetch(self, entry: Entry, target: Path) -> None:
        store = self.oss2.ResumableDownloadStore(root=str(target.parent / ".oss2-checkpoints"))
        self.oss2.resumable_download(self.bucket, self.prefix + entry.path, str(target), store=store,
                                     multiget_threshold=64 << 20, part_size=32 << 20, num_threads=self.threads)


def _metadata(name: str) -> str:
    try:
        with urllib.request.urlopen(f"{METADATA}/{name}", timeout=3) as r:
            return r.read().decode().strip()
    except OSError:
        raise StageError(f"cannot read ECS metadata ({name}): pass --endpoint, or set OSS_ENDPOINT and "
                         "OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET in the environment") from None


def _credentials_provider(oss2):
    env = os.environ
    for prefix in ("OSS_", "ALIBABA_CLOUD_"):
        key_id, secret = env.get(f"{prefix}ACCESS_KEY_ID"), env.get(f"{prefix}ACCESS_KEY_SECRET")
        if key_id and secret:
            token = env.get(f"{prefix}SESSION_TOKEN") or env.get(f"{prefix}SECURITY_TOKEN")
            return oss2.credentials.StaticCredentialsProvider(key_id, secret, token)
    role = _metadata("ram/security-credentials/").splitlines()[0]
    return oss2.credentials.EcsRamRoleCredentialsProvider(f"{METADATA}/ram/security-credentials/{role}")


def source_for(uri: str, endpoint: str | None = None) -> Source:
    """The source a URI or path names."""
    if uri.startswith("oss://"):
        return OssSource(uri, endpoint)
    if "://" in uri and not uri.startswith("file://"):
        raise StageError(f"unsupported source {uri}: use oss://bucket/prefix or a directory")
    return DirSource(uri)


def _log(msg: str) -> None:
    print(f"[stage-model] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    """Hold the node-wide lock of ``dest`` (``<dest>.lock``): one copier per node, the others wait."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(str(dest) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock_fd)


def stage(source: Source, dest: str | Path, label: str = "") -> dict:
    """Copy ``source`` into ``dest`` unless it is there already; returns what was done."""
    dest = Path(dest)
    with locked(dest):
        entries = source.entries()
        if not entries:
            raise StageError(f"source {label} holds no files")
        if (dest / MARKER).is_file() and not size_problems(dest, entries):
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
                raise StageError(f"{e.path}: got {partial.stat().st_size} bytes, expected {e.size}; run again to resume")
            os.replace(partial, final)
            copied += 1
            nbytes += e.size
            _log(f"copied {e.path} ({e.size:,} bytes)")
        problems = size_problems(dest, entries)
        if problems:
            raise StageError(f"{dest} does not match {label}: {'; '.join(problems[:3])}")
        (dest / MARKER).write_text(json.dumps({"source": label, "files": [[e.path, e.size] for e in entries]}))
        shutil.rmtree(dest / ".oss2-checkpoints", ignore_errors=True)
        _log(f"{dest} complete: {copied} copied ({nbytes:,} bytes), {kept} kept, {time.monotonic() - start:.1f} s")
        return {"copied": copied, "kept": kept, "bytes": nbytes}


def size_problems(directory: Path, entries) -> list[str]:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m promptscore.stage_model", description=__doc__.splitlines()[0])
    p.add_argument("source", help="oss://bucket/prefix/ or a directory")
    p.add_argument("dest", help="local directory to fill")
    p.add_argument("--endpoint", help="OSS endpoint (default: OSS_ENDPOINT, or the region's internal one)")
    a = p.parse_args(argv)
    try:
        stage(source_for(a.source, a.endpoint), a.dest, a.source)
    except StageError as e:
        print(f"stage-model: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

