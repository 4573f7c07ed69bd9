"""Input files that cannot be read to their end (a broken ``.gz``, a file that cannot be opened):
which file a failed read was about, confirming it on the driver, and how much it weighs among the
rejects. The convert job sets such a file aside whole and writes again without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from promptscore import errors, sparkapi
from promptscore.io import hadoop
from promptscore.io.files import File
from udfs.uris import redact


@dataclass(frozen=True)
class BadFile:
    """An input file that cannot be read to its end, and why."""

    uri: str
    reason: str  # corrupt_file | unreadable_file
    detail: str
    size: int = 0


def named_file(exc: BaseException) -> str | None:
    """The file Spark names in a read failure (``Encountered error while reading file X``)."""
    return errors.file_named(errors.cause_chain(exc))


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


def find_bad_files(spark: SparkSession, compressed: Callable[[], Sequence[File] | None], inputs: Sequence[str],
                   exc: BaseException) -> list[BadFile]:
    """The input files behind a failed read.

    When Spark names the file, only that file is checked. Otherwise (a compressed stream that
    breaks off mid-way is reported without its name) every compressed input file is checked in
    parallel on the executors, and each one found is confirmed on the driver with Spark's own
    reader before it is set aside. ``compressed()`` gives those files as the listing knows them
    (read without listing again); where it gives None, ``inputs`` are listed for them.
    """
    named = named_file(exc)
    if named:
        bad = check_file(spark, hadoop.encoded_uri(spark, named, encoded=True))
        return [bad] if bad else []
    found = []
    for uri in _suspect_compressed_files(spark, compressed(), inputs):
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


def _gzip_problems(contents):  # type: ignore[no-untyped-def]
    # A pandas Series of file contents -> a Series of problems. No type hints, so that pandas is
    # imported only on the executors that run it: pandas_udf then takes it as a scalar UDF.
    return contents.map(gzip_problem)


def _suspect_compressed_files(spark: SparkSession, known: Sequence[File] | None, inputs: Sequence[str]) -> list[str]:
    """Compressed input files that Python's gzip cannot read to their end (checked on executors)."""
    from pyspark.sql.functions import pandas_udf

    problem = pandas_udf(_gzip_problems, "string")  # type: ignore[call-overload]
    files = None
    if known is not None:
        if not known:
            return []
        try:
            files = sparkapi.read_known_files(spark, known, "binaryFile")
        except Exception as e:
            if not sparkapi.is_py4j_error(e):
                raise
    if files is None:
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
