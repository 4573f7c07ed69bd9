"""The convert job's write: one pass over the input into the staging directory.

Every line is parsed in the JVM (``promptscore.convert.jsonl``), sorted into written, rejected or
blank, and the counts and the names of the files holding rejected lines are collected as
observed metrics of the same write. Only those files are read a second time, to set their
rejected lines aside under ``_rejects/``. A file that cannot be read to its end (a broken
``.gz``, a file that cannot be opened) is set aside whole, and the write runs again without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from promptscore import cli, errors, progress, sparkapi
from promptscore.convert import jsonl, ledger, reader
from promptscore.convert.badfiles import BadFile, find_bad_files, is_read_failure
from promptscore.convert.inputs import input_lines, is_input_name
from promptscore.convert.options import ConvertOptions
from promptscore.convert.plan import ConvertPlan
from promptscore.convert.progress import ConvertProgress
from promptscore.frames import count_if
from promptscore.io import hadoop, output
from promptscore.io.files import File, list_data_files
from promptscore.io.output import Output
from promptscore.io.reports import redact_uri

MAX_BAD_FILES = 100  # files set aside whole before the job gives up (exit 2)
_SEP = "\u0000"


@dataclass
class ConvertResult:
    """What the write found."""

    lines: int = 0
    blank: int = 0
    rejected: int = 0
    reject_files: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    bad_files: list[BadFile] = field(default_factory=list)
    unknown: dict = field(default_factory=lambda: {"lines": 0, "names": []})
    tasks: int = 0
    attempts: int = 1
    output_files: list[File] = field(default_factory=list)
    reader: dict = field(default_factory=lambda: {"name": "spark"})
    # Reads made again after a transient error: whole input files (read-ahead), driver calls.
    read_retries: dict = field(default_factory=lambda: {"input_files": 0, "driver": 0})


def execute_convert(spark: SparkSession, opts: ConvertOptions, plan: ConvertPlan, out: Output) -> ConvertResult:
    """Write the rows and the rejects (and, for a partition, the ledger of its input files) into
    the staging directory. A file that cannot be read is set aside and the write runs again
    without it (at most ``MAX_BAD_FILES`` files)."""
    result = ConvertResult()
    if plan.lines is None:  # nothing new: an empty, complete partition, so that downstream goes on
        spark.createDataFrame([], plan.schema).coalesce(1).write.parquet(out.staging)
        ledger.write(spark, [], out.run_id, out.staging)
        return result
    bad: dict[str, BadFile] = {}
    state = ConvertProgress(spark, plan.index)
    lines = _Lines(spark, opts, plan)
    with progress.Reporter(state.line, progress.interval_s(spark)):
        obs, group = _write_rows(spark, opts, plan, out, lines, state, bad, result)
    result.read_retries["input_files"] = int(lines.retried.value())
    result.tasks = output.tasks_of_group(spark, group)
    _take_counts(result, obs.get)
    result.bad_files = sorted(bad.values(), key=lambda b: b.uri)
    if result.rejected or result.bad_files:
        result.reasons = _write_rejects(spark, opts, plan, result, f"{out.staging}/_rejects")
    if plan.files is not None:
        ledger.write(spark, plan.files, out.run_id, out.staging)
    result.output_files = list_data_files(spark, out.staging)
    return result


class _Lines:
    """The parsed lines of the input files not set aside: read ahead when it can be, else by
    Spark's text source (said once on stderr)."""

    def __init__(self, spark: SparkSession, opts: ConvertOptions, plan: ConvertPlan):
        self.spark, self.plan = spark, plan
        self.in_flight = reader.files_in_flight(spark)
        self.retried = reader.retry_counter(spark)
        self.spec = jsonl.parser_spec(spark, plan.schema, opts.required_fields, opts.max_line_bytes,
                                      opts.strict_schema)
        self.noted = False

    def parsed(self, bad: dict[str, BadFile], result: ConvertResult) -> DataFrame:
        """The parse (``jsonl.output_schema``) of every line but those of the files in ``bad``;
        ``result.reader`` says how they are read."""
        lines = input_lines(self.plan.lines, bad)
        parsed, result.reader = reader.read_lines(self.spark, lines, self.in_flight, self.spec,
                                                  jsonl.output_schema(self.plan.schema), self.retried)
        if result.reader["name"] == "read-ahead":
            # Spark pruned the scan's files by these filters; the rows are filtered again, so that
            # a skipped or set-aside file can never reach the output even where it would not.
            source = F.col("source_file")
            return parsed.where(is_input_name(source) & ~source.isin(sorted(bad)))
        if self.in_flight and not self.noted:
            self.noted = True
            cli.print_err(f"convert: note: reading with Spark's text source, one file after another per "
                          f"task (slower on object stores): {result.reader['why']}")
        return jsonl.parse_lines(lines, self.plan.schema, spec=self.spec)


def _write_rows(spark: SparkSession, opts: ConvertOptions, plan: ConvertPlan, out: Output, lines: _Lines,
                state: ConvertProgress, bad: dict[str, BadFile], result: ConvertResult) -> tuple[Observation, str]:
    """Write the good rows into the staging directory, again without each file found unreadable;
    returns the write's observed metrics and its job group."""
    roots = opts.inputs or [f.path for f in plan.files or [] if f.path.endswith(".gz")]
    compressed = CompressedInputs(spark, plan)
    while True:
        obs = Observation(f"convert-{result.attempts}")
        observed = lines.parsed(bad, result).observe(obs, *write_metrics())
        group = output.new_group("convert")
        state.group = group
        try:
            output.write_parquet(spark, jsonl.good_rows(observed, plan.schema, opts.with_source_file),
                                 out.staging, opts.out.compression, group, plan.writer_options)
            return obs, group
        except Exception as e:  # noqa: BLE001 - only a read failure of an input file is handled
            _set_aside(spark, e, compressed, roots, bad)
            hadoop.delete(spark, out.staging)
            result.attempts += 1


class CompressedInputs:
    """The ``.jsonl.gz`` input files as the listing knows them (asked once, on the first failed
    read that names no file); None where this Spark does not say."""

    def __init__(self, spark: SparkSession, plan: ConvertPlan):
        self.spark, self.plan = spark, plan
        self.files: list[File] | None = None
        self.asked = False

    def __call__(self) -> list[File] | None:
        if not self.asked:
            self.asked = True
            if self.plan.files is not None:
                self.files = [f for f in self.plan.files if f.path.endswith(".jsonl.gz")]
            elif self.plan.lines is not None:
                gz = self.plan.lines.where(F.col("_metadata.file_name").endswith(".jsonl.gz"))
                known = sparkapi.scan_files(gz)
                self.files = None if known is None else sorted(File(p, size, mtime) for p, size, mtime in known)
        return self.files


def _set_aside(spark: SparkSession, error: Exception, compressed: CompressedInputs, roots: list[str],
               bad: dict[str, BadFile]) -> None:
    """Add the input files behind a failed write to ``bad``, or raise ``error`` when it was no read
    failure of an input file (or UsageError past ``MAX_BAD_FILES``)."""
    if not is_read_failure(error):
        raise error
    found = [b for b in find_bad_files(spark, compressed, roots, error) if b.uri not in bad]
    if not found:
        raise error
    bad.update((b.uri, b) for b in found)
    if len(bad) > MAX_BAD_FILES:
        raise errors.UsageError(f"more than {MAX_BAD_FILES} input files cannot be read, e.g. "
                                f"{redact_uri(found[0].uri)} ({found[0].detail}); check the input") from None


def write_metrics() -> list[Column]:
    """The metrics a write observes over the parse (``jsonl.output_schema``): lines, blank,
    rejected, the files holding rejects, lines with unknown fields and their names."""
    kind, unknown = F.col("kind"), F.col("unknown")
    has_unknown = (kind == jsonl.KIND_OK) & (F.size(unknown) > 0)
    return [
        F.count(F.lit(1)).alias("lines"),
        count_if(kind == jsonl.KIND_BLANK).alias("blank"),
        count_if(kind == jsonl.KIND_REJECT).alias("rejected"),
        F.array_join(F.collect_set(F.when(kind == jsonl.KIND_REJECT, F.col("source_file"))), _SEP)
        .alias("reject_files"),
        count_if(has_unknown).alias("unknown_lines"),
        F.array_join(F.array_distinct(F.flatten(F.collect_set(F.when(has_unknown, unknown)))), _SEP)
        .alias("unknown_names"),
    ]


def _take_counts(result: ConvertResult, m: dict) -> None:
    result.lines, result.blank, result.rejected = int(m["lines"]), int(m["blank"] or 0), int(m["rejected"] or 0)
    result.reject_files = [f for f in (m["reject_files"] or "").split(_SEP) if f]
    result.unknown = {"lines": int(m["unknown_lines"] or 0),
                      "names": sorted(n for n in (m["unknown_names"] or "").split(_SEP) if n)}


def lines_of_files(plan: ConvertPlan, uris: list[str]) -> DataFrame:
    """The lines of the input files ``uris`` (as ``source_file`` names them), from the listing
    the plan holds: filtered by name, Spark neither lists nor asks about a file again."""
    assert plan.lines is not None
    return plan.lines.where(F.col("_metadata.file_path").isin(sorted(uris)))


def _write_rejects(spark: SparkSession, opts: ConvertOptions, plan: ConvertPlan, result: ConvertResult,
                   path: str) -> dict[str, int]:
    """Read only the files that held rejected lines again and write those lines, and one row per
    file that could not be read, to ``path``. Returns the count per reason."""
    frames = []
    if result.reject_files:
        again = lines_of_files(plan, result.reject_files)
        frames.append(jsonl.reject_rows(
            jsonl.parse_lines(again, plan.schema, opts.required_fields, opts.max_line_bytes, opts.strict_schema)))
    if result.bad_files:
        frames.append(spark.createDataFrame([(b.uri, None, None, b.reason, b.detail) for b in result.bad_files],
                                            jsonl.REJECTS_SCHEMA))
    rejects = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    obs = Observation("rejects")
    reason = F.col("reason")
    all_reasons = jsonl.REASONS + jsonl.FILE_REASONS
    counted = rejects.observe(obs, *[count_if(reason == r).alias(r) for r in all_reasons])
    output.write_parquet(spark, counted.coalesce(max(1, min(len(result.reject_files) + len(result.bad_files), 16))),
                         path, opts.out.compression)
    got = obs.get  # each .get reads the whole map from the JVM
    return {r: int(got[r] or 0) for r in all_reasons if got[r]}
