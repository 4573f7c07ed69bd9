"""Every call of ``promptscore.sparkapi`` (the one door to Spark's private parts) on the Spark in use,
over real files: what each returns, so that a Spark upgrade that changes one fails here, by name."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql.types import LongType, StringType, StructField, StructType

from promptscore import sparkapi


def test_the_version_check_knows_35_and_40_and_says_one_line_otherwise():
    assert sparkapi.check_version("3.5.1") is None and sparkapi.check_version("4.0.0") is None
    note = sparkapi.check_version("3.4.3")
    assert note and "\n" not in note and "3.4.3" in note and "promptscore/sparkapi.py" in note
    assert sparkapi.check_version("5.0.0")


def test_this_spark_is_a_known_version(spark):
    assert sparkapi.check_version(spark.version) is None


def test_the_jvm_the_context_and_the_hadoop_confs(spark):
    assert sparkapi.jvm(spark).java.lang.Integer.parseInt("42") == 42
    assert sparkapi.java_context(spark).sc().appName() == spark.sparkContext.appName
    assert sparkapi.hadoop_conf(spark).get("fs.defaultFS") is not None
    spark.conf.set("promptscore.test.key", "on")  # a session setting reaches the scan's conf
    try:
        assert sparkapi.session_hadoop_conf(spark).get("promptscore.test.key") == "on"
        assert sparkapi.hadoop_conf(spark).get("promptscore.test.key") is None
    finally:
        spark.conf.unset("promptscore.test.key")
    acc = sparkapi.long_accumulator(spark, "promptscore.test.acc")
    spark.sparkContext.parallelize(range(3), 3).foreach(lambda _: None)
    assert acc.value() == 0 and acc.name().get() == "promptscore.test.acc"
    assert sparkapi.driver_heap_mb(spark) > 0
    assert sparkapi.driver_stderr() is not None


def test_java_names_reach_classes_their_statics_and_inner_classes_without_lookups(spark):
    from py4j.java_gateway import JavaClass

    jvm = sparkapi.jvm(spark)
    path = jvm.org.apache.hadoop.fs.Path
    assert isinstance(path, JavaClass) and path("/a/b").getName() == "b"
    assert getattr(jvm, "java.lang.Integer").MAX_VALUE == 2**31 - 1
    assert jvm.java.util.AbstractMap.SimpleEntry("k", 1).getKey() == "k"  # an inner class
    assert str(jvm.java.lang.Class.forName("java.util.Map$Entry").getName()) == "java.util.Map$Entry"
    with pytest.raises(Exception, match="no.such.Thing"):  # a class that is not there fails when used
        jvm.no.such.Thing()


def test_add_jar_puts_classes_on_the_session_class_path(spark):
    from promptscore.convert import reader

    if reader.jar_path() is None:
        pytest.skip("the read-ahead jar is not built")
    sparkapi.add_jar(spark, str(reader.jar_path()))
    loader = sparkapi.jvm(spark).java.lang.Thread.currentThread().getContextClassLoader()
    assert loader.loadClass(reader.PARSER_CLASS) is not None


def test_java_chain_names_the_java_exception_and_its_causes(spark, tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(Exception) as failed:  # py4j's error: PySpark converts only its own list of classes
        sparkapi.jvm(spark).java.io.FileInputStream(str(missing))
    chain = sparkapi.java_chain(failed.value)
    assert chain[0][0] == "java.io.FileNotFoundException" and str(missing) in chain[0][1]
    assert sparkapi.is_py4j_error(failed.value)
    assert sparkapi.java_chain(ValueError("python")) == [] and not sparkapi.is_py4j_error(ValueError("x"))


def test_ddl_schemas_arrow_and_frames(spark):
    schema = sparkapi.parse_ddl("id bigint, prompt string")
    assert schema == StructType([StructField("id", LongType()), StructField("prompt", StringType())])
    df = spark.createDataFrame([(1, "a"), (2, None)], schema)
    batches = sparkapi.collect_arrow(df)
    assert pa.Table.from_batches(batches).to_pylist() == [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": None}]
    assert sparkapi.java_schema(spark, schema).simpleString() == "struct<id:bigint,prompt:string>"
    assert sparkapi.java_schema(spark, "a int not null").apply(0).nullable() is False
    again = sparkapi.frame_of_rows(spark, sparkapi.internal_rows(df).toJavaRDD(), schema)
    assert_df_equality(again, df)


def _parquet(spark, tmp_path, files: int = 3):
    where = tmp_path / "pq"
    spark.range(0, 30, numPartitions=files).selectExpr("id", "cast(id as string) AS prompt").write.parquet(str(where))
    return where, sorted(p for p in where.iterdir() if p.suffix == ".parquet")


def test_the_files_a_scan_reads(spark, tmp_path):
    where, parts = _parquet(spark, tmp_path)
    df = spark.read.parquet(str(where))
    assert sorted(os.path.basename(str(f)) for f in sparkapi.input_files(df)) == [p.name for p in parts]
    (scan,) = sparkapi.file_scans(df)
    sparkapi.force_file_listing(scan)
    assert sparkapi.scan_input_rdd(scan).getNumPartitions() >= 1
    assert sparkapi.scan_size(df) == (len(parts), sum(p.stat().st_size for p in parts))
    indexed = sorted(sparkapi.index_files(df))
    assert [(os.path.basename(p), size) for p, size, _ in indexed] == [(p.name, p.stat().st_size) for p in parts]
    assert all(abs(mtime - int(p.stat().st_mtime * 1000)) < 2000 for (_, _, mtime), p in zip(indexed, parts))
    statuses = sparkapi.file_index(df).allFiles()
    assert statuses.size() == len(parts)
    assert sorted(statuses.apply(i).getPath().getName() for i in range(statuses.size())) == [p.name for p in parts]


@dataclass
class _Known:
    path: str
    size: int
    mtime_ms: int


def test_read_known_files_reads_exactly_those_files_without_listing(spark, tmp_path):
    (tmp_path / "d").mkdir()
    a, b, other = tmp_path / "d" / "a.jsonl", tmp_path / "d" / "b.jsonl", tmp_path / "d" / "other.jsonl"
    a.write_text("a1\na2\n")
    b.write_text("b1\n")
    other.write_text("not asked for\n")
    known = [_Known(f"file:{p}", p.stat().st_size, int(p.stat().st_mtime * 1000)) for p in (a, b)]
    df = sparkapi.read_known_files(spark, known)
    got = sorted((r.value, os.path.basename(r.file)) for r in df.select("value", "_metadata.file_path").toDF(
        "value", "file").collect())
    assert got == [("a1", "a.jsonl"), ("a2", "a.jsonl"), ("b1", "b.jsonl")]


def test_status_stores_see_executions_and_metrics(spark, tmp_path):
    where, _ = _parquet(spark, tmp_path, files=2)
    group = "promptscore-sparkapi-test"
    spark.sparkContext.setJobGroup(group, "test")
    try:
        assert spark.read.parquet(str(where)).count() == 30
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    tracker = spark.sparkContext.statusTracker()
    jobs = tracker.getJobIdsForGroup(group)
    execution = sparkapi.execution_of_jobs(spark, jobs)
    assert execution is not None
    metrics = sparkapi.plan_metrics(spark, execution)
    assert any(name == "number of output rows" for _, name, _ in metrics)
    assert sparkapi.active_stage_input(spark) == []  # nothing runs now


def test_java_chain_finds_the_java_exception_behind_an_error_pyspark_converted(spark, tmp_path):
    from pyspark.errors import AnalysisException

    from promptscore import errors

    missing = tmp_path / "nowhere"
    with pytest.raises(AnalysisException) as failed:  # PySpark converts this one to its own class
        spark.read.parquet(str(missing))
    chain = sparkapi.java_chain(failed.value)
    assert chain and chain[0][0] == "org.apache.spark.sql.AnalysisException" and str(missing) in chain[0][1]
    assert errors.cause_chain(failed.value)[0][0] == "org.apache.spark.sql.AnalysisException"
    assert errors.classify(failed.value) is None  # a missing path is not out of resources
