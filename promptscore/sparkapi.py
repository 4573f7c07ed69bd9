"""The one door to Spark's, PySpark's and the JVM's private parts: every call the package makes past
their public Python API goes through a function here, so that a Spark upgrade is checked in one
file, against one table.

``check_version`` is the one version check: a Spark it does not know (``KNOWN``) gets one note at
the start of a job (``cli.run``), and the job goes on. Where a private call has a public fallback
the callers use it (read-ahead falls back to Spark's text source, ``read_known_files`` to a plain
read, ``force_file_listing`` to a second name); where it has none the job fails on that call,
and the note said why. Refusing unknown versions outright would also refuse the ones that work.

What each call is, and what Spark 4 changes (checked against Spark's sources; Spark 4 under
Spark Connect has no JVM on the Python side at all, so none of these works there: the jobs need a
classic session, which is what ``spark-submit`` gives; ``...`` stands for the package of the
Spark 3.5 column):

=============================================  ==================================  ====================================
call                                           Spark 3.5 (tested)                  Spark 4.0
=============================================  ==================================  ====================================
``SparkContext._jsc`` / ``_gateway`` /         JavaSparkContext, py4j gateway      same (classic)
``_gateway_client`` / ``_ensure_initialized``
``SparkSession._jsparkSession``                ``org.apache.spark.sql.SparkSession``  ``...classic.SparkSession``;
                                                                                   the methods used here are on it
``DataFrame(jdf, session)``                    ``pyspark.sql.DataFrame``           ``...classic.dataframe.DataFrame``
                                                                                   (``frame`` picks whichever is there)
``DataFrame._jdf``, ``inputFiles()`` on it     Dataset                              same
``LogicalRelation.relation().location()``,     analyzed plan; ``allFiles()``        same
``PartitioningAwareFileIndex.allFiles``
``_parse_datatype_string``                     ``pyspark.sql.types``                same
``DataFrame._collect_as_arrow``                PandasConversionMixin                same
``internalCreateDataFrame(rdd, schema, b)``    SparkSession (private[sql])          classic SparkSession
``baseRelationToDataFrame``                    SparkSession                         classic SparkSession
``sessionState().newHadoopConf()``,            SessionState                         same
``resourceLoader().addJar``
``FileSourceScanExec.inputRDD``                lazy val                             same
``FileSourceScanExec.selectedPartitions``      ``Array[PartitionDirectory]``        ``ScanFileListing`` (forced here)
``InMemoryFileIndex`` (7 arguments),           as called                            same
``SharedInMemoryCache(size, ttl)``,
``HadoopFsRelation(...)(session)``
``FileStatus.toString``                        Hadoop 3.3: ``path=..; isDirectory``  Hadoop 3.4: same fields first
``PythonUtils.toScalaMap`` / ``toSeq``         Scala 2.12                           Scala 2.13: same helpers
``SparkContext.statusStore`` (stages),         AppStatusStore, SQLAppStatusStore    same
``sharedState().statusStore()`` (SQL
executions, plan graph, metrics)
``CapturedException._origin``                 pyspark.errors                       same
=============================================  ==================================  ====================================

The Java of the convert job's jar (``promptscore/convert/java``) uses Spark's ``InternalRow`` and
``FileScanRDD`` partitions; ``tests/spark/test_sparkapi.py`` runs every call here on the Spark in use.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Protocol, Sequence

KNOWN = ("3.5", "4.0")
TESTED = "3.5"
_STATUS = re.compile(r"path=(.*?); isDirectory=(true|false); length=(\d+); replication=\d+; "
                     r"blocksize=\d+; modification_time=(\d+);")
_CHUNK = 20_000  # file statuses per call into the JVM


def check_version(version: str) -> str | None:
    """The note for a Spark ``version`` this module does not know (None for a known one)."""
    if ".".join(version.split(".")[:2]) in KNOWN:
        return None
    return (f"Spark {version} is not a version this package knows ({', '.join(KNOWN)}; tested on {TESTED}): "
            "it reaches into Spark internals (promptscore/sparkapi.py) that may differ there; a failure "
            "naming one of them means this Spark is not supported")


# ---------------------------------------------------------------------------------------------
# The JVM behind a session


class JavaNames:
    """Java classes by name, like py4j's ``sc._jvm``, without asking the JVM what each part of a
    name is: py4j's view asks about ``org``, ``org.apache``, ... in turn, each a class lookup that
    fails only after searching every jar (about 0.2 ms of JVM CPU). Here the first part with a
    capital letter is the class (so a lowercase class, e.g. Spark's ``functions``, is out of reach)."""

    __slots__ = ("_client", "_fqn")

    def __init__(self, client: Any, fqn: str = ""):
        self._client, self._fqn = client, fqn

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        from py4j.java_gateway import JavaClass

        fqn = f"{self._fqn}.{name}" if self._fqn else name
        if fqn.rsplit(".", 1)[-1][:1].isupper():
            return JavaClass(fqn, self._client)
        return JavaNames(self._client, fqn)


def jvm(spark) -> Any:
    """The driver's JVM by class name (``JavaNames`` over the session's py4j gateway):
    ``jvm(spark).org.apache.hadoop.fs.Path(uri)``; ``getattr(jvm(spark), "a.b.C")`` works too."""
    return JavaNames(spark.sparkContext._gateway._gateway_client)


def java_context(spark) -> Any:
    """The driver's ``JavaSparkContext``."""
    return spark.sparkContext._jsc


def hadoop_conf(spark) -> Any:
    """The SparkContext's Hadoop ``Configuration`` (what ``FileSystem.get`` uses)."""
    return spark.sparkContext._jsc.hadoopConfiguration()


def session_hadoop_conf(spark) -> Any:
    """A Hadoop ``Configuration`` with the session's SQL settings on top (what a scan uses)."""
    return spark._jsparkSession.sessionState().newHadoopConf()


def add_jar(spark, path: str) -> None:
    """Add a jar to the session's class loader and, through ``SparkContext.addJar``, to executors."""
    spark._jsparkSession.sessionState().resourceLoader().addJar(path)


def long_accumulator(spark, name: str) -> Any:
    """A JVM ``LongAccumulator`` registered with the SparkContext."""
    return spark.sparkContext._jsc.sc().longAccumulator(name)


def driver_stderr() -> Any | None:
    """``System.err`` of the JVM that ``spark-submit`` started for this Python driver, over the
    process's one Py4J gateway (connected on first use); None when there is none."""
    from pyspark import SparkContext

    SparkContext._ensure_initialized()  # connects once to spark-submit's JVM; later calls reuse it
    return JavaNames(SparkContext._gateway._gateway_client).java.lang.System.err


def driver_heap_mb(spark) -> int:
    """The driver JVM's heap in use after a full garbage collection, in MB."""
    lang = jvm(spark).java.lang
    runtime = lang.Runtime.getRuntime()
    lang.System.gc()
    return int((runtime.totalMemory() - runtime.freeMemory()) / 2**20)


def java_chain(exc: BaseException, limit: int = 16) -> list[tuple[str, str]]:
    """(class name, message) of the Java exception behind ``exc`` and its causes, outermost first;
    [] for a Python error, or when the JVM is gone. The Java exception is py4j's
    ``java_exception`` on a raw ``Py4JJavaError``; on an error PySpark converted
    (``CapturedException``: ``AnalysisException`` and the like) it is ``_origin`` (3.5 and 4.0),
    or ``_java_exception`` where a PySpark keeps it under that name."""
    java = None
    for attribute in ("java_exception", "_origin", "_java_exception"):
        java = getattr(exc, attribute, None)
        if java is not None:
            break
    out: list[tuple[str, str]] = []
    while java is not None and len(out) < limit:
        try:
            out.append((str(java.getClass().getName()), str(java.getMessage() or "")))
            cause = java.getCause()
            java = None if cause is None or cause.equals(java) else cause
        except Exception:  # noqa: BLE001 - the gateway is gone
            break
    return out


# ---------------------------------------------------------------------------------------------
# DataFrames and their plans


def parse_ddl(ddl: str) -> Any:
    """The DataType a Spark DDL string describes (``a string, b bigint`` or ``struct<...>``);
    raises what Spark raises for bad DDL."""
    from pyspark.sql.types import _parse_datatype_string

    return _parse_datatype_string(ddl)


def collect_arrow(df) -> list:
    """The rows of ``df`` as Arrow record batches, without pandas."""
    return df._collect_as_arrow()


def frame(spark, jdf) -> Any:
    """A Python DataFrame over a JVM ``Dataset[Row]``."""
    try:
        from pyspark.sql.classic.dataframe import DataFrame  # Spark 4
    except ImportError:
        from pyspark.sql import DataFrame
    return DataFrame(jdf, spark)


def java_schema(spark, schema) -> Any:
    """The JVM ``StructType`` of a Python StructType, or of a DDL string (``not null`` kept)."""
    types = jvm(spark).org.apache.spark.sql.types
    if isinstance(schema, str):
        return types.StructType.fromDDL(schema)
    return types.DataType.fromJson(schema.json())


def internal_rows(df) -> Any:
    """The ``RDD[InternalRow]`` that ``df``'s plan computes (no conversion to rows)."""
    return df._jdf.queryExecution().toRdd()


def frame_of_rows(spark, rows, schema) -> Any:
    """A DataFrame of a JVM ``JavaRDD[InternalRow]`` whose rows have ``schema`` (a StructType, or
    DDL)."""
    jdf = spark._jsparkSession.internalCreateDataFrame(rows.rdd(), java_schema(spark, schema), False)
    return frame(spark, jdf)


def input_files(df) -> Any:
    """The files ``df`` reads, as a JVM array (``len`` and indexing; no copy of millions of
    names into Python)."""
    return df._jdf.inputFiles()


def file_index(df) -> Any:
    """Spark's file index of ``df`` (a plain file read: ``allFiles()`` gives the Hadoop
    ``FileStatus`` of every listed file; nothing crosses to Python), taken from the analyzed plan:
    no optimizer, no physical plan. Raises when ``df`` reads no file index."""
    leaves = df._jdf.queryExecution().analyzed().collectLeaves()
    for i in range(leaves.size()):
        try:
            return leaves.apply(i).relation().location()
        except Exception as e:  # not a file relation: the next leaf
            if not is_py4j_error(e):
                raise
    raise ValueError("no file index in this DataFrame's plan")


def _leaves(df) -> list:
    leaves = df._jdf.queryExecution().executedPlan().collectLeaves()
    return [leaves.apply(i) for i in range(leaves.size())]


def file_scans(df) -> list:
    """The ``FileSourceScanExec`` leaves of ``df``'s physical plan."""
    return [leaf for leaf in _leaves(df) if leaf.getClass().getSimpleName() == "FileSourceScanExec"]


def scan_input_rdd(scan) -> Any:
    """The tasks a file scan planned: its ``RDD[InternalRow]`` (``FileScanRDD``)."""
    return scan.inputRDD()


def scan_size(df) -> tuple[int, int]:
    """Files and bytes the file scans of ``df`` read after pruning (their driver-side metrics)."""
    files = size = 0
    for leaf in _leaves(df):
        metrics = leaf.metrics()
        if metrics.contains("numFiles") and metrics.contains("filesSize"):
            force_file_listing(leaf)
            files += int(metrics.apply("numFiles").value())
            size += int(metrics.apply("filesSize").value())
    return files, size


def force_file_listing(scan) -> None:
    """Make a file scan list its files, which fills its ``numFiles`` and ``filesSize`` metrics (a
    lazy value, under either name)."""
    for method in ("selectedPartitions", "inputRDD"):
        try:
            getattr(scan, method)()
            return
        except Exception:  # noqa: BLE001 - named differently in another Spark version
            continue


def index_files(df) -> list[tuple[str, int, int]]:
    """(path, size, modification ms) of every file in the file index of ``df`` (a plain file
    read), taken from the index Spark built when it listed (no request per file). Spark keeps
    Hadoop ``FileStatus`` objects there; their ``toString`` carries all three, and one string per
    ``_CHUNK`` files crosses to Python."""
    out: list[tuple[str, int, int]] = []
    for leaf in _leaves(df):
        try:
            files = leaf.relation().location().allFiles()
        except Exception:  # noqa: BLE001 - not a file scan
            continue
        n = files.size()
        for start in range(0, n, _CHUNK):
            text = files.slice(start, min(n, start + _CHUNK)).mkString("\n")
            for m in _STATUS.finditer(str(text)):
                if m.group(2) == "false":
                    out.append((m.group(1), int(m.group(3)), int(m.group(4))))
    return out


def scan_files(df, limit: int | None = None) -> list[tuple[str, int, int]] | None:
    """(path, size, modification ms) of the files the file scans of ``df`` read after pruning
    (filters on ``_metadata`` prune the listing Spark already holds: no request), at most
    ``limit``; None where this Spark's scan does not say (read them the public way)."""
    out: list[tuple[str, int, int]] = []
    try:
        for scan in file_scans(df):
            parts = scan.selectedPartitions()
            for i in range(len(parts)):
                files = parts[i].files()
                n = files.size() if limit is None else min(files.size(), limit - len(out))
                for start in range(0, n, _CHUNK):
                    text = files.slice(start, min(n, start + _CHUNK)).mkString("\n")
                    out += [(m.group(1), int(m.group(3)), int(m.group(4))) for m in _STATUS.finditer(str(text))
                            if m.group(2) == "false"]
                if limit is not None and len(out) >= limit:
                    return out[:limit]
    except Exception as e:
        if not is_py4j_error(e) and not isinstance(e, (AttributeError, TypeError)):
            raise
        return None
    return out


class KnownFile(Protocol):
    path: str
    size: int
    mtime_ms: int


_FORMATS = {"text": ("text.TextFileFormat", "value string"),
            "binaryFile": ("binaryfile.BinaryFileFormat",
                           "path string, modificationTime timestamp, length bigint, content binary")}


def read_known_files(spark, files: Sequence[KnownFile], fmt: str = "text") -> Any:
    """The lines (``value``, with ``_metadata``) of exactly ``files`` (or, ``fmt="binaryFile"``,
    one row per file with its ``content``), read through a file index made from their known
    sizes and times: Spark lists nothing and asks nothing per file."""
    sc = spark.sparkContext
    j, gateway = jvm(spark), sc._gateway
    fs_pkg = j.org.apache.hadoop.fs
    ds = j.org.apache.spark.sql.execution.datasources
    cache = ds.SharedInMemoryCache(1 << 62, -1).createForNewClient()
    by_dir: dict[str, list[KnownFile]] = {}
    for f in files:
        by_dir.setdefault(f.path.rsplit("/", 1)[0], []).append(f)
    roots = j.java.util.ArrayList()
    for folder, group in by_dir.items():
        statuses = gateway.new_array(fs_pkg.FileStatus, len(group))
        for i, f in enumerate(group):
            statuses[i] = fs_pkg.FileStatus(f.size, False, 1, 128 << 20, f.mtime_ms, fs_pkg.Path(f.path))
        root = fs_pkg.Path(folder)
        cache.putLeafFiles(root, statuses)
        roots.add(root)
    utils = j.org.apache.spark.api.python.PythonUtils
    params = utils.toScalaMap({"recursiveFileLookup": "true"})
    none = j.scala.Option.apply(None)
    jspark = spark._jsparkSession
    index = ds.InMemoryFileIndex(jspark, utils.toSeq(roots), params, none, cache, none, none)
    cls, ddl = _FORMATS[fmt]
    package, name = cls.split(".")
    file_format = getattr(getattr(ds, package), name)()
    relation = ds.HadoopFsRelation(index, j.org.apache.spark.sql.types.StructType(), java_schema(spark, ddl),
                                   none, file_format, params, jspark)
    return frame(spark, jspark.baseRelationToDataFrame(relation))


def is_py4j_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from py4j (a JVM call that failed or does not exist)."""
    return "py4j" in type(exc).__module__ or "Py4J" in type(exc).__name__


# ---------------------------------------------------------------------------------------------
# What Spark's status stores know about running work


def _seq(jseq) -> list:
    return [jseq.apply(i) for i in range(jseq.size())]


def execution_of_jobs(spark, job_ids: Iterable[int]) -> int | None:
    """The id of the latest SQL execution that ran any of the Spark jobs ``job_ids``."""
    jobs = set(job_ids)
    store = spark._jsparkSession.sharedState().statusStore()
    for e in reversed(_seq(store.executionsList())):
        if any(int(j) in jobs for j in _seq(e.jobs().keySet().toSeq())):
            return int(e.executionId())
    return None


def plan_metrics(spark, execution_id: int) -> list[tuple[str, str, str | None]]:
    """(plan node name, metric name, the metric's display text, None before it has one) of every
    metric of an SQL execution (live: updated by executor heartbeats)."""
    store = spark._jsparkSession.sharedState().statusStore()
    values = store.executionMetrics(execution_id)
    out: list[tuple[str, str, str | None]] = []
    for node in _seq(store.planGraph(execution_id).allNodes()):
        for m in _seq(node.metrics()):
            got = values.get(m.accumulatorId())
            out.append((str(node.name()), str(m.name()), str(got.get()) if got.isDefined() else None))
    return out


def active_stage_input(spark) -> list[tuple[int, int, int]]:
    """(stage id, input bytes, input records) of every active stage, as of the executors' last
    heartbeats."""
    store = spark.sparkContext._jsc.sc().statusStore()
    return [(int(s.stageId()), int(s.inputBytes()), int(s.inputRecords())) for s in _seq(store.activeStages())]
