"""The score job's resumable pieces: the input cut into chunks of whole files, each scored as its
own Spark write and committed as soon as it is done, so that a rerun after a kill scores only
what is left.

Layout, in the target's work directory (``promptscore.io.publish``)::

    .promptscore.<name>/pieces-<fingerprint>/
        parts/              every committed chunk's Parquet files, flat: this becomes the output
        done/<chunk>.json   one marker per committed chunk: its input files (path, size, mtime),
                            its part files (name, size), its counts, the run that scored it
                            (written aside and renamed: never seen half written)
        tmp/<chunk>/        a chunk being written (Spark's output directory for it)
        basis.json          what the fingerprint was computed from

A chunk is committed in three steps: Spark writes it into ``tmp/<chunk>/``; its files move into
``parts/``; its marker is written. A run killed in between leaves a chunk without a marker, whose
files in ``parts/`` (if any) the next run deletes before it scores the chunk again.

A rerun with the same fingerprint reuses every marker whose input files are all in its input,
unchanged (same path, size and modification time) and whose part files are all in ``parts/`` with
their sizes, and cuts the remaining files into new chunks; markers that no longer hold are
dropped. A chunk's identity is the digest of its files, so new chunks may be cut differently (the
cluster has another size) without losing the old ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from promptscore.io import hadoop
from promptscore.io.files import File, file_status, index_files, list_data_files, list_names, list_status

# The version of the pieces' layout and markers, and of how a score follows from the fingerprint's
# basis: part of the fingerprint, so bump it when any of them changes and a rerun never reuses pieces
# it cannot read or whose scores were computed otherwise.
FORMAT = 1
PREFIX = "pieces-"
MAX_CHUNK_BYTES_CONF = "spark.promptscore.score.maxChunkBytes"
CHUNKS_PER_SLOT_CONF = "spark.promptscore.score.chunksPerSlot"
CONCURRENT_CONF = "spark.promptscore.score.concurrentChunks"
DEFAULT_MAX_CHUNK_BYTES = 128 << 20
DEFAULT_CHUNKS_PER_SLOT = 4


@dataclass(frozen=True)
class Chunk:
    """Whole input files scored and committed together."""

    files: tuple[File, ...]

    @property
    def id(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(f"{f.path}\t{f.size}\t{f.mtime_ms}\n".encode())
        return h.hexdigest()[:16]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


def list_input_files(spark, df) -> list[File]:
    """Every file of ``df``'s scan (as a plain path, not percent-encoded) with its size and
    modification time: from the index Spark built when it listed, else one listing per parent
    directory (not one request per file)."""
    known = index_files(df)
    if known and len(known) == len(df.inputFiles()):
        return sorted(known)
    by_parent: dict[str, list[str]] = {}
    for path in (hadoop.uri_to_path(spark, uri) for uri in df.inputFiles()):
        parent, _, name = path.rpartition("/")
        by_parent.setdefault(parent, []).append(name)
    out = []
    for parent, names in by_parent.items():
        listed = list_status(spark, parent)
        for name in names:
            st = listed.get(name) or file_status(spark, f"{parent}/{name}")
            out.append(File(f"{parent}/{name}", st.size, st.mtime_ms))
    return sorted(out)


def chunk_bytes(total_bytes: int, slots: int, per_slot: int, max_bytes: int) -> int:
    """Bytes of input per chunk: ``per_slot`` chunks per task slot, at most ``max_bytes``."""
    return max(1, min(max_bytes, math.ceil(total_bytes / max(1, slots * per_slot))))


def pack(files: list[File], target_bytes: int) -> list[Chunk]:
    """Consecutive files (in path order) grouped until a chunk holds ``target_bytes``; a file is
    never split, so a file larger than that is a chunk of its own."""
    chunks, current, size = [], [], 0
    for f in sorted(files):
        current.append(f)
        size += f.size
        if size >= target_bytes:
            chunks.append(Chunk(tuple(current)))
            current, size = [], 0
    if current:
        chunks.append(Chunk(tuple(current)))
    return chunks


@dataclass
class Marker:
    """A committed chunk (``done/<chunk>.json``)."""

    chunk: str
    run_id: str
    files: list[list]  # [uri, size, mtime] of its input files
    parts: list[list]  # [name, size] of its files in parts/
    counts: dict = field(default_factory=dict)
    seconds: float | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "Marker":
        data = json.loads(text)
        return cls(**{k: data[k] for k in ("chunk", "run_id", "files", "parts", "counts", "seconds") if k in data})


@dataclass
class ResumePlan:
    """What a run reuses and what it scores."""

    reused: list[Marker]
    todo: list[Chunk]
    target_bytes: int
    dropped: int = 0
    orphans: int = 0


class Pieces:
    """The pieces of one fingerprint next to one target (see the module notes)."""

    def __init__(self, spark, work: str, fp: str):
        self.spark, self.fp = spark, fp
        self.root = f"{work}/{PREFIX}{fp}"
        self.parts = f"{self.root}/parts"

    def tmp(self, chunk: Chunk) -> str:
        return f"{self.root}/tmp/{chunk.id}"

    def _marker(self, chunk_id: str) -> str:
        return f"{self.root}/done/{chunk_id}.json"

    def prepare(self, basis: dict) -> None:
        """Make the directories and record the fingerprint's basis; remove half-written chunks."""
        hadoop.delete(self.spark, f"{self.root}/tmp")
        hadoop.mkdirs(self.spark, self.parts)
        hadoop.mkdirs(self.spark, f"{self.root}/done")
        hadoop.write_text(self.spark, f"{self.root}/basis.json", json.dumps(basis, indent=2, default=str))

    def markers(self) -> list[Marker]:
        """Every marker that can be read (a marker cut short while written is no marker)."""
        out = []
        for name in list_names(self.spark, f"{self.root}/done"):
            if name.endswith(".json") and not name.startswith("."):
                try:
                    out.append(Marker.from_json(hadoop.read_text(self.spark, f"{self.root}/done/{name}")))
                except (ValueError, TypeError, KeyError):
                    hadoop.delete(self.spark, f"{self.root}/done/{name}")
        return out

    def plan(self, files: list[File], target_bytes: int) -> ResumePlan:
        """Reuse what holds, drop what does not, delete orphaned part files, cut the rest."""
        current = {f.path: f for f in files}
        parts = {st.name: st.size for st in list_status(self.spark, self.parts).values()
                 if not st.name.startswith((".", "_"))}  # hidden: checksums of the local file system
        claimed: set[str] = set()
        reused, dropped = [], 0
        for m in sorted(self.markers(), key=lambda m: m.chunk):
            uris = [u for u, _, _ in m.files]
            valid = (all(u in current and current[u].key() == [u, s, t] for u, s, t in m.files)
                     and not claimed.intersection(uris)
                     and all(parts.get(name) == size for name, size in m.parts))
            if valid:
                reused.append(m)
                claimed.update(uris)
            else:
                hadoop.delete(self.spark, self._marker(m.chunk))
                dropped += 1
        keep = {name for m in reused for name, _ in m.parts}
        orphans = [name for name in parts if name not in keep]
        self._parallel(lambda name: hadoop.delete(self.spark, f"{self.parts}/{name}", recursive=True), orphans)
        todo = pack([f for f in files if f.path not in claimed], target_bytes)
        return ResumePlan(reused, todo, target_bytes, dropped, len(orphans))

    def commit(self, chunk: Chunk, run_id: str, counts: dict, seconds: float) -> Marker:
        """Move a written chunk's files into ``parts/`` and write its marker."""
        written = list_data_files(self.spark, self.tmp(chunk))
        names = [f.path.rsplit("/", 1)[-1] for f in written]
        self._parallel(lambda f: hadoop.rename(self.spark, f.path, f"{self.parts}/{f.path.rsplit('/', 1)[-1]}"),
                       written)
        marker = Marker(chunk.id, run_id, [f.key() for f in chunk.files],
                        [[n, f.size] for n, f in zip(names, written)], counts, round(seconds, 3))
        # Written aside and renamed, so that a marker is never seen half written.
        aside = f"{self.root}/done/.{chunk.id}.json.tmp"
        hadoop.write_text(self.spark, aside, marker.to_json())
        hadoop.delete(self.spark, self._marker(chunk.id))
        hadoop.rename(self.spark, aside, self._marker(chunk.id))
        hadoop.delete(self.spark, self.tmp(chunk))
        return marker

    def _parallel(self, fn, items: list) -> None:
        if len(items) <= 1:
            for item in items:
                fn(item)
            return
        with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
            list(pool.map(fn, items))


def keep_only(fp: str):
    """The ``keep`` hook of ``Publisher.recover``: the pieces of fingerprint ``fp``, nothing else."""
    return lambda name: name == f"{PREFIX}{fp}"


def input_rows(spark, df, rp: ResumePlan) -> int:
    """The rows of the input: those of the reused chunks from their markers (their input files
    are the versions they recorded), plus a count of the files left to score only (Spark prunes
    its listing by name: nothing is listed again, the reused files' footers are not read)."""
    reused = sum(int(m.counts.get("rows", 0)) for m in rp.reused)
    todo = [f.path for c in rp.todo for f in c.files]
    if not rp.reused:
        return df.count()
    if not todo:
        return reused
    from pyspark.sql import functions as F

    names = [hadoop.encoded_uri(spark, p) for p in todo]
    return reused + df.where(F.col("_metadata.file_path").isin(names)).count()

