"""``jobs/convert.py --plan``: what a run would read, write and take, without writing data.

It lists and samples as a run does (``promptscore.convert.plan``), measures one core's rate of
converting the sampled files (parsing them and writing Parquet as the job does, into a scratch
folder of its own), and puts both into ``promptscore.sizing``'s model of a run on the stated
cluster.
"""

from __future__ import annotations

import math
import tempfile
import time

from pyspark.sql import Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from promptscore import cli, sizing, sparkapi
from promptscore.convert import jsonl, reader
from promptscore.convert.options import ConvertOptions
from promptscore.convert.plan import DEFAULT_RATIO, ConvertPlan, plan_convert, sample_bytes, sample_lines
from promptscore.convert.schema import schema_ddl
from promptscore.convert.write import write_metrics
from promptscore.io import hadoop, output, publish
from promptscore.io.reports import human_bytes, redact_uri, write_report


def dry_run_convert(spark: SparkSession, opts: ConvertOptions, explicit: StructType | None, started: float) -> dict:
    """List, sample and estimate, write nothing; return the plan as a report."""
    target = None
    if opts.out.output:
        target = hadoop.qualify(spark, opts.out.target())
        output.check_overlap(spark, target, opts.inputs or [])
    plan = plan_convert(spark, opts, explicit, target)
    # Parquet is written to a scratch folder of the job's own: beside the output when there is one
    # (its work directory), else a local folder in local mode.
    scratch = None
    if target:
        scratch = f"{publish.work_dir(target)}/plan-{publish.new_run_id()}"
    elif spark.sparkContext.master.startswith("local"):
        scratch = "file:" + tempfile.mkdtemp(prefix="promptscore-plan-")
    measure_bytes = cli.parse_size(spark.conf.get("spark.promptscore.plan.measureBytes", "32m") or "32m")
    parse_rate = measure_parse_rate(spark, plan, opts, scratch, min_bytes=measure_bytes) if plan.index.files else 0.0
    plan.phases.lap("measure")
    object_store = any(hadoop.scheme(spark, u) not in ("file", "hdfs", "viewfs") for u in opts.sources)
    in_flight = reader.files_in_flight(spark) if reader.load(spark) else 0
    report = dry_run_report(opts, plan, parse_rate, object_store, sparkapi.driver_heap_mb(spark), spark.version,
                               spark.sparkContext.master, time.monotonic() - started, target, scratch is not None,
                               files_in_flight=max(1, in_flight))
    if opts.out.report:
        write_report(spark, report, None, opts.out.report)
    return report


def dry_run_report(opts: ConvertOptions, plan: ConvertPlan, parse_bytes_per_s: float, object_store: bool,
                      heap_mb: int, spark_version: str, master: str, elapsed_s: float, target: str | None,
                      parquet_measured: bool = True, files_in_flight: int = 1) -> dict:
    """The plan (pure): what a run would read, write and take. On an object store, requests take
    ``--request-latency-ms`` (default 30) and publishing copies each output file (about 2 s);
    ``files_in_flight`` is what the run's reader keeps requested per task (1: Spark's reader)."""
    index = plan.index
    ratio = plan.ratio or DEFAULT_RATIO
    out_bytes = int(index.bytes * ratio)
    tasks = max(1, math.ceil((index.bytes + index.files * plan.open_cost) / plan.split)) if index.files else 0
    latency = opts.request_latency_ms if opts.request_latency_ms is not None else (30.0 if object_store else 0.0)
    cores = opts.cores or plan.slots
    estimate = sizing.convert_estimate(
        index.files, index.bytes, plan.phases.phases.get("list", 0.0), parse_bytes_per_s, cores,
        opts.tasks_per_core, latency, output_files=tasks, copy_s_per_file=2.0 if object_store else 0.0,
        files_in_flight=files_in_flight)
    report = {
        "job": "convert", "plan": True,
        "inputs": [redact_uri(i) for i in opts.inputs] or None,
        "input_list": redact_uri(opts.input_list) if opts.input_list else None,
        "output": redact_uri(target) if target else None,
        "input_files": index.files,
        "input_bytes": index.bytes,
        "empty_files": index.empty_files,
        "skipped_files": index.skipped,
        "already_converted_files": plan.already_converted,
        "input_list_entries": index.input_list,
        "only_new": index.only_new,
        "schema": schema_ddl(plan.schema),
        "schema_source": plan.schema_source,
        "schema_sample": ({"files": plan.sample.files, "records": plan.sample.records,
                           "unusable_lines": plan.sample.unusable_lines} if plan.sample else None),
        "task_slots": plan.slots,
        "max_split_bytes": plan.split,
        "tasks": tasks,
        "estimated_compression_ratio": round(ratio, 4),
        "expected_output_files": tasks,
        "expected_output_bytes": out_bytes,
        "expected_output_file_bytes": out_bytes // tasks if tasks else 0,
        "parse_mb_s_per_core": round(parse_bytes_per_s / 1e6, 2),
        "parse_rate_includes_parquet": parquet_measured,
        "estimate": estimate.as_dict(),
        "driver_heap_mb": heap_mb,
        "spark_version": spark_version,
        "spark_master": master,
        "phase_s": plan.phases.phases,
        "elapsed_s": round(elapsed_s, 3),
    }
    report["summary"] = (
        f"convert plan: {index.files:,} files ({human_bytes(index.bytes)}) -> ~{tasks:,} files of "
        f"~{human_bytes(report['expected_output_file_bytes'])} ({human_bytes(out_bytes)}) in {tasks:,} tasks; "
        f"{index.skipped.get('files', 0):,} skipped, {plan.already_converted:,} already converted; listing "
        f"{plan.phases.phases.get('list', 0):.1f} s; on {cores:,} cores x {opts.tasks_per_core} tasks x "
        f"{max(1, files_in_flight)} files in flight at {latency:g} ms per request: "
        f"~{estimate.as_dict()['wall']} ({estimate.bound}-bound)")
    return report


def measure_parse_rate(spark: SparkSession, plan: ConvertPlan, opts: ConvertOptions, scratch: str | None,
                       rounds: int = 2, min_bytes: int = 32 << 20) -> float:
    """One core's rate, in input bytes per second, of converting the sampled files: parsing them
    and writing Parquet as the job does into ``scratch`` (deleted afterwards; without it, Parquet
    is not written and the rate is higher than a run's). The sampled lines are held in memory and
    repeated to at least ``min_bytes``, so that neither reading them nor a cold JIT is timed; one
    task; the best of a few rounds."""
    if not plan.index.sample:
        return 0.0
    size = sample_bytes(spark, plan.index)
    sample = plan.sample_lines if plan.sample_lines is not None else sample_lines(spark, plan.index, cache=True)
    if size <= 0 or sample is None:
        if sample is not None:
            sample.unpersist()
        return 0.0
    repeat = max(1, math.ceil(min_bytes / size))
    lines = sample.crossJoin(spark.range(repeat).coalesce(1)).select("value").withColumn("source_file", F.lit(""))
    try:
        sample.count()
        best = math.inf
        for i in range(rounds):
            parsed = jsonl.parse_lines(lines, plan.schema, opts.required_fields, opts.max_line_bytes,
                                       opts.strict_schema)
            # Observed as the job observes it: the same metrics over the same parse.
            good = jsonl.good_rows(parsed.observe(Observation(f"measure-{i}"), *write_metrics()), plan.schema)
            t0 = time.monotonic()
            if scratch:
                output.write_parquet(spark, good, f"{scratch}/{i}", opts.out.compression, options=plan.writer_options)
            else:
                good.write.format("noop").mode("overwrite").save()
            best = min(best, time.monotonic() - t0)
    finally:
        sample.unpersist()
        if scratch:
            hadoop.delete(spark, scratch)
    return size * repeat / best if best > 0 else 0.0
