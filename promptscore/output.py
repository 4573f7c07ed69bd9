"""What both jobs do with their output: flags, reruns, partitions, Parquet writes, report, marker.

``--mode error`` (the default) refuses an existing output; ``--mode overwrite`` replaces it.
``--partition-col dt --partition-value V`` writes ``<output>/dt=V/`` and, unless ``--mode error``
is given, overwrites only that partition on a rerun. ``_SUCCESS`` is written last, only on success.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession

from promptscore import cli, hadoop
from promptscore.report import redact_uri, write_report

CODECS = ("zstd", "snappy", "gzip", "lz4", "none")


@dataclass
class OutputSpec:
    """Where and how a job writes."""

    output: str
    mode: str | None = None
    partition_col: str | None = None
    partition_value: str | None = None
    compression: str = "zstd"
    report: str | None = None

    def resolved_mode(self) -> str:
        """``error`` unless asked; a partitioned write overwrites its own partition by default."""
        if self.mode:
            return self.mode
        return "overwrite" if self.partition_col else "error"

    def target(self) -> str:
        """The directory this run writes: the output, or its ``col=value`` partition."""
        base = self.output.rstrip("/")
        if self.partition_col:
            return f"{base}/{self.partition_col}={self.partition_value}"
        return base

    def partition(self) -> dict[str, str] | None:
        return {self.partition_col: self.partition_value} if self.partition_col else None


def add_args(p: argparse.ArgumentParser) -> None:
    """The output flags every job takes."""
    p.add_argument("--output", required=True, metavar="URI", help="output directory")
    p.add_argument("--mode", choices=("error", "overwrite"),
                   help="if the output exists: error (default; exit 2) or overwrite. With "
                   "--partition-col the default is overwrite of that partition only")
    p.add_argument("--partition-col", metavar="NAME", help="write <output>/NAME=VALUE/ (e.g. dt)")
    p.add_argument("--partition-value", metavar="VALUE", help="e.g. ${bizdate} from DataWorks")
    p.add_argument("--compression", default="zstd", choices=CODECS, help="Parquet codec (default zstd)")
    p.add_argument("--report", metavar="PATH",
                   help="also write the report here (a local file, or a URI with a scheme)")


def from_args(args: argparse.Namespace) -> OutputSpec:
    """Check the output flags together."""
    if bool(args.partition_col) != bool(args.partition_value):
        raise cli.UsageError("--partition-col and --partition-value go together")
    if args.partition_col and not args.partition_col.isidentifier():
        raise cli.UsageError(f"--partition-col must be a plain column name, got {args.partition_col!r}")
    if args.partition_value is not None and ("/" in args.partition_value or "=" in args.partition_value
                                             or not args.partition_value.strip()):
        raise cli.UsageError(f"--partition-value must not be empty or contain '/' or '=': "
                             f"{args.partition_value!r}")
    return OutputSpec(args.output, args.mode, args.partition_col, args.partition_value, args.compression,
                      args.report)


def prepare(spark: SparkSession, out: OutputSpec) -> tuple[str, str]:
    """The qualified target directory and the write mode; refuses an existing target in error mode."""
    target = hadoop.qualify(spark, out.target())
    mode = out.resolved_mode()
    if mode == "error" and hadoop.exists(spark, target):
        raise cli.UsageError(f"output exists: {redact_uri(target)} (pass --mode overwrite to replace it)")
    return target, mode


def write_parquet(spark: SparkSession, df: DataFrame, path: str, mode: str, codec: str,
                  group: str | None = None) -> None:
    """Write ``df`` as Parquet; with ``group``, its Spark jobs carry that job group (to count tasks)."""
    sc = spark.sparkContext
    if group:
        sc.setJobGroup(group, f"promptscore: write {redact_uri(path)}")
    try:
        (df.write.mode("overwrite" if mode == "overwrite" else "errorifexists")
         .option("compression", codec)
         # _SUCCESS is written by the job itself, once everything else is in place.
         .option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
         .parquet(path))
    finally:
        if group:
            sc.setLocalProperty("spark.jobGroup.id", None)
            sc.setLocalProperty("spark.job.description", None)


def tasks_of_group(spark: SparkSession, group: str) -> int:
    """How many tasks the Spark jobs of ``group`` ran."""
    tracker = spark.sparkContext.statusTracker()
    total = 0
    for job_id in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job_id)
        for stage_id in (info.stageIds if info else []):
            stage = tracker.getStageInfo(stage_id)
            total += stage.numTasks if stage else 0
    return total


def new_group(job: str) -> str:
    return f"promptscore-{job}-{time.time_ns()}"


def report_header(job: str, status: str, started_at: str, inputs: list[str], target: str, out: OutputSpec,
                  mode: str) -> dict:
    """The fields every job's report starts with (URIs with any user:secret part hidden)."""
    return {"job": job, "status": status, "started_at": started_at, "inputs": [redact_uri(i) for i in inputs],
            "output": redact_uri(target), "partition": out.partition(), "mode": mode}


def finish(spark: SparkSession, target: str, report: dict, copy_to: str | None, ok: bool) -> None:
    """Write the report (and its copy), then set ``_SUCCESS`` only if ``ok`` (removing a stale one)."""
    write_report(spark, report, f"{target}/_report.json", copy_to)
    hadoop.set_marker(spark, target, present=ok)


class Phases:
    """Seconds spent in each named phase of a job, for the report."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._t = time.monotonic()

    def lap(self, name: str) -> float:
        now = time.monotonic()
        self.phases[name] = round(now - self._t, 3)
        self._t = now
        return self.phases[name]
