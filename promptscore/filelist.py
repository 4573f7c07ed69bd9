"""Input files as lists: read from a listing, from a list file or an OSS inventory, and read back
by Spark without a request per file.

Spark reads explicitly named files only after asking the file system about each of them (an
existence check on the driver, then a listing call per file): millions of requests for millions
of files. When the sizes and modification times are already known (from a prefix listing, or an
OSS Bucket Inventory report), ``lines_of`` hands them to Spark's file index directly, grouped by
folder, so that reading starts without one metadata request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession

from promptscore import cli, hadoop
from udfs.uris import has_userinfo, redact

_STATUS = re.compile(r"path=(.*?); isDirectory=(true|false); length=(\d+); replication=\d+; "
                     r"blocksize=\d+; modification_time=(\d+);")
_CHUNK = 20_000  # file statuses per call into the JVM


@dataclass(frozen=True, order=True)
class InputFile:
    """One input file: its path (a qualified Hadoop path, not percent-encoded), size and
    modification time in milliseconds (0 when unknown)."""

    path: str
    size: int
    mtime_ms: int = 0

    @property
    def identity(self) -> tuple[str, int, int]:
        """What says "the same file" across runs: path, size and modification time in whole
        seconds (listings and inventory reports give different sub-second precision)."""
        return self.path, self.size, self.mtime_ms // 1000


def index_files(listed: DataFrame) -> list[InputFile]:
    """Every file in the file index of ``listed`` (a plain file read), with its size and time,
    taken from the index that Spark built when it listed (no request per file)."""
    plan = listed._jdf.queryExecution().executedPlan()
    leaves = plan.collectLeaves()
    out: list[InputFile] = []
    for i in range(leaves.size()):
        leaf = leaves.apply(i)
        try:
            files = leaf.relation().location().allFiles()
        except Exception:  # noqa: BLE001 - not a file scan
            continue
        n = files.size()
        for start in range(0, n, _CHUNK):
            text = files.slice(start, min(n, start + _CHUNK)).mkString("\n")
            for m in _STATUS.finditer(str(text)):
                if m.group(2) == "false":
                    out.append(InputFile(m.group(1), int(m.group(3)), int(m.group(4))))
    return out


def lines_of(spark: SparkSession, files: Sequence[InputFile]) -> DataFrame:
    """The lines of exactly ``files`` (column ``value``, with ``_metadata``), read through a
    file index made from the known statuses: Spark lists nothing and asks nothing per file."""
    if not files:
        raise ValueError("no files")
    try:
        return _injected(spark, files)
    except Exception as e:  # noqa: BLE001 - another Spark's internals: read the slow, public way
        if "py4j" not in type(e).__module__ and "Py4J" not in type(e).__name__:
            raise
        return (spark.read.option("recursiveFileLookup", "true")
                .text([hadoop.escape_glob(f.path) for f in files]))


def _injected(spark: SparkSession, files: Sequence[InputFile]) -> DataFrame:
    sc = spark.sparkContext
    jvm, gateway = sc._jvm, sc._gateway
    fs_pkg = jvm.org.apache.hadoop.fs
    ds = jvm.org.apache.spark.sql.execution.datasources
    cache = ds.SharedInMemoryCache(1 << 62, -1).createForNewClient()
    by_dir: dict[str, list[InputFile]] = {}
    for f in files:
        by_dir.setdefault(f.path.rsplit("/", 1)[0], []).append(f)
    roots = jvm.java.util.ArrayList()
    for folder, group in by_dir.items():
        statuses = gateway.new_array(fs_pkg.FileStatus, len(group))
        for i, f in enumerate(group):
            statuses[i] = fs_pkg.FileStatus(f.size, False, 1, 128 << 20, f.mtime_ms, fs_pkg.Path(f.path))
        root = fs_pkg.Path(folder)
        cache.putLeafFiles(root, statuses)
        roots.add(root)
    params = jvm.org.apache.spark.api.python.PythonUtils.toScalaMap({"recursiveFileLookup": "true"})
    none = jvm.scala.Option.apply(None)
    jspark = spark._jsparkSession
    root_seq = jvm.org.apache.spark.api.python.PythonUtils.toSeq(roots)
    index = ds.InMemoryFileIndex(jspark, root_seq, params, none, cache, none, none)
    schema = jvm.org.apache.spark.sql.types.StructType.fromDDL("value string")
    relation = ds.HadoopFsRelation(index, jvm.org.apache.spark.sql.types.StructType(), schema, none,
                                   ds.text.TextFileFormat(), params, jspark)
    return DataFrame(jspark.baseRelationToDataFrame(relation), spark)


# ---------------------------------------------------------------------------------------------
# List files


def read_list(spark: SparkSession, uri: str) -> list[InputFile]:
    """The files named by ``uri``: an OSS Bucket Inventory report (its ``manifest.json``), or a
    text file of URIs or paths, one per line (blank lines and lines starting with ``#`` are
    skipped). Sizes and times come with an inventory; a plain list is looked up in parallel."""
    if not hadoop.exists(spark, uri):
        raise cli.UsageError(f"--input-list {redact(uri)} does not exist")
    if uri.rstrip("/").endswith("manifest.json"):
        return read_inventory(spark, uri)
    text = hadoop.read_text(spark, uri)
    names = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for name in names:
        if has_userinfo(name):
            raise cli.UsageError(f"--input-list names {redact(name)}, a URI with credentials in it; the jobs "
                                 "take credentials only from the cluster (ECS RAM role) or the environment")
    return stat_all(spark, names)


def stat_all(spark: SparkSession, names: Sequence[str]) -> list[InputFile]:
    """Size and time of each named file, looked up on the executors in parallel (a missing file
    is a usage error naming it)."""
    if not names:
        return []
    from pyspark.sql import functions as F

    found = (spark.read.format("binaryFile").load([hadoop.escape_glob(n) for n in names])
             .select("path", "length", (F.col("modificationTime").cast("double") * 1000).cast("long").alias("t"))
             .collect())
    files = [InputFile(hadoop.qualify(spark, r.path), int(r.length), int(r.t)) for r in found]
    if len(files) < len(set(names)):
        seen = {f.path for f in files}
        missing = next(n for n in names if hadoop.qualify(spark, n) not in seen)
        raise cli.UsageError(f"--input-list names {redact(missing)}, which does not exist")
    return sorted(files)


def read_inventory(spark: SparkSession, manifest_uri: str) -> list[InputFile]:
    """The objects of an OSS Bucket Inventory report: ``manifest.json`` names the report's
    gzipped CSV files (keys in the manifest's own bucket) and their columns (``fileSchema``);
    object keys in them are URL-encoded."""
    try:
        manifest = json.loads(hadoop.read_text(spark, manifest_uri))
        columns = [c.strip() for c in manifest["fileSchema"].split(",")]
        keys = [f["key"] for f in manifest["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise cli.UsageError(f"--input-list {redact(manifest_uri)} is not an OSS inventory manifest "
                             f"(fileSchema and files expected): {e}") from None
    for need in ("Bucket", "Key", "Size", "LastModifiedDate"):
        if need not in columns:
            raise cli.UsageError(f"the inventory {redact(manifest_uri)} lacks the {need} column: add it to "
                                 "the inventory rule's fields")
    scheme, rest = manifest_uri.split("://", 1) if "://" in manifest_uri else ("oss", manifest_uri)
    bucket = rest.split("/", 1)[0]
    csvs = [f"{scheme}://{bucket}/{k.lstrip('/')}" for k in keys]
    rows = spark.read.csv(csvs, schema=", ".join(f"`{c}` string" for c in columns)).select(
        "Bucket", "Key", "Size", "LastModifiedDate").collect()
    return sorted(InputFile(f"{scheme}://{r.Bucket}/{unquote(r.Key)}", int(r.Size), _epoch_ms(r.LastModifiedDate))
                  for r in rows if r.Key is not None and not r.Key.endswith("/"))


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


def folders(files: Iterable[InputFile]) -> list[str]:
    """The distinct folders holding ``files``."""
    return sorted({f.path.rsplit("/", 1)[0] for f in files})
