"""The convert job: many small JSONL files under a prefix -> a few large Parquet files.

``run_convert`` checks the options, lists and plans (``plan``), writes into a staging directory
(``write``), reports (``report``) and publishes (``promptscore.io.output``); ``--plan`` stops
after the plan (``dryrun``).
"""

from __future__ import annotations

import argparse
import time

from pyspark.sql import SparkSession

from promptscore.convert import reader
from promptscore.convert.dryrun import dry_run_convert
from promptscore.convert.options import ConvertOptions
from promptscore.convert.plan import plan_convert
from promptscore.convert.report import convert_report, say_notes, too_many_rejects
from promptscore.convert.schema import explicit_schema
from promptscore.convert.write import execute_convert
from promptscore.frames import session_conf
from promptscore.io import hadoop, output
from promptscore.io.reports import now_iso, spark_info


def run_convert(spark: SparkSession, opts: ConvertOptions) -> dict:
    """Run the whole job (or, with ``opts.plan``, only its plan); return the report. Raises
    UsageError / DataQualityError."""
    started = time.monotonic()
    started_at = now_iso()
    driver_retries = hadoop.retries()
    explicit = explicit_schema(opts)
    reader.files_in_flight(spark)  # a bad setting fails here, before anything is written
    reader.require(spark)  # the line parser: without it, exit 2 here
    if opts.plan:
        return dry_run_convert(spark, opts, explicit, started)
    out = output.open_output(spark, opts.out, opts.sources)
    try:
        plan = plan_convert(spark, opts, explicit, out.target)
        with session_conf(spark, {"spark.sql.files.maxPartitionBytes": str(plan.split),
                                  "spark.sql.files.openCostInBytes": str(plan.open_cost),
                                  # the split size above already spreads the input over the slots
                                  "spark.sql.files.minPartitionNum": "1"}):
            result = execute_convert(spark, opts, plan, out)
        plan.phases.lap("write")
        result.read_retries["driver"] = hadoop.retries() - driver_retries
        header = output.report_header("convert", "ok", started_at, opts.sources, out, opts.out)
        report = convert_report(opts, plan, result, header, spark_info(spark), time.monotonic() - started)
        too_many = report["status"] != "ok"
        output.finish(spark, out, report, opts.out.report, ok=not too_many)
    except BaseException:
        out.publisher.discard()
        raise
    say_notes(opts, plan, report, out.target)
    if too_many:
        raise too_many_rejects(opts, report)
    return report


def job(spark: SparkSession, args: argparse.Namespace) -> dict:
    """Entry for ``cli.run``: flags -> options -> run."""
    return run_convert(spark, ConvertOptions.from_args(args))
