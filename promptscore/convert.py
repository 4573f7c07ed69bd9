"""The convert job: many small JSONL files under a prefix -> a few large Parquet files.

One pass over the input: every line is parsed in the JVM (``promptscore.jsonl``), sorted into
written, rejected or blank, and the counts and the names of the files holding rejected lines are
collected as observed metrics of the same write. Only those files are read a second time, to set
their rejected lines aside under ``_rejects/``. A file that cannot be read to its end (a broken
``.gz``, a file that cannot be opened) is set aside whole, and the write runs again without it.
Everything is staged and published at the end (``promptscore.output``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator, Sequence

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from promptscore import cli, errors, inputs, jsonl, ledger, progress, readahead, schema_sample, sizing, sparkapi
from promptscore.io import files, hadoop, lists, output, publish
from promptscore.io.files import File
from promptscore.inputs import BadFile, InputIndex
from promptscore.io.output import Output, OutputSpec
from promptscore.io.reports import human_bytes, redact_uri, write_report

DEFAULT_RATIO = 0.3  # Parquet bytes per input byte when no sample is read
MAX_BAD_FILES = 100  # files set aside whole before the job gives up (exit 2)
_SEP = "\u0000"


@dataclass
class ConvertOptions:
    """Everything the convert job takes; built from the command line or directly in code."""

    inputs: list[str]
    out: OutputSpec
    schema: str | None = None
    sample_files: int = 32
    target_file_size: int = 256 << 20
    max_bad_fraction: float = 0.001
    with_source_file: bool = False
    required_fields: list[str] = field(default_factory=lambda: ["prompt"])
    max_line_bytes: int = 64 << 20
    strict_schema: bool = False
    input_list: str | None = None
    only_new: bool = False
    changed_files: str = "error"
    plan: bool = False
    cores: int | None = None
    tasks_per_core: int = 1
    request_latency_ms: float | None = None


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``jobs/convert.py``."""
    p = cli.JobParser(
        prog="convert.py",
        description="Convert a prefix of small JSONL files (*.jsonl, *.jsonl.gz, any depth) into a "
        "few large Parquet files. Lines that cannot be rows go to <output>/_rejects/ with a reason.\n"
        "Progress: a line on stderr every 10 s (--conf spark.promptscore.progress.interval=SECONDS; 0: off).\n"
        "Read-ahead: each task keeps the next files' requests in flight (--conf "
        "spark.promptscore.convert.readAhead=FILES, default 16; 0: Spark's text source, one file after another).",
    )
    p.add_argument("--input", action="append", metavar="URI",
                   help="input prefix or file (oss://, hdfs://, file://, plain path); repeatable")
    p.add_argument("--input-list", metavar="URI",
                   help="convert the files this names instead of listing a prefix: a text file of URIs or "
                   "paths, one per line, or an OSS Bucket Inventory report's manifest.json")
    p.add_argument("--only-new", action="store_true",
                   help="convert only input files (by path, size and time) that no other partition of "
                   "--output holds; needs --partition-col. The partition records them under _ingested/")
    p.add_argument("--changed-files", choices=ledger.POLICIES, default=None,
                   help="with --only-new: what to do with input files that another partition holds an earlier "
                   "version of (appended to, rewritten): error (default: exit 3 naming them, nothing written), "
                   "reingest (convert them again whole; the earlier version's lines stay where they are, so "
                   "those lines are then in the output twice), skip (leave them out)")
    p.add_argument("--plan", action="store_true",
                   help="list, sample and print what the run would do and how long it would take, and "
                   "write it with --report; writes no data (--output optional)")
    p.add_argument("--cores", type=int, metavar="N",
                   help="with --plan: estimate for a cluster of N cores (default: this session's task slots)")
    p.add_argument("--tasks-per-core", type=int, default=1, metavar="K",
                   help="with --plan: task slots per core in that cluster (default 1)")
    p.add_argument("--request-latency-ms", type=float, default=None, metavar="MS",
                   help="with --plan: the object store's time to first byte per request (default: 0 for "
                   "local and HDFS paths, 30 for object stores)")
    p.add_argument("--schema", metavar="DDL",
                   help="Spark DDL of the records, e.g. 'id string, prompt string, turns bigint' (types: "
                   "string, boolean, tinyint, smallint, int, bigint, float, double, decimal, struct, array, "
                   "map<string,...>); default: inferred from --sample-files files")
    p.add_argument("--sample-files", type=int, default=32, metavar="N",
                   help="files read to infer the schema and estimate compression (default 32; "
                   "0 needs --schema)")
    p.add_argument("--target-file-size", type=cli.parse_size, default=256 << 20, metavar="SIZE",
                   help="aim for output files of this size (default 256m)")
    p.add_argument("--max-bad-fraction", type=cli.fraction, default=0.001, metavar="F",
                   help="exit 3 if more than this fraction of non-blank lines is rejected "
                   "(default 0.001); a file that cannot be read counts as its size over the mean "
                   "line size")
    p.add_argument("--with-source-file", action="store_true",
                   help="add a source_file column (the input file's URI)")
    p.add_argument("--required-fields", default="prompt", metavar="A,B",
                   help="lines whose JSON lacks any of these (or has null) are rejected "
                   "(default prompt; '' for none)")
    p.add_argument("--max-line-bytes", type=cli.parse_size, default=64 << 20, metavar="SIZE",
                   help="longer lines are rejected as line_too_long (default 64m)")
    p.add_argument("--strict-schema", action="store_true",
                   help="reject lines that carry fields the schema lacks, at any depth (unknown_field), "
                   "instead of writing them without those fields")
    output.add_args(p, output_required=False)
    return p


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    """Check the parsed flags together and turn them into ConvertOptions."""
    if args.sample_files < 0:
        raise errors.UsageError("--sample-files must be 0 or more")
    if args.sample_files == 0 and not args.schema:
        raise errors.UsageError("--sample-files 0 needs --schema")
    if args.max_line_bytes > (1 << 31) - 1:
        raise errors.UsageError("--max-line-bytes must be below 2g (a line is one JVM string)")
    if bool(args.input) == bool(args.input_list):
        raise errors.UsageError("give --input (one or more prefixes) or --input-list, not both and not neither")
    if args.changed_files and not args.only_new:
        raise errors.UsageError("--changed-files goes with --only-new")
    if args.only_new and not args.partition_col and not args.plan:
        raise errors.UsageError("--only-new needs --partition-col: each run writes the new files into its own "
                             "partition, with the ledger of what it converted")
    if not args.output and not args.plan:
        raise errors.UsageError("the following arguments are required: --output (see --help)")
    if args.cores is not None and args.cores < 1 or args.tasks_per_core < 1:
        raise errors.UsageError("--cores and --tasks-per-core must be at least 1")
    return ConvertOptions(
        inputs=list(args.input or []),
        out=output.from_args(args),
        schema=args.schema,
        sample_files=args.sample_files,
        target_file_size=args.target_file_size,
        max_bad_fraction=args.max_bad_fraction,
        with_source_file=args.with_source_file,
        required_fields=[f.strip() for f in args.required_fields.split(",") if f.strip()],
        max_line_bytes=args.max_line_bytes,
        strict_schema=args.strict_schema,
        input_list=args.input_list,
        only_new=args.only_new,
        changed_files=args.changed_files or "error",
        plan=args.plan,
        cores=args.cores,
        tasks_per_core=args.tasks_per_core,
        request_latency_ms=args.request_latency_ms,
    )


# ---------------------------------------------------------------------------------------------
# Schema


def parse_schema(ddl: str) -> StructType:
    """A Spark DDL string (``a string, b bigint`` or ``struct<...>``) as a StructType."""
    try:
        dt = sparkapi.parse_ddl(ddl)
    except Exception as e:  # noqa: BLE001 - Spark raises several kinds for bad DDL
        raise errors.UsageError(f"--schema is not valid Spark DDL: {_first_line(str(e))}") from None
    if not isinstance(dt, StructType):
        raise errors.UsageError(f"--schema must list fields (e.g. 'prompt string'), got {ddl!r}")
    return dt


def schema_ddl(schema: StructType) -> str:
    """A DDL string that ``parse_schema`` (and ``--schema``) read back as the same schema."""
    def quote(name: str) -> str:
        return name if name.isidentifier() else "`" + name.replace("`", "``") + "`"
    return ", ".join(f"{quote(f.name)} {f.dataType.simpleString()}" for f in schema.fields)


def with_required(schema: StructType, required: Sequence[str]) -> StructType:
    """``schema`` plus, as strings, the required fields it lacks (no sampled line held them). A
    sampled field whose name differs from a required one only in case gives way to it (its values
    are then a field the schema lacks): two such columns could not be told apart."""
    names = set(schema.fieldNames())
    missing = [n for n in required if n not in names]
    folded = {n.lower() for n in missing}
    kept = [f for f in schema.fields if f.name.lower() not in folded]
    return StructType(kept + [StructField(n, StringType()) for n in missing])


def estimate_ratio(spark: SparkSession, sample: Sequence[str], schema: StructType, codec: str) -> float:
    """Parquet bytes per input byte, measured by writing the sampled records in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not sample:
        return DEFAULT_RATIO
    in_bytes = sum(hadoop.file_size(spark, p) for p in sample)
    lines = spark.read.text([hadoop.escape_glob(p) for p in sample])
    df = jsonl.good_rows(jsonl.parse_lines(lines, schema, (), check_fields=False), schema)
    batches = sparkapi.collect_arrow(df)
    if in_bytes <= 0 or not batches:
        return DEFAULT_RATIO
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_batches(batches), buf, compression=None if codec == "none" else codec)
    return min(1.0, max(0.02, buf.tell() / in_bytes))


def split_bytes(total_bytes: int, files: int, open_cost: int, slots: int, target_file_size: int,
                ratio: float) -> int:
    """The ``spark.sql.files.maxPartitionBytes`` that packs the input into a whole number of waves.

    One task writes one output file, so the input is cut into ``n`` equal splits: enough for
    output files of about ``target_file_size`` (``ratio`` is Parquet bytes per input byte), and a
    multiple of the task slots so that no core idles in a last, short wave. Spark packs whole
    files into splits greedily, closing a split when the next file would overflow it, so each
    split gets the room of a few files (at most 1%) on top of its share.
    """
    weighted = total_bytes + files * open_cost
    wanted = max(1, math.ceil(total_bytes * ratio / target_file_size))
    n = slots * math.ceil(wanted / slots)
    share = weighted / n
    slack = min(4 * weighted / max(1, files), 0.01 * share)
    return max(open_cost, math.ceil(share + slack))


def parquet_options(schema: StructType, distinct_share: dict[str, float]) -> dict[str, str]:
    """Writer options: no dictionary encoding for string columns whose sampled values are mostly
    distinct (prompts, ids), where building a dictionary only costs time before Parquet gives up
    on it."""
    return {f"parquet.enable.dictionary#{f.name}": "false" for f in schema.fields
            if isinstance(f.dataType, StringType) and distinct_share.get(f.name, 0.0) > 0.5}


# ---------------------------------------------------------------------------------------------
# The job: plan, execute, report


@dataclass
class ConvertPlan:
    """What the job decided before writing: the input, the schema and the packing."""

    lines: DataFrame | None  # None: nothing to read (--only-new found nothing new)
    index: InputIndex
    schema: StructType
    schema_source: str
    sample: schema_sample.SchemaSample | None
    slots: int
    open_cost: int
    split: int
    ratio: float | None
    writer_options: dict[str, str]
    phases: output.Phases
    files: list[File] | None = None  # the files to read, when known one by one
    already_converted: int = 0  # --only-new: input files left out (other partitions hold them, or changed and skipped)


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


def check_options(opts: ConvertOptions) -> StructType | None:
    """The explicit schema, after checking it against the other options (UsageError if wrong)."""
    if not opts.schema:
        return None
    explicit = parse_schema(opts.schema)
    jsonl.check_schema(explicit)
    absent = [n for n in opts.required_fields if n not in explicit.fieldNames()]
    if absent:
        raise errors.UsageError(f"--schema lacks required field(s) {', '.join(absent)} "
                             "(add them or change --required-fields)")
    if opts.with_source_file and "source_file" in explicit.fieldNames():
        raise errors.UsageError("--with-source-file clashes with a schema field named source_file")
    return explicit


def select_input(spark: SparkSession, opts: ConvertOptions, target: str | None) -> tuple[DataFrame, InputIndex,
                                                                                        list[File] | None, int]:
    """The lines to read and what the listing found: from a prefix listing (Spark's index) or a
    list of files (``--input-list``); with ``--only-new``, only files no other partition of the
    output holds, and changed files as ``--changed-files`` says. Returns the lines (``None``
    when there is nothing to read; with ``_metadata``), the index, the files when known one by
    one, and how many input files were left out (already ingested, or changed and skipped)."""
    listed_info = None
    if opts.input_list:
        named = lists.read_list(spark, opts.input_list)
        listed_info = named.facts()
        if target:
            output.check_overlap(spark, target, files.folders(named.files))
        listed_files = [f for f in named.files if f.path.endswith(inputs.SUFFIXES) and f.size > 0]
        others = [f for f in named.files if not f.path.endswith(inputs.SUFFIXES)]
        skipped = {"files": len(others), "bytes": sum(f.size for f in others),
                   "by_rule": {"other_name": len(others)} if others else {},
                   "examples": [redact_uri(f.path) for f in others[:5]], "hidden": inputs.HIDDEN_RULE}
        empty = sum(1 for f in named.files if f.path.endswith(inputs.SUFFIXES) and f.size == 0)
        listed = None
    else:
        listed = inputs.list_lines(spark, opts.inputs)
        lines = inputs.input_lines(listed)
        index = inputs.index_inputs(spark, listed, lines, opts.sample_files)
        if not (opts.only_new or opts.out.partition_col):
            return lines, index, None, 0
        # A partition records the files it holds (the ledger), so a later --only-new run knows them.
        listed_files = [f for f in files.index_files(listed) if f.path.endswith(inputs.SUFFIXES) and f.size > 0]
        if not opts.only_new:
            return lines, index, listed_files, 0
        skipped, empty = index.skipped, index.empty_files
    left_out = 0
    only_new = None
    if opts.only_new and target:
        if _file_checksums(spark):
            listed_files = files.with_checksums(spark, listed_files)
        sel = ledger.compare(listed_files, ledger.held_versions(spark, opts.out.output, target))
        only_new = only_new_facts(sel, opts.changed_files, any(f.checksum for f in listed_files))
        if sel.changed and opts.changed_files == "error" and not opts.plan:
            raise errors.DataQualityError(changed_files_message(sel, opts.out.output))
        listed_files = sel.new + ([f for f, _ in sel.changed] if opts.changed_files == "reingest" else [])
        listed_files.sort()
        left_out = len(sel.same) + (len(sel.changed) if opts.changed_files == "skip" else 0)
    index = InputIndex(len(listed_files), sum(f.size for f in listed_files),
                       inputs.spread_sample([f.path for f in listed_files], opts.sample_files), skipped, empty,
                       listed_info, only_new)
    if not listed_files:
        return None, index, [], left_out  # type: ignore[return-value]
    return files.lines_of(spark, listed_files), index, listed_files, left_out


def only_new_facts(sel: ledger.Selection, policy: str, checksums: bool) -> dict:
    """The ``only_new`` part of the report: files already ingested, and changed files (how many,
    what was done with them, examples)."""
    return {
        "already_ingested_files": len(sel.same),
        "new_files": len(sel.new),
        "changed_files": len(sel.changed),
        "changed_files_policy": policy,
        "changed_files_examples": sel.examples(),
        "compared": "path, size, modification time (s)" + (", checksum" if checksums else ""),
    }


def changed_files_message(sel: ledger.Selection, out: str) -> str:
    """The one line of exit 3 for changed files under ``--changed-files error``."""
    shown = "; ".join(f"{e['file']} (in {e['partition']}: {e['was']['size']:,} B at {e['was']['mtime']}, now "
                      f"{e['now']['size']:,} B at {e['now']['mtime']})" for e in sel.examples(3))
    more = f" and {len(sel.changed) - 3:,} more" if len(sel.changed) > 3 else ""
    return (f"{len(sel.changed):,} input files changed since another partition of {redact_uri(out)} ingested them: "
            f"{shown}{more}. Converting them again would put their earlier lines into the output twice; pass "
            "--changed-files reingest to convert them again whole anyway (the earlier lines stay in that "
            "partition), or --changed-files skip to leave them out; nothing was written")


def _file_checksums(spark: SparkSession) -> bool:
    value = (spark.conf.get("spark.promptscore.convert.fileChecksums", "false") or "false").strip().lower()
    if value not in ("true", "false"):
        raise errors.UsageError(f"spark.promptscore.convert.fileChecksums must be true or false, not {value!r}")
    return value == "true"


def plan_convert(spark: SparkSession, opts: ConvertOptions, explicit: StructType | None,
                 target: str | None = None) -> ConvertPlan:
    """List the input, settle the schema (``explicit``, or from a sample) and size the tasks.
    Writes nothing."""
    clock = output.Phases()
    lines, index, files, already = select_input(spark, opts, target)
    clock.lap("list")
    if index.files == 0 and not (index.only_new and (already or index.only_new["changed_files"])):
        where = redact_uri(opts.input_list) if opts.input_list else ", ".join(map(redact_uri, opts.inputs))
        raise errors.UsageError(f"no {inputs.INPUT_NAMES} files in {where}")
    sample = None
    if explicit is not None:
        schema, source = explicit, "explicit"
    elif index.files:
        sample = schema_sample.sample_schema(spark, index.sample, max_line_bytes=opts.max_line_bytes)
        schema, source = with_required(sample.schema, opts.required_fields), f"sample of {sample.files} files"
    else:
        schema, source = with_required(StructType([]), opts.required_fields), "nothing new to sample"
    if opts.with_source_file and "source_file" in schema.fieldNames():
        raise errors.UsageError("--with-source-file clashes with a field named source_file in the data")
    clock.lap("schema")
    open_cost, slots = _open_cost(spark), _task_slots(spark)
    ratio = None
    if index.files and (opts.plan or index.bytes / opts.target_file_size > slots):
        ratio = estimate_ratio(spark, index.sample, schema, opts.out.compression)
    split = split_bytes(index.bytes, max(1, index.files), open_cost, slots, opts.target_file_size,
                        ratio or DEFAULT_RATIO)
    writer = parquet_options(schema, sample.distinct_share if sample else {})
    return ConvertPlan(lines, index, schema, source, sample, slots, open_cost, split, ratio, writer, clock,
                       files, already)


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
    roots = opts.inputs or [f.path for f in plan.files or [] if f.path.endswith(".gz")]
    state = ConvertProgress(spark, plan.index)
    in_flight = readahead.files_in_flight(spark)
    retried = readahead.retry_counter(spark)
    spec = jsonl.parser_spec(spark, plan.schema, opts.required_fields, opts.max_line_bytes, opts.strict_schema)
    noted = False
    reporter = progress.Reporter(state.line, progress.interval_s(spark)).start()
    try:
        while True:
            lines = inputs.input_lines(plan.lines, bad)
            parsed, result.reader = readahead.read_lines(spark, lines, in_flight, spec, jsonl.output_schema(plan.schema),
                                                           retried)
            if result.reader["name"] == "read-ahead":
                # Spark pruned the scan's files by these filters; the rows are filtered again, so that
                # a skipped or set-aside file can never reach the output even where it would not.
                source = F.col("source_file")
                parsed = parsed.where(inputs.is_input_name(source) & ~source.isin(sorted(bad)))
            else:
                if in_flight and not noted:
                    noted = True
                    cli.print_err(f"convert: note: reading with Spark's text source, one file after another per "
                                  f"task (slower on object stores): {result.reader['why']}")
                parsed = jsonl.parse_lines(lines, plan.schema, spec=spec)
            obs = Observation(f"convert-{result.attempts}")
            observed = parsed.observe(obs, *_metrics())
            group = output.new_group("convert")
            state.group = group
            try:
                output.write_parquet(spark, jsonl.good_rows(observed, plan.schema, opts.with_source_file),
                                     out.staging, opts.out.compression, group, plan.writer_options)
                break
            except Exception as e:  # noqa: BLE001 - only a read failure of an input file is handled
                if not inputs.is_read_failure(e):
                    raise
                found = [b for b in inputs.find_bad_files(spark, roots, e) if b.uri not in bad]
                if not found:
                    raise
                bad.update((b.uri, b) for b in found)
                if len(bad) > MAX_BAD_FILES:
                    raise errors.UsageError(f"more than {MAX_BAD_FILES} input files cannot be read, e.g. "
                                         f"{redact_uri(found[0].uri)} ({found[0].detail}); check the input") from None
                hadoop.delete(spark, out.staging)
                result.attempts += 1
    finally:
        reporter.stop()
    result.read_retries["input_files"] = int(retried.value())
    result.tasks = output.tasks_of_group(spark, group)
    m = obs.get
    result.lines, result.blank, result.rejected = int(m["lines"]), int(m["blank"] or 0), int(m["rejected"] or 0)
    result.reject_files = [f for f in (m["reject_files"] or "").split(_SEP) if f]
    result.unknown = {"lines": int(m["unknown_lines"] or 0),
                      "names": sorted(n for n in (m["unknown_names"] or "").split(_SEP) if n)}
    result.bad_files = sorted(bad.values(), key=lambda b: b.uri)
    if result.rejected or result.bad_files:
        result.reasons = _write_rejects(spark, opts, plan, result, f"{out.staging}/_rejects")
    if plan.files is not None:
        ledger.write(spark, plan.files, out.run_id, out.staging)
    result.output_files = files.list_data_files(spark, out.staging)
    return result


class ConvertProgress:
    """The progress line of the write, from what the running tasks have done (live, at each
    executor heartbeat): the lines handed on to be parsed and written, and the bytes of the files
    whose lines have all been handed on (the read-ahead reader counts a file when its last line
    goes; Spark's text source counts bytes as it reads them). Percent, rate and ETA are of those
    bytes: never more than was done."""

    def __init__(self, spark: SparkSession, index: InputIndex):
        self.spark, self.index = spark, index
        self.group: str | None = None
        self.rate = progress.Rate()
        self._live: progress.LiveRows | None = None

    def line(self) -> str | None:
        if self.group is None:
            return None
        if self._live is None:
            self._live = progress.LiveRows(self.spark)
        group = self.group
        read = self._live.rows(group)
        done_bytes, _ = progress.stage_input(self.spark, group)
        total, files = self.index.bytes, self.index.files
        if not done_bytes:
            return (f"convert: {read:,} lines read of {files:,} files ({human_bytes(total)}); bytes, rate and ETA "
                    "as files are done")
        done = min(total, done_bytes) if total else done_bytes
        rate = self.rate.add(time.monotonic(), done)
        pct = done / total if total else 1.0
        return (f"convert: {human_bytes(done)} / {human_bytes(total)} of {files:,} files read ({pct:.1%}), "
                f"{read:,} lines, {human_bytes(rate or 0)}/s, ETA {progress.duration(progress.eta(done, total, rate))}")


def build_report(opts: ConvertOptions, plan: ConvertPlan, result: ConvertResult, header: dict,
                 spark_info: dict, elapsed_s: float) -> dict:
    """The job's report (pure: everything comes from the plan and the result)."""
    nonblank = result.lines - result.blank
    readable = plan.index.bytes - sum(b.size for b in result.bad_files)
    per_line = readable / result.lines if result.lines else 0.0
    file_weight = sum(inputs.file_reject_weight(b.size, per_line) for b in result.bad_files)
    rejected_total = result.rejected + file_weight
    denominator = nonblank + file_weight
    bad_fraction = rejected_total / denominator if denominator else 0.0
    too_many = bad_fraction > opts.max_bad_fraction
    reasons = dict(result.reasons)
    report = {
        **header,
        "status": "too_many_rejects" if too_many else "ok",
        "input_files": plan.index.files,
        "input_bytes": plan.index.bytes,
        "empty_files": plan.index.empty_files,
        "skipped_files": plan.index.skipped,
        "input_list_entries": plan.index.input_list,
        "only_new": plan.index.only_new,
        "lines_read": result.lines,
        "blank_lines": result.blank,
        "rows_written": nonblank - result.rejected,
        "rows_rejected": result.rejected,
        "reject_reasons": reasons,
        "files_with_rejects": len(result.reject_files),
        "files_rejected": [{"file": redact_uri(b.uri), "reason": b.reason, "detail": b.detail}
                           for b in result.bad_files],
        "files_rejected_counted_as_lines": file_weight,
        "rejects_path": redact_uri(f"{header['output']}/_rejects") if (result.rejected or result.bad_files) else None,
        "bad_fraction": round(bad_fraction, 8),
        "max_bad_fraction": opts.max_bad_fraction,
        "unknown_fields": result.unknown,
        "strict_schema": opts.strict_schema,
        "max_line_bytes": opts.max_line_bytes,
        "output_files": len(result.output_files),
        "output_bytes": sum(f.size for f in result.output_files),
        "tasks": result.tasks,
        "write_attempts": result.attempts,
        "reader": result.reader,
        "read_retries": result.read_retries,
        "target_file_size": opts.target_file_size,
        "task_slots": plan.slots,
        "max_split_bytes": plan.split,
        "estimated_compression_ratio": round(plan.ratio, 4) if plan.ratio else None,
        "compression": opts.out.compression,
        "schema": schema_ddl(plan.schema),
        "schema_source": plan.schema_source,
        "schema_sample": ({"files": plan.sample.files, "records": plan.sample.records,
                           "unusable_lines": plan.sample.unusable_lines,
                           "unreadable_files": [redact_uri(f) for f in plan.sample.unreadable_files]}
                          if plan.sample else None),
        "with_source_file": opts.with_source_file,
        **spark_info,
        "phase_s": plan.phases.phases,
        "elapsed_s": round(elapsed_s, 3),
    }
    report["summary"] = summary_line(report)
    return report


def run_convert(spark: SparkSession, opts: ConvertOptions) -> dict:
    """Run the whole job (or, with ``opts.plan``, only its plan); return the report. Raises
    UsageError / DataQualityError."""
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    driver_retries = hadoop.retries()
    explicit = check_options(opts)
    readahead.files_in_flight(spark)  # a bad setting fails here, before anything is written
    readahead.require(spark)  # the line parser: without it, exit 2 here
    if opts.plan:
        return run_plan(spark, opts, explicit, started)
    out = output.open_output(spark, opts.out, opts.inputs or [opts.input_list or ""])
    try:
        plan = plan_convert(spark, opts, explicit, out.target)
        with session_conf(spark, {"spark.sql.files.maxPartitionBytes": str(plan.split),
                                  "spark.sql.files.openCostInBytes": str(plan.open_cost),
                                  # the split size above already spreads the input over the slots
                                  "spark.sql.files.minPartitionNum": "1"}):
            result = execute_convert(spark, opts, plan, out)
        plan.phases.lap("write")
        result.read_retries["driver"] = hadoop.retries() - driver_retries
        header = output.report_header("convert", "ok", started_at, opts.inputs or [opts.input_list], out, opts.out)
        spark_info = {"spark_version": spark.version, "spark_master": spark.sparkContext.master}
        report = build_report(opts, plan, result, header, spark_info, time.monotonic() - started)
        too_many = report["status"] != "ok"
        output.finish(spark, out, report, opts.out.report, ok=not too_many)
    except BaseException:
        out.publisher.discard()
        raise
    facts = plan.index.only_new or {}
    if plan.lines is None:
        changed = (f", {facts['changed_files']:,} changed since and skipped (--changed-files skip)"
                   if facts.get("changed_files") else "")
        cli.print_err(f"convert: nothing new: {facts.get('already_ingested_files', 0):,} input files are in other "
                      f"partitions of {redact_uri(opts.out.output)}{changed}; published an empty "
                      f"{redact_uri(out.target)}")
    elif facts.get("changed_files"):
        done = "converted again whole" if opts.changed_files == "reingest" else "left out"
        first = facts["changed_files_examples"][0]
        cli.print_err(f"convert: note: {facts['changed_files']:,} input files changed since another partition "
                      f"ingested them, {done} (--changed-files {opts.changed_files}), e.g. {first['file']} (in "
                      f"{first['partition']})" + ("; the lines of their earlier versions are still in those "
                                                  "partitions" if opts.changed_files == "reingest" else ""))
    listed = plan.index.input_list or {}
    if listed.get("duplicate_entries"):
        cli.print_err(f"convert: note: --input-list names {listed['duplicate_entries']:,} files more than once "
                      f"(e.g. {listed['duplicate_examples'][0]}); each was read and counted once")
    if report["unknown_fields"]["lines"] and not opts.strict_schema:
        cli.print_err(f"convert: note: {report['unknown_fields']['lines']:,} lines carry fields the schema lacks "
                      f"({', '.join(report['unknown_fields']['names'][:10])}); they were written without them "
                      "(pass --schema with those fields, or --strict-schema to reject such lines)")
    if too_many:
        raise errors.DataQualityError(
            f"{report['rows_rejected'] + report['files_rejected_counted_as_lines']:,} rejected of "
            f"{report['lines_read'] - report['blank_lines'] + report['files_rejected_counted_as_lines']:,} "
            f"lines ({report['bad_fraction']:.4%} > --max-bad-fraction {opts.max_bad_fraction:g}); they are in "
            f"{report['rejects_path']}; fix the input or raise --max-bad-fraction", report)
    return report


def run_plan(spark: SparkSession, opts: ConvertOptions, explicit: StructType | None, started: float) -> dict:
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
    sources = opts.inputs or [opts.input_list or ""]
    object_store = any(hadoop.scheme(spark, u) not in ("file", "hdfs", "viewfs") for u in sources)
    in_flight = readahead.files_in_flight(spark) if readahead.load(spark) else 0
    report = build_plan_report(opts, plan, parse_rate, object_store, sparkapi.driver_heap_mb(spark), spark.version,
                               spark.sparkContext.master, time.monotonic() - started, target, scratch is not None,
                               files_in_flight=max(1, in_flight))
    if opts.out.report:
        write_report(spark, report, None, opts.out.report)
    return report


def build_plan_report(opts: ConvertOptions, plan: ConvertPlan, parse_bytes_per_s: float, object_store: bool,
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
    from pyspark.sql import functions as F

    if not plan.index.sample:
        return 0.0
    size = sum(hadoop.file_size(spark, p) for p in plan.index.sample)
    if size <= 0:
        return 0.0
    repeat = max(1, math.ceil(min_bytes / size))
    sample = spark.read.text([hadoop.escape_glob(p) for p in plan.index.sample]).coalesce(1).cache()
    lines = sample.crossJoin(spark.range(repeat).coalesce(1)).select("value").withColumn("source_file", F.lit(""))
    try:
        sample.count()
        best = math.inf
        for i in range(rounds):
            parsed = jsonl.parse_lines(lines, plan.schema, opts.required_fields, opts.max_line_bytes,
                                       opts.strict_schema)
            # Observed as the job observes it: the same metrics over the same parse.
            good = jsonl.good_rows(parsed.observe(Observation(f"measure-{i}"), *_metrics()), plan.schema)
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


def summary_line(r: dict) -> str:
    """The one line the job prints on stdout."""
    files_rejected = f", {len(r['files_rejected'])} unreadable files" if r["files_rejected"] else ""
    skipped = f"; {r['skipped_files']['files']:,} other files skipped" if r["skipped_files"].get("files") else ""
    new = r.get("only_new") or {}
    if new:
        skipped += f"; {new['already_ingested_files']:,} already ingested"
        if new["changed_files"]:
            skipped += f", {new['changed_files']:,} changed ({new['changed_files_policy']})"
    return (f"convert: {r['input_files']:,} files ({human_bytes(r['input_bytes'])}) -> "
            f"{r['rows_written']:,} rows in {r['output_files']:,} files ({human_bytes(r['output_bytes'])}) "
            f"with {r['tasks']:,} tasks; {r['rows_rejected']:,} rejected{files_rejected}, "
            f"{r['blank_lines']:,} blank{skipped}; {r['elapsed_s']:.1f} s; report {r['output']}/_report.json")


def job(spark: SparkSession, args: argparse.Namespace) -> dict:
    """Entry for ``cli.run``: flags -> options -> run."""
    return run_convert(spark, options_from_args(args))


# ---------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set session settings for the duration of a block, then restore the previous values."""
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def _metrics() -> list[Column]:
    kind, unknown = F.col("kind"), F.col("unknown")
    has_unknown = (kind == jsonl.KIND_OK) & (F.size(unknown) > 0)
    return [
        F.count(F.lit(1)).alias("lines"),
        _count(kind == jsonl.KIND_BLANK).alias("blank"),
        _count(kind == jsonl.KIND_REJECT).alias("rejected"),
        F.array_join(F.collect_set(F.when(kind == jsonl.KIND_REJECT, F.col("source_file"))), _SEP)
        .alias("reject_files"),
        _count(has_unknown).alias("unknown_lines"),
        F.array_join(F.array_distinct(F.flatten(F.collect_set(F.when(has_unknown, unknown)))), _SEP)
        .alias("unknown_names"),
    ]


def _write_rejects(spark: SparkSession, opts: ConvertOptions, plan: ConvertPlan, result: ConvertResult,
                   path: str) -> dict[str, int]:
    """Read only the files that held rejected lines again and write those lines, and one row per
    file that could not be read, to ``path``. Returns the count per reason."""
    frames = []
    if result.reject_files:
        again = spark.read.text([hadoop.escape_glob(hadoop.uri_to_path(spark, f)) for f in result.reject_files])
        frames.append(jsonl.reject_rows(
            jsonl.parse_lines(again, plan.schema, opts.required_fields, opts.max_line_bytes, opts.strict_schema)))
    if result.bad_files:
        frames.append(spark.createDataFrame([(b.uri, None, None, b.reason, b.detail) for b in result.bad_files],
                                            jsonl.REJECTS_SCHEMA))
    rejects = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    obs = Observation("rejects")
    reason = F.col("reason")
    all_reasons = jsonl.REASONS + jsonl.FILE_REASONS
    counted = rejects.observe(obs, *[_count(reason == r).alias(r) for r in all_reasons])
    output.write_parquet(spark, counted.coalesce(max(1, min(len(result.reject_files) + len(result.bad_files), 16))),
                         path, opts.out.compression)
    return {r: int(obs.get[r] or 0) for r in all_reasons if obs.get[r]}


def _open_cost(spark: SparkSession) -> int:
    # Many small files: opening one must not count as megabytes, or tasks stay small. A value
    # set at launch (--conf) wins.
    if spark.sparkContext.getConf().contains("spark.sql.files.openCostInBytes"):
        return cli.parse_size(spark.conf.get("spark.sql.files.openCostInBytes"))
    return 8 << 10


def _task_slots(spark: SparkSession) -> int:
    launch = spark.sparkContext.getConf()
    for key in ("spark.sql.files.minPartitionNum", "spark.sql.leafNodeDefaultParallelism"):
        value = launch.get(key, None)
        if value:
            return max(1, int(value))
    return max(1, spark.sparkContext.defaultParallelism)


def _count(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
