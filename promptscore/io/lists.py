"""Files that a list names (``--input-list``): a text file of URIs or paths, one per line, or an
OSS Bucket Inventory report. Each file once, with its size and time (from the inventory, or looked
up on the executors), ready for ``promptscore.io.files.lines_of``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence
from urllib.parse import unquote

from pyspark.sql import SparkSession

from promptscore import errors
from promptscore.io import hadoop
from promptscore.io.files import File
from udfs.uris import has_userinfo, redact


@dataclass
class FileList:
    """What a list named: each file once (``files``), and how it was read: ``entries`` (lines
    naming files, or inventory rows), ``duplicates`` (entries naming a file named before: read
    and counted once) with ``examples``, and for the inventory of a versioned bucket the rows
    left out (``noncurrent_versions``, ``delete_markers``)."""

    files: list[File]
    entries: int
    duplicates: int = 0
    examples: list[str] = field(default_factory=list)
    noncurrent_versions: int | None = None
    delete_markers: int | None = None

    def facts(self) -> dict:
        """The list's part of the report."""
        out: dict = {"entries": self.entries, "files": len(self.files), "duplicate_entries": self.duplicates,
                     "duplicate_examples": [redact(e) for e in self.examples]}
        if self.noncurrent_versions is not None:
            out["noncurrent_versions_skipped"] = self.noncurrent_versions
            out["delete_markers_skipped"] = self.delete_markers
        return out


def read_list(spark: SparkSession, uri: str) -> FileList:
    """The files named by ``uri``: an OSS Bucket Inventory report (its ``manifest.json``), or a
    text file of URIs or paths, one per line (blank lines and lines starting with ``#`` are
    skipped). Sizes and times come with an inventory; a plain list is looked up in parallel. A
    file named twice is read once, and counted once."""
    if not hadoop.exists(spark, uri):
        raise errors.UsageError(f"--input-list {redact(uri)} does not exist")
    if uri.rstrip("/").endswith("manifest.json"):
        return read_inventory(spark, uri)
    text = hadoop.read_text(spark, uri)
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for name in names:
        if has_userinfo(name):
            raise errors.UsageError(f"--input-list names {redact(name)}, a URI with credentials in it; the jobs "
                                 "take credentials only from the cluster (ECS RAM role) or the environment")
    found = stat_all(spark, names, uri)
    files, duplicates, examples = _once(found)
    return FileList(files, len(names), duplicates, examples)


def stat_all(spark: SparkSession, names: Sequence[str], list_uri: str | None = None) -> list[File]:
    """Size and time of each named file, looked up on the executors in parallel, one entry per
    name (a file named twice is there twice). A name that does not exist is a usage error naming
    it."""
    if not names:
        return []
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    try:
        listed = spark.read.format("binaryFile").load([hadoop.escape_glob(n) for n in names])
    except AnalysisException as e:
        m = re.search(r"Path does not exist: (.*?)\.?$", str(e).strip().splitlines()[0])
        if not m:
            raise
        missing = re.sub(r"\\(.)", r"\1", m.group(1))  # the name as listed, glob escapes undone
        where = f"--input-list {redact(list_uri)}" if list_uri else "the list"
        raise errors.UsageError(f"{where} names {redact(missing)}, which does not exist: remove it from the list, "
                             "or restore the file") from None
    found = listed.select("path", "length",
                          (F.col("modificationTime").cast("double") * 1000).cast("long").alias("t")).collect()
    return [File(hadoop.qualify(spark, r.path), int(r.length), int(r.t)) for r in found]


def _once(files: Iterable[File]) -> tuple[list[File], int, list[str]]:
    """Each file once (by path; of several rows for one path, the newest), sorted; how many rows
    were left out, and up to five of their paths."""
    best: dict[str, File] = {}
    repeated: dict[str, None] = {}
    rows = 0
    for f in files:
        rows += 1
        held = best.get(f.path)
        if held is None:
            best[f.path] = f
            continue
        repeated[f.path] = None
        if (f.mtime_ms, f.size) > (held.mtime_ms, held.size):
            best[f.path] = f
    return sorted(best.values()), rows - len(best), list(repeated)[:5]


_VERSIONED = ("VersionId", "IsLatest", "IsDeleteMarker")


def read_inventory(spark: SparkSession, manifest_uri: str) -> FileList:
    """The objects of an OSS Bucket Inventory report: ``manifest.json`` names the report's
    gzipped CSV files (keys in the manifest's own bucket) and their columns (``fileSchema``);
    object keys in them are URL-encoded. The report of a versioned bucket (``VersionId``,
    ``IsLatest``, ``IsDeleteMarker`` columns) lists every version: only the latest version of
    each key is read, and keys whose latest version is a delete marker are left out. Each key
    once; the ``ETag`` column, when there, is kept as the file's checksum."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    try:
        manifest = json.loads(hadoop.read_text(spark, manifest_uri))
        columns = [c.strip() for c in manifest["fileSchema"].split(",")]
        keys = [f["key"] for f in manifest["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise errors.UsageError(f"--input-list {redact(manifest_uri)} is not an OSS inventory manifest "
                             f"(fileSchema and files expected): {e}") from None
    for need in ("Bucket", "Key", "Size", "LastModifiedDate"):
        if need not in columns:
            raise errors.UsageError(f"the inventory {redact(manifest_uri)} lacks the {need} column: add it to "
                                 "the inventory rule's fields")
    versioned = any(c in columns for c in _VERSIONED)
    if versioned and not all(c in columns for c in _VERSIONED[1:]):
        raise errors.UsageError(f"the inventory {redact(manifest_uri)} lists object versions ({', '.join(columns)}) "
                             "without IsLatest and IsDeleteMarker: add both to the inventory rule's fields, so that "
                             "only the latest version of each object is read")
    scheme, rest = manifest_uri.split("://", 1) if "://" in manifest_uri else ("oss", manifest_uri)
    bucket = rest.split("/", 1)[0]
    csvs = [f"{scheme}://{bucket}/{k.lstrip('/')}" for k in keys]
    rows = spark.read.csv(csvs, schema=", ".join(f"`{c}` string" for c in columns))
    etag = F.col("ETag") if "ETag" in columns else F.lit(None).cast("string")
    obs = Observation("inventory")
    if versioned:
        marker = F.lower(F.trim(F.col("IsDeleteMarker"))) == "true"
        latest = F.lower(F.trim(F.col("IsLatest"))) == "true"
        rows = rows.observe(obs, F.count(F.lit(1)).alias("rows"),
                            F.sum(F.when(marker, 1).otherwise(0)).alias("markers"),
                            F.sum(F.when(~marker & ~latest, 1).otherwise(0)).alias("noncurrent"))
        rows = rows.where(latest & ~marker)
    else:
        rows = rows.observe(obs, F.count(F.lit(1)).alias("rows"))
    got = rows.select("Bucket", "Key", "Size", "LastModifiedDate", etag.alias("ETag")).collect()
    files, duplicates, examples = _once(
        File(f"{scheme}://{r.Bucket}/{unquote(r.Key)}", int(r.Size), _epoch_ms(r.LastModifiedDate),
                  f"etag:{r.ETag.strip().strip(chr(34)).lower()}" if r.ETag and r.ETag.strip(' "') else None)
        for r in got if r.Key is not None and not r.Key.endswith("/"))
    m = obs.get
    return FileList(files, int(m["rows"] or 0), duplicates, examples,
                    int(m["noncurrent"] or 0) if versioned else None, int(m["markers"] or 0) if versioned else None)


def _epoch_ms(text: str | None) -> int:
    if not text:
        return 0
    t = text.strip()
    if t.isdigit():
        return int(t) * (1000 if len(t) <= 10 else 1)
    t = t.replace("Z", "+00:00")
    try:
        d = datetime.fromisoformat(t)
    except ValueError:
        return 0
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return int(d.timestamp() * 1000)
