"""The convert job's read-ahead reader: the lines of the input files, with the next files'
requests in flight while a task parses the current one.

Spark's text source opens a task's files one after another, so on OSS each ~100 KB file costs a
task one request's latency (tens of milliseconds) of doing nothing. ``read_lines`` takes the
tasks Spark planned for the scan (the same files in the same tasks) and reads them with
``promptscore/java/ReadAheadLines.java``: in each task a few threads fetch whole files ahead
through the same Hadoop file system (JindoSDK for ``oss://``), and the lines are split exactly as
Spark's text source splits them. A read that fails with a transient error (503, connection reset)
is made again, up to 5 times with growing pauses, and counted; a missing file, a refused access
or a broken ``.gz`` is not retried. Files split over tasks, and files over 16 MB, are read by
Hadoop's ``LineRecordReader`` as Spark reads them, with nothing ahead.

The reader is a jar, ``promptscore/jars/promptscore-readahead.jar``: built by ``make`` (with a
JDK) and shipped in the wheel, so it lies beside the installed package on every node. The job
adds it to its session itself (``SparkContext.addJar`` sends it to the executors); a jar passed
with ``spark-submit --jars`` is used as it is. Without either, the job reads with Spark's text
source and says so in its report (``reader``). Set
``spark.promptscore.convert.readAhead`` (files in flight per task, default 16) to 0 to read with
Spark's text source anyway.

    python -m promptscore.readahead build     # (re)build the jar; exits 0 with a note without javac
    python -m promptscore.readahead path      # print the jar's path (exit 1 when it is not built)
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

SOURCE = Path(__file__).resolve().parent / "java" / "ReadAheadLines.java"
JAR = Path(__file__).resolve().parent / "jars" / "promptscore-readahead.jar"
CLASS = "promptscore.readahead.ReadAheadLines"
KEY = "spark.promptscore.convert.readAhead"
DEFAULT_IN_FLIGHT = 16
MAX_IN_FLIGHT = 64  # threads per task
MAX_BUFFERED_BYTES = 64 << 20  # per task: whole files fetched ahead and not yet parsed
WHOLE_FILE_LIMIT = 16 << 20  # larger files are streamed, as Spark streams them
SCHEMA = ("value string, _metadata struct<file_path: string not null, file_name: string not null, "
          "file_size: bigint not null, file_modification_time: timestamp not null> not null")
_DIGEST_ENTRY = "META-INF/promptscore-readahead.sha256"


def source_digest() -> str:
    """The hash of the Java source (the jar records the source it was built from)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def jar_path() -> Path | None:
    """The built jar, or None when it has not been built from today's source."""
    return JAR if JAR.is_file() and is_current(JAR) else None


def is_current(jar: Path | None = None) -> bool:
    """Whether ``jar`` (default: the package's) was built from today's source."""
    try:
        with zipfile.ZipFile(jar or JAR) as z:
            return z.read(_DIGEST_ENTRY).decode().strip() == source_digest()
    except (OSError, KeyError, zipfile.BadZipFile):
        return False


def build(force: bool = False) -> Path:
    """Build the jar when it is missing or older than the source. Raises RuntimeError without
    ``javac`` or on a compile error."""
    from promptscore.javac import compile_jar

    if not force and is_current():
        return JAR
    return compile_jar(SOURCE, JAR, {_DIGEST_ENTRY: source_digest()})


def files_in_flight(spark: SparkSession) -> int:
    """``spark.promptscore.convert.readAhead``: files fetched ahead per task (0: Spark's reader)."""
    value = spark.conf.get(KEY, None)
    try:
        n = DEFAULT_IN_FLIGHT if value in (None, "") else int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_IN_FLIGHT:
        from promptscore import cli

        raise cli.UsageError(f"{KEY}={value!r}: expected a whole number of files from 0 to {MAX_IN_FLIGHT} "
                             "(0 turns read-ahead off)")
    return n


def retry_counter(spark: SparkSession):
    """A Spark accumulator (JVM ``LongAccumulator``) for ``read_lines`` to count retried reads in;
    its ``value()`` once the job's write is done."""
    return spark.sparkContext._jsc.sc().longAccumulator("promptscore.readahead.retries")


def read_lines(spark: SparkSession, lines: DataFrame, in_flight: int, retries=None) -> tuple[DataFrame, dict]:
    """``lines`` (a text scan with ``_metadata``, filtered by file only) read by the read-ahead
    reader, and what was used: ``{"name": "read-ahead", "files_in_flight": n}``, or
    ``{"name": "spark", "why": ...}`` with ``lines`` unchanged when read-ahead is off or the jar
    is not on the class path. Whole-file reads that failed with a transient error and were made
    again are counted in ``retries`` (from ``retry_counter``), if given."""
    if in_flight <= 0:
        return lines, {"name": "spark", "why": f"{KEY}=0"}
    jvm = spark.sparkContext._jvm
    if not load(spark):
        return lines, {"name": "spark", "why": "the read-ahead jar is not built (python -m promptscore.readahead "
                                               "build, with a JDK) nor on the class path (spark-submit --jars)"}
    scans = _file_scans(lines)
    if len(scans) != 1:
        return lines, {"name": "spark", "why": f"the input plan has {len(scans)} file scans, not one"}
    from py4j.protocol import Py4JError

    jspark = spark._jsparkSession
    try:
        # Spark internals (tested on 3.5): the scan's planned tasks, and a DataFrame of its rows.
        conf = jspark.sessionState().newHadoopConf()
        rdd = getattr(jvm, CLASS).lines(spark.sparkContext._jsc, scans[0].inputRDD(), conf, in_flight,
                                        MAX_BUFFERED_BYTES, WHOLE_FILE_LIMIT, retries)
        schema = jvm.org.apache.spark.sql.types.StructType.fromDDL(SCHEMA)
        df = DataFrame(jspark.internalCreateDataFrame(rdd.rdd(), schema, False), spark)
    except Py4JError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return lines, {"name": "spark", "why": f"read-ahead is not available on Spark {spark.version}: {first}"}
    return df, {"name": "read-ahead", "files_in_flight": in_flight}


def load(spark: SparkSession) -> bool:
    """Whether the reader's class can be used: already on the class path (``--jars``), or added
    now from this package's built jar, to the driver's session class loader and, through
    ``SparkContext.addJar``, to every executor."""
    if _loadable(spark):
        return True
    jar = jar_path()
    if jar is None:
        return False
    spark._jsparkSession.sessionState().resourceLoader().addJar(str(jar))
    return _loadable(spark)


def _loadable(spark: SparkSession) -> bool:
    jvm = spark.sparkContext._jvm
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(CLASS, True, loader)
        return True
    except Exception:  # noqa: BLE001 - py4j reports a missing class as a Java exception
        return False


def _file_scans(df: DataFrame) -> list:
    leaves = df._jdf.queryExecution().executedPlan().collectLeaves()
    found = []
    for i in range(leaves.size()):
        leaf = leaves.apply(i)
        if leaf.getClass().getSimpleName() == "FileSourceScanExec":
            found.append(leaf)
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["path"]:
        if jar_path() is None:
            print("readahead: not built (python -m promptscore.readahead build)", file=sys.stderr)
            return 1
        print(JAR)
        return 0
    if args in (["build"], ["build", "--force"]):
        from promptscore.javac import javac

        if javac() is None:
            print("readahead: no javac, so the read-ahead reader is not built; the convert job reads with Spark's "
                  "text source (slower on OSS). Install a JDK (e.g. openjdk-17-jdk-headless) and run "
                  "python -m promptscore.readahead build", file=sys.stderr)
            return 0
        print(build(force="--force" in args))
        return 0
    print("usage: python -m promptscore.readahead build [--force] | path", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
