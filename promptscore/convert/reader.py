"""The convert job's Java half: the jar of its reader and its line parser (built from ``java/``,
loaded into the session), and the read-ahead reader: the lines of the input files, with the next
files' requests in flight while a task parses the current one.

Spark's text source opens a task's files one after another, so on OSS each ~100 KB file costs a
task one request's latency (tens of milliseconds) of doing nothing. ``read_lines`` takes the
tasks Spark planned for the scan (the same files in the same tasks) and reads them with
``promptscore/convert/java/ReadAheadLines.java``: in each task a few threads fetch whole files ahead
through the same Hadoop file system (JindoSDK for ``oss://``), and the lines are split exactly as
Spark's text source splits them. A read that fails with a transient error (503, connection reset)
is made again, up to 5 times with growing pauses, and counted; a missing file, a refused access
or a broken ``.gz`` is not retried. Files split over tasks, and files over 16 MB, are read by
Hadoop's ``LineRecordReader`` as Spark reads them, with nothing ahead.

The reader, the convert job's line parser (``JsonLineParser.java``, see
``promptscore.convert.jsonl``) and the listing's counts (``ListingFacts.java``, see
``promptscore.convert.inputs``) are one jar, ``promptscore/convert/jars/promptscore-readahead.jar``,
built from every ``promptscore/convert/java/*.java`` with the machine's ``javac`` against pyspark's
jars (class files for Java 8, the oldest JVM a supported Spark runs on) and committed with the
sources it was built from (a test checks that its recorded digest matches them). The wheel and the
``--py-files`` zip carry it; the job adds it to its session itself
(``SparkContext.addJar`` sends it to the executors; from a zip it is first copied to a local
file), and a jar passed with ``spark-submit --jars`` is used as it is. The parser is required:
without the jar the convert job exits 2 saying how to get it. Read-ahead is not: when Spark's
internals differ, or with ``spark.promptscore.convert.readAhead`` (files in flight per task,
default 16) set to 0, the lines are read by Spark's text source and parsed by the same parser,
and the report's ``reader`` says so.

    python -m promptscore.convert.reader build   # (re)build the jar when its sources changed (needs javac then)
    python -m promptscore.convert.reader path    # print the jar's path (exit 1 when it is not built)
"""

from __future__ import annotations

import hashlib
import io
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from promptscore import errors, sparkapi

JAVA_DIR = Path(__file__).resolve().parent / "java"
JAR = Path(__file__).resolve().parent / "jars" / "promptscore-readahead.jar"
CLASS = "promptscore.readahead.ReadAheadLines"
PARSER_CLASS = "promptscore.readahead.JsonLineParser"
FACTS_CLASS = "promptscore.readahead.ListingFacts"  # the listing's counts (promptscore.convert.inputs)
KEY = "spark.promptscore.convert.readAhead"
DEFAULT_IN_FLIGHT = 16
MAX_IN_FLIGHT = 64  # threads per task
MAX_BUFFERED_BYTES = 64 << 20  # per task: whole files fetched ahead and not yet parsed
WHOLE_FILE_LIMIT = 16 << 20  # larger files are streamed, as Spark streams them
SCHEMA = ("value string, _metadata struct<file_path: string not null, file_name: string not null, "
          "file_size: bigint not null, file_modification_time: timestamp not null> not null")
_DIGEST_ENTRY = "META-INF/promptscore-readahead.sha256"


def sources() -> list[Path]:
    """The Java sources of the jar."""
    return sorted(JAVA_DIR.glob("*.java"))


def digest_of(texts: dict[str, bytes]) -> str:
    """The hash of Java sources given as {file name: bytes} (what the jar records)."""
    h = hashlib.sha256()
    for name in sorted(texts):
        h.update(name.encode() + b"\0" + hashlib.sha256(texts[name]).hexdigest().encode() + b"\n")
    return h.hexdigest()


def source_digest() -> str:
    """The hash of the Java sources (the jar records the sources it was built from)."""
    return digest_of({p.name: p.read_bytes() for p in sources()})


def jar_digest(jar: Path | bytes) -> str | None:
    """The source digest a jar records, or None when it is not such a jar."""
    try:
        with zipfile.ZipFile(jar if isinstance(jar, Path) else io.BytesIO(jar)) as z:
            return z.read(_DIGEST_ENTRY).decode().strip()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def jar_path() -> Path | None:
    """The jar built from today's sources: the package's own file, or, when the package is
    imported from a zip (``--py-files``), the jar in the zip copied to a local file. None when
    there is none."""
    if JAR.is_file():
        return JAR if is_current(JAR) else None
    return _jar_from_zip()


def is_current(jar: Path | None = None) -> bool:
    """Whether ``jar`` (default: the package's) was built from today's sources."""
    return jar_digest(jar or JAR) == source_digest()


_extracted: list[Path] = []


def _jar_from_zip() -> Path | None:
    if _extracted:
        return _extracted[0]
    try:
        data = pkgutil.get_data(__package__, "jars/" + JAR.name)
        texts = {}
        for name in _zip_java_names():
            texts[name] = pkgutil.get_data(__package__, "java/" + name) or b""
    except OSError:
        return None
    if not data or not texts or jar_digest(data) != digest_of(texts):
        return None
    folder = Path(tempfile.mkdtemp(prefix="promptscore-jar-"))
    path = folder / JAR.name
    path.write_bytes(data)
    _extracted.append(path)
    return path


def _zip_java_names() -> list[str]:
    loader = getattr(sys.modules["promptscore"], "__loader__", None)
    archive = getattr(loader, "archive", None)  # zipimport
    if not archive:
        return []
    prefix = getattr(loader, "prefix", "") + "promptscore/convert/java/"
    with zipfile.ZipFile(archive) as z:
        return sorted(n[len(prefix):] for n in z.namelist() if n.startswith(prefix) and n.endswith(".java"))


def build(force: bool = False) -> Path:
    """Build the jar when it is missing or older than the sources. Raises RuntimeError without
    ``javac`` or on a compile error."""
    if not force and is_current():
        return JAR
    return compile_jar(sources(), JAR, {_DIGEST_ENTRY: source_digest() + "\n"})


# ---------------------------------------------------------------------------------------------
# Building the jar

_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def javac() -> str | None:
    """The ``javac`` to use (``$JAVA_HOME/bin/javac`` first), or None when there is none."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "javac"), os.X_OK):
        return os.path.join(home, "bin", "javac")
    return shutil.which("javac")


def spark_jars_dir() -> Path:
    """pyspark's own jars (Spark's and Hadoop's client APIs)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def compile_jar(source: Path | Sequence[Path], jar: Path, extra: dict[str, str] | None = None) -> Path:
    """Compile ``source`` (one file or several) into ``jar`` (replaced whole, never half-written),
    with ``extra`` files (name: text) beside the classes. The jar's bytes depend only on the class
    files and ``extra`` (fixed entry times), so a rebuild from the same sources is the same file.
    Raises RuntimeError when there is no ``javac`` or the source does not compile."""
    sources = [source] if isinstance(source, Path) else list(source)
    compiler = javac()
    if compiler is None:
        raise RuntimeError("no javac (install a JDK, e.g. openjdk-17-jdk-headless, or set JAVA_HOME)")
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent) as work:
        classes = Path(work) / "classes"
        proc = subprocess.run([compiler, "--release", "8", "-nowarn", "-cp", f"{spark_jars_dir()}/*",
                               "-d", str(classes), *map(str, sources)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"javac failed on {', '.join(s.name for s in sources)}:\n{proc.stderr[-4000:]}")
        partial = Path(work) / jar.name
        entries = {"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\n\r\n"}
        entries.update((f.relative_to(classes).as_posix(), f.read_bytes()) for f in sorted(classes.rglob("*.class")))
        entries.update((name, text.encode()) for name, text in (extra or {}).items())
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries.items():
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, data)
        os.replace(partial, jar)  # concurrent builders: the last complete jar wins
    return jar


# ---------------------------------------------------------------------------------------------
# Reading


def files_in_flight(spark: SparkSession) -> int:
    """``spark.promptscore.convert.readAhead``: files fetched ahead per task (0: Spark's reader)."""
    value = spark.conf.get(KEY, None)
    try:
        n = DEFAULT_IN_FLIGHT if value in (None, "") else int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_IN_FLIGHT:
        raise errors.UsageError(f"{KEY}={value!r}: expected a whole number of files from 0 to {MAX_IN_FLIGHT} "
                             "(0 turns read-ahead off)")
    return n


def retry_counter(spark: SparkSession):
    """A Spark accumulator (JVM ``LongAccumulator``) for ``read_lines`` to count retried reads in;
    its ``value()`` once the job's write is done."""
    return sparkapi.long_accumulator(spark, "promptscore.readahead.retries")


def read_lines(spark: SparkSession, lines: DataFrame, in_flight: int, spec=None,
               row_schema: StructType | None = None, retries=None) -> tuple[DataFrame, dict]:
    """``lines`` (a text scan with ``_metadata``, filtered by file only) read by the read-ahead
    reader, and what was used: ``{"name": "read-ahead", "files_in_flight": n}``, or
    ``{"name": "spark", "why": ...}`` with ``lines`` unchanged when read-ahead is off or Spark's
    internals differ. With a parser ``spec`` (``jsonl.parser_spec``) the reader's tasks parse
    each line as they read it, and the rows are those of ``jsonl.parse_lines``, whose schema the
    caller gives as ``row_schema`` (``jsonl.output_schema``); the lines, unparsed, still come
    back when read-ahead is off.
    Whole-file reads that failed with a transient error and were made again are counted in
    ``retries`` (from ``retry_counter``), if given."""
    if in_flight <= 0:
        return lines, {"name": "spark", "why": f"{KEY}=0"}
    if not load(spark):
        return lines, {"name": "spark", "why": "the read-ahead jar is not built (python -m promptscore.convert."
                                               "reader build, with a JDK) nor on the class path (spark-submit "
                                               "--jars)"}
    scans = sparkapi.file_scans(lines)
    if len(scans) != 1:
        return lines, {"name": "spark", "why": f"the input plan has {len(scans)} file scans, not one"}
    from py4j.protocol import Py4JError

    try:
        # Spark internals (sparkapi): the scan's planned tasks, and a DataFrame of its rows.
        rdd = getattr(sparkapi.jvm(spark), CLASS).lines(
            sparkapi.java_context(spark), sparkapi.scan_input_rdd(scans[0]), sparkapi.session_hadoop_conf(spark),
            in_flight, MAX_BUFFERED_BYTES, WHOLE_FILE_LIMIT, retries, spec)
        df = sparkapi.frame_of_rows(spark, rdd, SCHEMA if spec is None else row_schema)
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
    sparkapi.add_jar(spark, str(jar))
    return _loadable(spark)


def require(spark: SparkSession) -> None:
    """Load the jar (``load``), or raise UsageError (exit 2) saying how to get it: the convert job
    parses every line with it."""
    if load(spark):
        return
    raise errors.UsageError(f"the JSONL parser ({JAR.name}) cannot be loaded: this package holds no jar built from "
                         "its Java sources; reinstall the package (the wheel and the --py-files zip of `make "
                         "package` carry it), run `python -m promptscore.convert.reader build` (needs a JDK), or pass "
                         "the jar with spark-submit --jars")


def _loadable(spark: SparkSession) -> bool:
    jvm = sparkapi.jvm(spark)
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName(CLASS, True, loader)
        jvm.java.lang.Class.forName(PARSER_CLASS, True, loader)
        return True
    except Exception:  # noqa: BLE001 - py4j reports a missing class as a Java exception
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["path"]:
        if jar_path() is None:
            print("reader: not built (python -m promptscore.convert.reader build)", file=sys.stderr)
            return 1
        print(JAR)
        return 0
    if args in (["build"], ["build", "--force"]):
        if javac() is None:
            if is_current() and "--force" not in args:
                print(JAR)  # the committed jar was built from these sources: nothing to do
                return 0
            print(f"reader: no javac, and {JAR.name} was not built from these Java sources, so the convert "
                  "job cannot parse its input. Install a JDK (e.g. openjdk-17-jdk-headless) and run "
                  "python -m promptscore.convert.reader build", file=sys.stderr)
            return 2
        print(build(force="--force" in args))
        return 0
    print("usage: python -m promptscore.convert.reader build [--force] | path", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
