"""The convert job's pure parts around the write: the report, the plan report, session settings."""

from __future__ import annotations

import pytest
from pyspark.sql.types import StringType, StructField, StructType

from promptscore.convert.badfiles import BadFile
from promptscore.convert.dryrun import dry_run_report
from promptscore.convert.inputs import InputIndex
from promptscore.convert.options import ConvertOptions
from promptscore.convert.plan import ConvertPlan
from promptscore.convert.report import convert_report
from promptscore.convert.write import ConvertResult
from promptscore.frames import session_conf
from promptscore.io import output
from promptscore.io.reports import Phases

SCHEMA = StructType([StructField("prompt", StringType())])


def make_plan(files=10, size=10_000):
    index = InputIndex(files, size, [], {"files": 1, "bytes": 5, "by_rule": {"other_name": 1}, "examples": []}, 2)
    return ConvertPlan(None, index, SCHEMA, "explicit", None, 2, 8192, 6000, 0.25, {}, Phases())


def opts(**kw):
    return ConvertOptions(inputs=["/in"], out=output.OutputSpec("/out"), **kw)


def header():
    return {"job": "convert", "status": "ok", "output": "file:/out"}


def test_report_counts_and_status():
    result = ConvertResult(lines=100, blank=4, rejected=2, reject_files=["f"], reasons={"trailing_data": 2})
    r = convert_report(opts(max_bad_fraction=0.05), make_plan(), result, header(), {}, 1.5)
    assert (r["rows_written"], r["rows_rejected"], r["blank_lines"]) == (94, 2, 4)
    assert r["status"] == "ok" and r["bad_fraction"] == pytest.approx(2 / 96)
    assert r["summary"].startswith("convert: 10 files") and "1 other files skipped" in r["summary"]
    strict = convert_report(opts(max_bad_fraction=0.01), make_plan(), result, header(), {}, 1.5)
    assert strict["status"] == "too_many_rejects"


def test_a_file_that_cannot_be_read_counts_as_its_share_of_lines():
    # 10,000 bytes in 100 lines; a broken file of 1,000 bytes counts as 1,000 / (9,000 / 100) = 12 lines.
    result = ConvertResult(lines=100, bad_files=[BadFile("file:/in/x.gz", "corrupt_file", "EOF", 1000)])
    r = convert_report(opts(max_bad_fraction=0.5), make_plan(), result, header(), {}, 1.0)
    assert r["files_rejected_counted_as_lines"] == 12
    assert r["bad_fraction"] == pytest.approx(12 / 112)
    assert r["files_rejected"] == [{"file": "file:/in/x.gz", "reason": "corrupt_file", "detail": "EOF"}]


def test_plan_report_and_its_estimate():
    plan = make_plan(files=4000, size=400_000_000)
    plan.phases.phases["list"] = 2.0
    r = dry_run_report(opts(plan=True, cores=8, tasks_per_core=4), plan, 80e6, True, 512, "3.5.9",
                                  "local[2]", 3.0, None)
    assert r["plan"] and r["input_files"] == 4000 and r["expected_output_bytes"] == 100_000_000
    assert r["estimate"]["request_latency_ms"] == 30 and r["estimate"]["cores"] == 8
    assert r["summary"].startswith("convert plan: 4,000 files") and "latency-bound" in r["summary"]


def test_session_settings_are_restored(spark):
    spark.conf.set("spark.sql.files.maxPartitionBytes", "1234")
    with session_conf(spark, {"spark.sql.files.maxPartitionBytes": "99",
                                      "spark.sql.files.minPartitionNum": "1"}):
        assert spark.conf.get("spark.sql.files.maxPartitionBytes") == "99"
    assert spark.conf.get("spark.sql.files.maxPartitionBytes") == "1234"
    assert spark.conf.get("spark.sql.files.minPartitionNum", None) is None
    spark.conf.unset("spark.sql.files.maxPartitionBytes")
