"""Files as the jobs know them: one record (``File``) for every listing, and the listings.

Small directories (an output, a model, a work directory) are listed through the Hadoop file
system (``promptscore.io.hadoop``). Inputs of millions of files are listed by Spark; their sizes
and times are taken from the index Spark built (``index_files``), and a known list of files is
read back by Spark without a request per file (``lines_of``): Spark reads explicitly named files
only after asking the file system about each of them (an existence check on the driver, then a
listing call per file), while ``lines_of`` hands the known statuses to Spark's file index
directly, grouped by folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from pyspark.sql import DataFrame, SparkSession

from promptscore import sparkapi
from promptscore.io import hadoop


@dataclass(frozen=True, order=True)
class File:
    """One file: its path (a qualified Hadoop path or URI, not percent-encoded), size,
    modification time in milliseconds (0 when unknown) and, when the source gives one, a
    checksum of its content as ``kind:value`` (``etag:...`` from an OSS inventory, or a Hadoop
    ``FileSystem.getFileChecksum`` algorithm and its bytes)."""

    path: str
    size: int
    mtime_ms: int = 0
    checksum: str | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """The last part of the path."""
        return self.path.rsplit("/", 1)[-1]

    def key(self) -> list:
        """``[path, size, mtime_ms]``: what makes this version of the file (the score job's
        markers record their input files so)."""
        return [self.path, self.size, self.mtime_ms]


# ---------------------------------------------------------------------------------------------
# Small directories, through the Hadoop file system


def list_data_files(spark, uri: str) -> list[File]:
    """The data files directly under ``uri`` (not recursive), skipping ``_*`` and ``.*`` names.

    Meant for output directories of a few files; inputs of millions of files are listed by Spark.
    """
    files = [File(path, size, mtime) for path, name, is_file, size, mtime in hadoop.list_dir(spark, uri)
             if is_file and not name.startswith(("_", "."))]
    return sorted(files, key=lambda f: f.path)


def list_status(spark, uri: str) -> dict[str, File]:
    """The files directly under the directory ``uri`` by name (one listing request), or {}."""
    return {name: File(path, size, mtime) for path, name, is_file, size, mtime
            in hadoop.list_dir(spark, uri, only_dir=True) if is_file}


def file_status(spark, uri: str) -> File:
    """The one file at ``uri``, with its size and time."""
    _, size, mtime = hadoop.status(spark, uri)
    return File(uri, size, mtime)


def list_names(spark, uri: str) -> list[str]:
    """The names directly under the directory ``uri`` (files and directories), or [] if absent."""
    return sorted(name for _, name, _, _, _ in hadoop.list_dir(spark, uri, only_dir=True))


def walk(spark, uri: str) -> tuple[str, list[File]]:
    """The qualified form of ``uri`` and every file under it, at any depth."""
    base, found = hadoop.list_recursive(spark, uri)
    return base, [File(path, size, mtime) for path, size, mtime in found]


def list_tree(spark, uri: str) -> list[tuple[str, int]]:
    """Every file under ``uri`` (recursively) as (path relative to ``uri``, size). For small trees,
    such as a model directory or one job's output."""
    base, files = walk(spark, uri.rstrip("/"))
    prefix = base.rstrip("/") + "/"
    return sorted((f.path.removeprefix(prefix), f.size) for f in files)


# ---------------------------------------------------------------------------------------------
# Inputs of many files, through Spark


def index_files(listed: DataFrame) -> list[File]:
    """Every file in the file index of ``listed`` (a plain file read), with its size and time,
    taken from the index that Spark built when it listed (no request per file)."""
    return [File(path, size, mtime_ms) for path, size, mtime_ms in sparkapi.index_files(listed)]


def lines_of(spark: SparkSession, files: Sequence[File]) -> DataFrame:
    """The lines of exactly ``files`` (column ``value``, with ``_metadata``), read through a
    file index made from the known statuses: Spark lists nothing and asks nothing per file."""
    if not files:
        raise ValueError("no files")
    try:
        return sparkapi.read_known_files(spark, files)
    except Exception as e:
        if not sparkapi.is_py4j_error(e):
            raise
        return (spark.read.option("recursiveFileLookup", "true")
                .text([hadoop.escape_glob(f.path) for f in files]))


def with_checksums(spark: SparkSession, files: Sequence[File], threads: int = 16) -> list[File]:
    """``files``, each with the checksum its file system gives (``hadoop.checksums``: one request
    per file, ``threads`` at a time from the driver). A file keeps ``checksum`` None where the
    file system gives none (local disk). Files that already have a checksum are kept as they are."""
    todo = [f for f in files if not f.checksum]
    found = dict(zip((f.path for f in todo), hadoop.checksums(spark, [f.path for f in todo], threads)))
    return [replace(f, checksum=found[f.path]) if not f.checksum and found.get(f.path) else f for f in files]


def folders(files: Iterable[File]) -> list[str]:
    """The distinct folders holding ``files``."""
    return sorted({f.path.rsplit("/", 1)[0] for f in files})
