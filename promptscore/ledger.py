"""The ingest ledger: which input files an output already holds, for ``--only-new``.

Each partition written with ``--only-new`` holds, under ``_ingested/``, one row per input file
it converted (or set aside as unreadable): ``path``, ``size``, ``mtime_s`` and ``run_id``. The
ledger is staged and published with the partition's data, in the same step, so a killed run
never records files it did not publish, and a rerun of a partition replaces its files and its
ledger rows together. The union of the other partitions' ledgers is what is "already converted".
"""

from __future__ import annotations

from typing import Sequence

from pyspark.sql import SparkSession

from promptscore import hadoop
from promptscore.filelist import InputFile

DIR = "_ingested"
SCHEMA = "path string, size bigint, mtime_s bigint, run_id string"


def converted(spark: SparkSession, output: str, target: str) -> set[tuple[str, int, int]]:
    """Identities (path, size, mtime in seconds) of the input files that the partitions of
    ``output`` other than ``target`` hold."""
    jvm = spark.sparkContext._jvm
    pattern = jvm.org.apache.hadoop.fs.Path(f"{output.rstrip('/')}/*/{DIR}/*.parquet")
    fs = pattern.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    found = fs.globStatus(pattern) or []
    own = f"{target.rstrip('/')}/{DIR}/"
    files = []
    for st in found:
        path = str(st.getPath().toString())
        partition = path.rsplit("/", 3)[-3]
        if not path.startswith(own) and not partition.startswith((".", "_")):
            files.append(path)
    if not files:
        return set()
    # Files, not their folders: Spark skips a folder named with a leading underscore.
    df = spark.read.schema(SCHEMA).parquet(*[hadoop.escape_glob(f) for f in files]).select("path", "size", "mtime_s")
    out: set[tuple[str, int, int]] = set()
    for b in df._collect_as_arrow():
        out.update(zip(b.column(0).to_pylist(), b.column(1).to_pylist(), b.column(2).to_pylist()))
    return out


def write(spark: SparkSession, files: Sequence[InputFile], run_id: str, directory: str) -> None:
    """Write the ledger rows of ``files`` under ``directory/_ingested`` (one Parquet file)."""
    rows = [(f.path, f.size, f.mtime_ms // 1000, run_id) for f in files]
    spark.createDataFrame(rows, SCHEMA).coalesce(1).write.mode("errorifexists").parquet(f"{directory}/{DIR}")
