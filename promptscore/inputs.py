"""The convert job's input: which files are read, which are skipped and why, and files that cannot
be read at all.

One listing serves everything: Spark's file index over every ``--input`` (recursive), without a
name filter, so that files the job skips by name are seen and counted. The lines are read only
from ``*.jsonl`` and ``*.jsonl.gz`` files: a filter on the file-name metadata column, which Spark
applies to the listing before any file is opened. Spark itself never lists names starting with
``_`` or ``.`` (Hadoop's hidden files: ``_SUCCESS``, ``.crc``, a ``_temporary/`` folder).
"""

from __future__ import annotations

import errno
import glob
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from promptscore import errors, sparkapi
from promptscore.io import hadoop
from udfs.uris import redact

SUFFIXES = (".jsonl", ".jsonl.gz")
INPUT_NAMES = "*.jsonl, *.jsonl.gz"
HIDDEN_RULE = "names starting with '_' or '.' are never listed (Hadoop's hidden files)"
_READ_FILE = re.compile(r"reading file (\S+?)\.? ?Details|reading file (\S+?)\.?$")


def is_input_name(name: Column) -> Column:
    """Whether a file name (a column) is one the job reads."""
    cond = F.lit(False)
    for suffix in SUFFIXES:
        cond = cond | name.endswith(suffix)
    return cond


def list_lines(spark: SparkSession, inputs: Sequence[str]) -> DataFrame:
    """Every line of every file under ``inputs``, at any depth, names unfiltered (see
    ``input_lines``). One column, ``value``; the file is in ``_metadata``."""
    from pyspark.errors import AnalysisException

    check_symlink_loops(spark, inputs)
    try:
        return spark.read.option("recursiveFileLookup", "true").text(list(inputs))
    except AnalysisException as e:
        text = str(e)
        if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
            raise errors.UsageError(f"input not found: {redact(_first_line(text))}") from None
        raise


def check_symlink_loops(spark: SparkSession, inputs: Sequence[str]) -> None:
    """Refuse (exit 2, naming the link) a local input that holds a symbolic link leading back to a
    folder above it, such as ``loop -> .``: Hadoop's local file system follows links, so Spark's
    listing would go round it until the driver runs out of memory. Other file systems (OSS, HDFS)
    have no such links to follow."""
    for uri in inputs:
        if hadoop.scheme(spark, uri) != "file":
            continue
        root = hadoop.local_path(spark, uri)
        for start in (glob.glob(root) if glob.has_magic(root) else [root]):
            loop = find_symlink_loop(start)
            if loop:
                link, target = loop
                raise errors.UsageError(f"input {redact(uri)} holds a symbolic link loop: {link} -> {target} leads back "
                                     "to a folder above it, so listing the input would never end; remove the link, "
                                     "or pass the folders beside it as --input")


def find_symlink_loop(root: str) -> tuple[str, str] | None:
    """The first symbolic link under the local folder ``root`` (followed as Hadoop follows them)
    that leads to a folder above it or to itself, as (link, what it points to); None if there is
    none. Names that Spark never lists (starting with ``.``, or ``_`` without ``=``) are not
    entered."""
    if not os.path.isdir(root):
        return None
    todo = [(root, (os.path.realpath(root),))]
    while todo:
        folder, above = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: Spark's listing reports it
        for entry in entries:
            name = entry.name
            if name.startswith(".") or (name.startswith("_") and "=" not in name):
                continue
            if entry.is_symlink():
                try:
                    real = os.path.realpath(entry.path, strict=True)
                except OSError as e:
                    if e.errno == errno.ELOOP:  # a link to itself, or a ring of links
                        return entry.path, os.readlink(entry.path)
                    continue  # dangling: Hadoop skips it
                if not os.path.isdir(real):
                    continue
                if real in above:
                    return entry.path, os.readlink(entry.path)
                todo.append((entry.path, above + (real,)))
            elif entry.is_dir(follow_symlinks=False):
                todo.append((entry.path, above + (os.path.join(above[-1], name),)))
    return None


def input_lines(listed: DataFrame, excluded: Iterable[str] = ()) -> DataFrame:
    """The lines of the input files only: ``list_lines`` filtered by file name, and without the
    files in ``excluded`` (URIs as ``_metadata.file_path`` gives them). Spark prunes the listing
    with these filters, so skipped and excluded files are never opened."""
    meta = F.col("_metadata")
    cond = is_input_name(meta["file_name"])
    excluded = sorted(set(excluded))
    if excluded:
        cond = cond & ~meta["file_path"].isin(excluded)
    return listed.where(cond)


@dataclass
class InputIndex:
    """What the listing found: the input files (with at least one byte), the files skipped by
    name, empty files, and a sample of input files."""

    files: int
    bytes: int
    sample: list[str]
    skipped: dict = field(default_factory=dict)
    empty_files: int = 0
    input_list: dict | None = None  # --input-list: entries, duplicates (FileList.facts)
    only_new: dict | None = None  # --only-new: files already ingested, changed since


def index_inputs(spark: SparkSession, listed: DataFrame, lines: DataFrame, sample_files: int) -> InputIndex:
    """Counts and sizes from Spark's own index and its pruned scans (no second listing), the
    skipped files by rule with a few examples, and a deterministic, well-spread sample of input
    files (Spark returns files in hash order; every k-th input file is taken)."""
    all_files = sparkapi.input_files(listed)
    total = len(all_files)
    others = listed.where(~is_input_name(F.col("_metadata.file_name")))
    n_files, n_bytes = sparkapi.scan_size(lines)
    skipped_n, skipped_bytes = sparkapi.scan_size(others)
    skipped = {"files": skipped_n, "bytes": skipped_bytes,
               "by_rule": {"other_name": skipped_n} if skipped_n else {}, "examples": [],
               "hidden": HIDDEN_RULE}
    if skipped_n:
        rows = others.select(F.col("_metadata.file_path").alias("p")).distinct().limit(5).collect()
        skipped["examples"] = sorted(redact(hadoop.uri_to_path(spark, r.p)) for r in rows)

    want = min(sample_files, n_files)
    picked: list[str] = []
    if want:
        step = max(1, total // want)
        i = 0
        while len(picked) < want and i < total:
            uri = str(all_files[i])
            if uri.endswith(SUFFIXES):
                picked.append(uri)
                i += step
            else:
                i += 1
    sample = sorted(hadoop.uri_to_path(spark, u) for u in picked)
    return InputIndex(n_files, n_bytes, sample, skipped, max(0, total - n_files - skipped_n))


def spread_sample(paths: Sequence[str], n: int) -> list[str]:
    """``n`` of ``paths``, spread evenly over them (deterministic)."""
    if n <= 0 or not paths:
        return []
    ordered = sorted(paths)
    step = max(1, len(ordered) // n)
    return ordered[::step][:n]


# ---------------------------------------------------------------------------------------------
# Files that cannot be read


@dataclass(frozen=True)
class BadFile:
    """An input file that cannot be read to its end, and why."""

    uri: str
    reason: str  # corrupt_file | unreadable_file
    detail: str
    size: int = 0


def named_file(exc: BaseException) -> str | None:
    """The file Spark names in a read failure (``Encountered error while reading file X``)."""
    for _, message in errors.cause_chain(exc):
        m = _READ_FILE.search(message)
        if m:
            return (m.group(1) or m.group(2)).rstrip(".")
    return None


def is_read_failure(exc: BaseException) -> bool:
    """Whether a failed write failed while reading an input file (I/O or decompression)."""
    kinds = ("java.io.", "java.util.zip.", "org.apache.hadoop.", "FileNotFound", "AccessDenied")
    if errors.classify(exc) is not None:  # a full disk, a quota: no input file is to blame
        return False
    chain = errors.cause_chain(exc)
    return named_file(exc) is not None or any(t.startswith(kinds) or "IOException" in t for t, _ in chain)


def check_file(spark: SparkSession, uri: str) -> BadFile | None:
    """Read ``uri`` to its end on the driver as Spark's text reader would; a BadFile if it fails."""
    try:
        hadoop.read_through(spark, uri)
        return None
    except Exception as e:  # noqa: BLE001 - any failure to read is the answer
        chain = errors.cause_chain(e)
        kind, message = chain[-1] if chain else (type(e).__name__, str(e))
        decompress = any(w in (kind + message).lower() for w in ("zip", "gzip", "eof", "decompress", "inflat",
                                                                "end of input", "header"))
        reason = "corrupt_file" if decompress else "unreadable_file"
        try:
            size = hadoop.file_size(spark, uri)
        except Exception:  # noqa: BLE001 - gone or not even listable
            size = 0
        return BadFile(uri, reason, f"{kind.rsplit('.', 1)[-1]}: {redact(message)}"[:500], size)


def find_bad_files(spark: SparkSession, inputs: Sequence[str], exc: BaseException) -> list[BadFile]:
    """The input files behind a failed read.

    When Spark names the file, only that file is checked. Otherwise (a compressed stream that
    breaks off mid-way is reported without its name) every compressed input file is checked in
    parallel on the executors, and each one found is confirmed on the driver with Spark's own
    reader before it is set aside.
    """
    named = named_file(exc)
    if named:
        bad = check_file(spark, hadoop.encoded_uri(spark, named, encoded=True))
        return [bad] if bad else []
    found = []
    for uri in _suspect_compressed_files(spark, inputs):
        bad = check_file(spark, uri)
        if bad:
            found.append(bad)
    return found


def gzip_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete gzip stream (one or more members), or None if it is."""
    import zlib

    rest = bytes(data)
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = rest
            while chunk and not d.eof:
                d.decompress(chunk, 1 << 20)
                chunk = d.unconsumed_tail
        except zlib.error as e:
            return str(e)
        if not d.eof:
            return "unexpected end of the compressed stream"
        rest = d.unused_data
    return None


def _gzip_problems(contents: pd.Series) -> pd.Series:
    return contents.map(gzip_problem)


def _suspect_compressed_files(spark: SparkSession, inputs: Sequence[str]) -> list[str]:
    """Compressed input files that Python's gzip cannot read to their end (checked on executors)."""
    from pyspark.sql.functions import pandas_udf

    problem = pandas_udf(_gzip_problems, "string")  # type: ignore[call-overload]
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .option("pathGlobFilter", "*.jsonl.gz").load(list(inputs)))
    bad = files.select("path", problem(F.col("content")).alias("problem")).where(F.col("problem").isNotNull())
    return sorted(hadoop.encoded_uri(spark, r.path) for r in bad.collect())


def file_reject_weight(size: int, bytes_per_line: float) -> int:
    """How many rejected lines a file that could not be read counts as: its size over the run's
    mean bytes per line, rounded up, and at least one."""
    if bytes_per_line <= 0:
        return 1
    return max(1, math.ceil(size / bytes_per_line))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
