"""The ingest ledger: which input files an output already holds, for ``--only-new``.

Each partition written with ``--partition-col`` holds, under ``_ingested/``, one row per input
file it converted (or set aside as unreadable): ``path``, ``size``, ``mtime_s``, ``run_id`` and
``checksum`` (null when the source gave none). The ledger is staged and published with the
partition's data, in the same step, so a killed run never records files it did not publish, and
a rerun of a partition replaces its files and its ledger rows together. The union of the other
partitions' ledgers is what is already ingested.

A listed file is *already ingested* when another partition holds its path with the same size,
modification time (whole seconds) and, where both sides have one of the same kind, checksum. It
has *changed* when another partition holds its path but not this version of it (appended to,
rewritten, replaced): reading it again would put the lines of its earlier version into the output
a second time, so ``--changed-files`` decides (``POLICIES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from promptscore import sparkapi
from promptscore.io import hadoop
from promptscore.io.files import File
from udfs.uris import redact

DIR = "_ingested"
SCHEMA = "path string, size bigint, mtime_s bigint, run_id string, checksum string"
POLICIES = ("error", "reingest", "skip")


@dataclass(frozen=True, slots=True)
class Held:
    """One version of a file that a partition holds."""

    size: int
    mtime_s: int
    checksum: str | None
    partition: str

    def same_as(self, f: File) -> bool:
        """Whether ``f`` is this version: same size and time (in whole seconds: listings and
        inventory reports give different sub-second precision), and same checksum where both
        have one of the same kind."""
        if (f.size, f.mtime_ms // 1000) != (self.size, self.mtime_s):
            return False
        if f.checksum and self.checksum and f.checksum.split(":", 1)[0] == self.checksum.split(":", 1)[0]:
            return f.checksum == self.checksum
        return True


@dataclass
class Selection:
    """The listed files, sorted by what the other partitions hold of them."""

    new: list[File] = field(default_factory=list)
    same: list[File] = field(default_factory=list)
    changed: list[tuple[File, Held]] = field(default_factory=list)

    def examples(self, n: int = 5) -> list[dict]:
        """Up to ``n`` changed files: the file now, and the version a partition holds."""
        return [{"file": redact(f.path), "partition": held.partition,
                 "was": {"size": held.size, "mtime": _iso(held.mtime_s), "checksum": held.checksum},
                 "now": {"size": f.size, "mtime": _iso(f.mtime_ms // 1000), "checksum": f.checksum}}
                for f, held in self.changed[:n]]


def held_versions(spark: SparkSession, output: str, target: str) -> dict[str, list[Held]]:
    """The versions of input files that the partitions of ``output`` other than ``target`` hold,
    by path."""
    found = hadoop.glob(spark, f"{output.rstrip('/')}/*/{DIR}/*.parquet")
    own = f"{target.rstrip('/')}/{DIR}/"
    files = []
    for path in found:
        partition = path.rsplit("/", 3)[-3]
        if not path.startswith(own) and not partition.startswith((".", "_")):
            files.append(path)
    if not files:
        return {}
    # Files, not their folders: Spark skips a folder named with a leading underscore. A ledger
    # written before the checksum column reads it as null.
    partition = F.regexp_extract(F.col("_metadata.file_path"), r"/([^/]+)/" + DIR + r"/[^/]*$", 1)
    df = (spark.read.schema(SCHEMA).parquet(*[hadoop.escape_glob(f) for f in files])
          .select("path", "size", "mtime_s", "checksum", partition.alias("partition")))
    out: dict[str, list[Held]] = {}
    names: dict[str, str] = {}
    for b in sparkapi.collect_arrow(df):
        for path, size, mtime_s, checksum, part in zip(*(b.column(i).to_pylist() for i in range(5))):
            held = Held(int(size), int(mtime_s), checksum, names.setdefault(part, part))
            versions = out.setdefault(path, [])
            if held not in versions:
                versions.append(held)
    return out


def compare(files: Sequence[File], held: dict[str, list[Held]]) -> Selection:
    """Sort ``files`` into new ones, versions a partition already holds, and changed ones (each
    list in path order)."""
    sel = Selection()
    for f in sorted(files):
        versions = held.get(f.path)
        if not versions:
            sel.new.append(f)
        elif any(v.same_as(f) for v in versions):
            sel.same.append(f)
        else:
            sel.changed.append((f, max(versions, key=lambda v: (v.mtime_s, v.size))))
    return sel


def write(spark: SparkSession, files: Sequence[File], run_id: str, directory: str) -> None:
    """Write the ledger rows of ``files`` under ``directory/_ingested`` (one Parquet file)."""
    rows = [(f.path, f.size, f.mtime_ms // 1000, run_id, f.checksum) for f in files]
    spark.createDataFrame(rows, SCHEMA).coalesce(1).write.mode("errorifexists").parquet(f"{directory}/{DIR}")


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
