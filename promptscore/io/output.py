"""What both jobs do with their output: flags, the input guard, staging, reports and publishing.

``--mode error`` (the default) refuses a complete existing output; ``--mode overwrite`` replaces
it. ``--partition-col dt --partition-value V`` writes ``<output>/dt=V/`` and, unless ``--mode
error`` is given, replaces only that partition on a rerun. Either way a run writes into a staging
directory and publishes it when complete (``promptscore.io.publish``): the previous output stays
readable until then, and a killed or failed run is cleaned up, or its publish completed, by the
next run of the same command. ``_SUCCESS`` is written last, only on success. One run at a time
writes a target: the others exit 2 naming it (``promptscore.io.lock``).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from pyspark.sql import DataFrame, SparkSession

from promptscore import cli, errors, flags
from promptscore.flags import option
from promptscore.io import hadoop, publish
from promptscore.io.reports import now_iso, redact_uri, write_report

CODECS = ("zstd", "snappy", "gzip", "lz4", "none")
_GLOB = re.compile(r"[*?\[\]{}\\]")


@dataclass
class OutputSpec:
    """Where and how a job writes: the output flags every job takes. Checks itself when made."""

    output: str = option("", metavar="URI", help="output directory")
    mode: str | None = option(None, choices=("error", "overwrite"),
                              help="if a complete output exists: error (default; exit 2) or overwrite. With "
                              "--partition-col the default is overwrite of that partition only. An output left "
                              "by a failed run of this job is always replaced")
    partition_col: str | None = option(None, metavar="NAME", help="write <output>/NAME=VALUE/ (e.g. dt)")
    partition_value: str | None = option(None, metavar="VALUE", help="e.g. ${bizdate} from DataWorks")
    compression: str = option("zstd", choices=CODECS, help="Parquet codec (default zstd)")
    report: str | None = option(None, metavar="PATH",
                                help="also write the report here (a local file, or a URI with a scheme)")

    def __post_init__(self) -> None:
        flags.check_choices(self)
        if bool(self.partition_col) != bool(self.partition_value):
            raise errors.UsageError("--partition-col and --partition-value go together")
        if self.partition_col and not self.partition_col.isidentifier():
            raise errors.UsageError(f"--partition-col must be a plain column name, got {self.partition_col!r}")
        if self.partition_value is not None and ("/" in self.partition_value or "=" in self.partition_value
                                                 or not self.partition_value.strip()):
            raise errors.UsageError(f"--partition-value must not be empty or contain '/' or '=': "
                                    f"{self.partition_value!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "OutputSpec":
        """The output flags of a parsed command line (``add_flags``)."""
        return cls(**flags.given(args, cls))

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


# ---------------------------------------------------------------------------------------------
# The input guard


def glob_root(uri: str) -> str:
    """The part of ``uri`` before its first path segment holding a glob character."""
    head, sep, rest = uri.partition("://")
    prefix, body = (head + sep, rest) if sep else ("", uri)
    parts = body.split("/")
    keep = []
    for i, part in enumerate(parts):
        if _GLOB.search(part) and not (sep and i == 0):
            break
        keep.append(part)
    return prefix + "/".join(keep)


def _comparable(spark, uri: str) -> str:
    q = hadoop.qualify(spark, uri).rstrip("/")
    if hadoop.scheme(spark, q) == "file":
        return "file:" + os.path.realpath(hadoop.local_path(spark, q)).rstrip("/")
    return q


def check_overlap(spark: SparkSession, target: str, inputs: list[str]) -> None:
    """Refuse (exit 2) a target that equals, contains or lies inside any input.

    Runs before anything is read, deleted or written. Inputs given as globs are compared by the
    directory above their first glob character.
    """
    t = _comparable(spark, target)
    for given in inputs:
        i = _comparable(spark, glob_root(given) or "/")
        if t == i or t.startswith(i + "/") or i.startswith(t + "/"):
            how = "is" if t == i else "lies inside" if t.startswith(i + "/") else "contains"
            raise errors.UsageError(f"the output {redact_uri(target)} {how} the input {redact_uri(given)}; "
                                 "writing it would destroy what the job reads: choose an output outside "
                                 "every input")


# ---------------------------------------------------------------------------------------------
# A run's output


@dataclass
class Output:
    """One run's output: where it is staged, where it will be published, and what happened first."""

    target: str
    mode: str
    publisher: publish.Publisher
    replaces: str
    notes: list[str] = field(default_factory=list)
    took_over: dict | None = None

    @property
    def staging(self) -> str:
        return self.publisher.staging

    @property
    def run_id(self) -> str:
        return self.publisher.run_id

    def verify_lock(self) -> None:
        """Raise ``lock.LockLost`` unless this run still holds the target's lock."""
        self.publisher.verify_lock()


def check_target(spark: SparkSession, out: OutputSpec, inputs: list[str]) -> str:
    """The qualified target, after refusing (UsageError) a file system root and an overlap with
    the inputs. Touches nothing."""
    target = hadoop.qualify(spark, out.target())
    if hadoop.is_root(spark, target):
        raise errors.UsageError(f"--output {redact_uri(target)} is a file system root; give a directory")
    check_overlap(spark, target, inputs)
    return target


def open_output(spark: SparkSession, out: OutputSpec, inputs: list[str],
                keep: Callable[[str], bool] | None = None, job: str = "convert") -> Output:
    """Check the target against the inputs, take its lock (exit 2 naming the run that holds it),
    check the mode, finish or clear what earlier runs left (but the work-directory entries
    ``keep`` names), and make this run's staging directory. Raises UsageError before anything
    is touched."""
    target = check_target(spark, out, inputs)
    mode = out.resolved_mode()
    pub = publish.Publisher(spark, target)
    took = pub.hold(job, on_lost=_stop_when_lost(spark, job))
    if took:
        cli.print_err(f"{job}: note: took over the lock on {redact_uri(target)} from run {took['run_id']} "
                      f"(pid {took['pid']} on host {took['host']}): {took['reason']}")
    try:
        notes = pub.recover(keep)
        state = pub.state()
        if state.kind == "foreign":
            raise errors.UsageError(f"refusing to write {redact_uri(target)}: it holds files this job did not write "
                                 "(no _report.json of a promptscore job); move them away or choose another --output")
        if state.kind == "complete" and mode == "error":
            when = (state.report or {}).get("finished_at") or (state.report or {}).get("started_at") or "earlier"
            raise errors.UsageError(f"output exists: {redact_uri(target)} (complete, written {when}); pass "
                                 "--mode overwrite to replace it")
        pub.prepare_staging()
    except BaseException:
        pub.discard()
        raise
    return Output(target, mode, pub, state.kind, notes, took)


def _stop_when_lost(spark: SparkSession, job: str) -> Callable[[str], None]:
    """What a run does when another one took its lock: say so and cancel its Spark jobs, so that
    it stops writing at once (it then fails with exit 1, deleting nothing)."""
    def stop(why: str) -> None:
        cli.print_err(f"{job}: error: {why}; stopping this run")
        spark.sparkContext.cancelAllJobs()
    return stop


def write_parquet(spark: SparkSession, df: DataFrame, path: str, codec: str, group: str | None = None,
                  options: dict[str, str] | None = None) -> None:
    """Write ``df`` as Parquet to the new directory ``path``; with ``group``, its Spark jobs carry
    that job group (to count tasks)."""
    sc = spark.sparkContext
    if group:
        sc.setJobGroup(group, f"promptscore: write {redact_uri(path)}")
    try:
        writer = (df.write.mode("errorifexists").option("compression", codec)
                  # _SUCCESS is written by the job itself, once everything else is in place.
                  .option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false"))
        for key, value in (options or {}).items():
            writer = writer.option(key, value)
        writer.parquet(path)
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


def report_header(job: str, status: str, started_at: str, inputs: list[str], output: Output, out: OutputSpec) -> dict:
    """The fields every job's report starts with (URIs with any user:secret part hidden)."""
    return {"job": job, "status": status, "run_id": output.run_id, "started_at": started_at,
            "inputs": [redact_uri(i) for i in inputs], "output": redact_uri(output.target),
            "partition": out.partition(), "mode": output.mode, "replaced": output.replaces,
            "recovered": output.notes, "lock_takeover": output.took_over}


def finish(spark: SparkSession, output: Output, report: dict, copy_to: str | None, ok: bool) -> None:
    """Complete the staged output (report, then ``_SUCCESS`` if ``ok``), publish it, and write
    the report's copy."""
    report["finished_at"] = now_iso()
    write_report(spark, report, f"{output.staging}/{publish.REPORT}")
    if ok:
        hadoop.write_text(spark, f"{output.staging}/{publish.SUCCESS}", "")
    publish.pause_point("staged")
    output.publisher.publish()
    if copy_to:
        write_report(spark, report, None, copy_to)
