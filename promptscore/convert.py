"""The convert job: many small JSONL files under a prefix -> a few large Parquet files.

One pass over the input: every line is parsed in the JVM (``from_json``), sorted into written,
rejected or blank, and the counts and the names of the files holding rejected lines are collected
as observed metrics of the same write. Only those files are read a second time, to set their
rejected lines aside under ``<output>/_rejects/``.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from promptscore import cli, hadoop, infer, output
from promptscore.output import OutputSpec
from promptscore.report import human_bytes, redact_uri

INPUT_GLOB = "*.{jsonl,jsonl.gz}"
CORRUPT = "_corrupt_record"
DEFAULT_RATIO = 0.3  # Parquet bytes per input byte when no sample is read
KIND_OK, KIND_BLANK, KIND_REJECT = "ok", "blank", "reject"
REASONS = ("missing_required_field", "schema_mismatch", "not_json_object")
_BOM = "\ufeff"
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


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``jobs/convert.py``."""
    p = cli.JobParser(
        prog="convert.py",
        description="Convert a prefix of small JSONL files (*.jsonl, *.jsonl.gz, any depth) into a "
        "few large Parquet files. Malformed lines go to <output>/_rejects/.",
    )
    p.add_argument("--input", action="append", required=True, metavar="URI",
                   help="input prefix or file (oss://, hdfs://, file://, plain path); repeatable")
    p.add_argument("--schema", metavar="DDL",
                   help="Spark DDL of the records, e.g. 'id string, prompt string, turns bigint'; "
                   "default: inferred from --sample-files files")
    p.add_argument("--sample-files", type=int, default=32, metavar="N",
                   help="files read to infer the schema and estimate compression (default 32; "
                   "0 needs --schema)")
    p.add_argument("--target-file-size", type=cli.parse_size, default=256 << 20, metavar="SIZE",
                   help="aim for output files of this size (default 256m)")
    p.add_argument("--max-bad-fraction", type=cli.fraction, default=0.001, metavar="F",
                   help="exit 3 if more than this fraction of non-blank lines is rejected "
                   "(default 0.001)")
    p.add_argument("--with-source-file", action="store_true",
                   help="add a source_file column (the input file's URI)")
    p.add_argument("--required-fields", default="prompt", metavar="A,B",
                   help="lines whose JSON lacks any of these (or has null) are rejected "
                   "(default prompt; '' for none)")
    output.add_args(p)
    return p


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    """Check the parsed flags together and turn them into ConvertOptions."""
    if args.sample_files < 0:
        raise cli.UsageError("--sample-files must be 0 or more")
    if args.sample_files == 0 and not args.schema:
        raise cli.UsageError("--sample-files 0 needs --schema")
    return ConvertOptions(
        inputs=list(args.input),
        out=output.from_args(args),
        schema=args.schema,
        sample_files=args.sample_files,
        target_file_size=args.target_file_size,
        max_bad_fraction=args.max_bad_fraction,
        with_source_file=args.with_source_file,
        required_fields=[f.strip() for f in args.required_fields.split(",") if f.strip()],
    )


# ---------------------------------------------------------------------------------------------
# Pure transformations


def read_lines(spark: SparkSession, inputs: Sequence[str]) -> DataFrame:
    """Every line of every ``*.jsonl`` / ``*.jsonl.gz`` file under ``inputs``, at any depth.

    One column, ``value``. Listing happens here (Spark's parallel file index); the file names are
    available through ``_metadata.file_path``.
    """
    from pyspark.errors import AnalysisException

    try:
        return (spark.read.option("recursiveFileLookup", "true")
                .option("pathGlobFilter", INPUT_GLOB)
                .text(list(inputs)))
    except AnalysisException as e:
        text = str(e)
        if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
            raise cli.UsageError(f"input not found: {_first_line(text)}") from None
        raise


def parse_lines(lines: DataFrame, schema: StructType, required: Sequence[str] = ("prompt",)) -> DataFrame:
    """Parse each line against ``schema`` and sort it: ``ok``, ``blank`` or ``reject``.

    Input: ``read_lines`` output (``value`` plus the hidden ``_metadata``), or any DataFrame with
    ``value`` and ``source_file`` columns. Output columns: ``source_file``, ``value``, ``parsed``
    (the record as a struct) and ``kind``. A line is a reject when it is not a JSON object, when its
    values do not fit the schema's types, or when a required field is missing or null. Lines of
    only whitespace are blank. A leading byte-order mark is ignored.
    """
    with_corrupt = StructType(list(schema.fields) + [StructField(CORRUPT, StringType())])
    opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    value = F.col("value")
    source = F.col("source_file") if "source_file" in lines.columns else F.col("_metadata.file_path")
    # Two projections, so that Spark parses each line once: the optimizer does not merge a
    # projection whose expensive result (the parse) is used more than once above it.
    first = lines.select(source.alias("source_file"), value,
                         F.from_json(value, with_corrupt, opts).alias("parsed"))
    p = F.col("parsed")
    # Only lines that failed and start with a byte-order mark pay for a second parse.
    bom_retry = F.from_json(F.expr("substring(value, 2)"), with_corrupt, opts)
    staged = first.select("source_file", value,
                          F.when(p[CORRUPT].isNotNull() & value.startswith(_BOM), bom_retry)
                          .otherwise(p).alias("parsed"))
    p = F.col("parsed")
    missing = F.lit(False)
    for name in required:
        missing = missing | p[name].isNull()
    kind = (F.when(p.isNull(), F.lit(KIND_BLANK))
            .when(p[CORRUPT].isNotNull() | missing, F.lit(KIND_REJECT))
            .otherwise(F.lit(KIND_OK)))
    return staged.withColumn("kind", kind)


def good_rows(parsed: DataFrame, schema: StructType, with_source_file: bool = False) -> DataFrame:
    """The written rows: one column per schema field (plus ``source_file`` when asked)."""
    cols = [F.col("parsed")[f.name].alias(f.name) for f in schema.fields]
    if with_source_file:
        cols.append(F.col("source_file"))
    return parsed.filter(F.col("kind") == KIND_OK).select(*cols)


def reject_rows(parsed: DataFrame) -> DataFrame:
    """The set-aside lines: ``source_file``, ``raw`` (the line as read) and ``reason``."""
    value = F.col("value")
    reason = (F.when(F.col("parsed")[CORRUPT].isNull(), F.lit(REASONS[0]))
              .when(F.from_json(value, "map<string,string>").isNotNull(), F.lit(REASONS[1]))
              .otherwise(F.lit(REASONS[2])))
    return (parsed.filter(F.col("kind") == KIND_REJECT)
            .select("source_file", value.alias("raw"), reason.alias("reason")))


# ---------------------------------------------------------------------------------------------
# Schema


def parse_schema(spark: SparkSession, ddl: str) -> StructType:
    """A Spark DDL string (``a string, b bigint`` or ``struct<...>``) as a StructType."""
    from pyspark.sql.types import _parse_datatype_string

    try:
        dt = _parse_datatype_string(ddl)
    except Exception as e:  # noqa: BLE001 - Spark raises several kinds for bad DDL
        raise cli.UsageError(f"--schema is not valid Spark DDL: {_first_line(str(e))}") from None
    if not isinstance(dt, StructType):
        raise cli.UsageError(f"--schema must list fields (e.g. 'prompt string'), got {ddl!r}")
    return dt


def schema_ddl(schema: StructType) -> str:
    """A DDL string that ``parse_schema`` (and ``--schema``) read back as the same schema."""
    def quote(name: str) -> str:
        return name if name.isidentifier() else "`" + name.replace("`", "``") + "`"
    return ", ".join(f"{quote(f.name)} {f.dataType.simpleString()}" for f in schema.fields)


def infer_schema(spark: SparkSession, sample_paths: Sequence[str], required: Sequence[str]) -> StructType:
    """The schema of the sampled files (never a pass over the whole input); see ``infer``.

    A required field that no sampled line holds is added as a string; any other field absent from
    the sample is not a column of the output (pass ``--schema`` when the sample cannot be trusted
    to show every field).
    """
    inferred, _, _ = infer.sample_schema(spark, sample_paths)
    fields = list(inferred.fields)
    names = {f.name for f in fields}
    fields += [StructField(name, StringType()) for name in required if name not in names]
    return StructType(fields)


# ---------------------------------------------------------------------------------------------
# The job


@dataclass
class InputIndex:
    """What Spark's file index found under the inputs."""

    files: int
    bytes: int
    sample: list[str]


def index_inputs(spark: SparkSession, lines: DataFrame, sample_files: int) -> InputIndex:
    """File count, total bytes and a sample of file paths, from Spark's own index (no second
    listing; only the sampled names cross from the JVM). Spark returns the files in hash order,
    so taking every k-th one is a deterministic, well spread sample."""
    jfiles = lines._jdf.inputFiles()
    total = len(jfiles)
    size = int(str(lines._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    n = min(sample_files, total)
    picked = sorted({str(jfiles[i * total // n]) for i in range(n)}) if n else []
    return InputIndex(total, size, [hadoop.uri_to_path(spark, u) for u in picked])


def estimate_ratio(spark: SparkSession, sample: Sequence[str], schema: StructType, codec: str) -> float:
    """Parquet bytes per input byte, measured by writing the sampled records in memory."""
    import pyarrow.parquet as pq

    if not sample:
        return DEFAULT_RATIO
    in_bytes = sum(hadoop.file_size(spark, p) for p in sample)
    df = good_rows(parse_lines(spark.read.text([hadoop.escape_glob(p) for p in sample]), schema, ()), schema)
    table = df.toArrow() if hasattr(df, "toArrow") else _collect_arrow(df)
    if in_bytes <= 0 or table.num_rows == 0:
        return DEFAULT_RATIO
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=None if codec == "none" else codec)
    return min(1.0, max(0.02, buf.tell() / in_bytes))


def split_bytes(total_bytes: int, files: int, open_cost: int, slots: int, target_file_size: int,
                ratio: float) -> int:
    """The ``spark.sql.files.maxPartitionBytes`` that packs the input into a whole number of waves.

    One task writes one output file, so the input is cut into ``n`` equal splits: enough for
    output files of about ``target_file_size`` (``ratio`` is Parquet bytes per input byte), and a
    multiple of the task slots so that no core idles in a last, short wave. Spark packs files into
    splits greedily, so each split gets 1% of slack.
    """
    weighted = total_bytes + files * open_cost
    wanted = max(1, math.ceil(total_bytes * ratio / target_file_size))
    n = slots * math.ceil(wanted / slots)
    return max(open_cost, math.ceil(weighted / n * 1.01))


def run_convert(spark: SparkSession, opts: ConvertOptions) -> dict:
    """Run the whole job; return the report. Raises UsageError / DataQualityError."""
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    target, mode = output.prepare(spark, opts.out)

    explicit = parse_schema(spark, opts.schema) if opts.schema else None
    if explicit is not None:
        absent = [n for n in opts.required_fields if n not in explicit.fieldNames()]
        if absent:
            raise cli.UsageError(f"--schema lacks required field(s) {', '.join(absent)} "
                                 "(add them or change --required-fields)")
    if opts.with_source_file and explicit is not None and "source_file" in explicit.fieldNames():
        raise cli.UsageError("--with-source-file clashes with a schema field named source_file")

    clock = output.Phases()
    lines = read_lines(spark, opts.inputs)
    index = index_inputs(spark, lines, opts.sample_files)
    clock.lap("list")
    if index.files == 0:
        raise cli.UsageError(f"no {INPUT_GLOB} files under {', '.join(map(redact_uri, opts.inputs))}")

    schema = explicit if explicit is not None else infer_schema(spark, index.sample, opts.required_fields)
    if opts.with_source_file and "source_file" in schema.fieldNames():
        raise cli.UsageError("--with-source-file clashes with a field named source_file in the data")
    clock.lap("schema")
    open_cost = _open_cost(spark)
    slots = _task_slots(spark)
    ratio = None
    if index.bytes / opts.target_file_size > slots:  # only then does the ratio change the plan
        ratio = estimate_ratio(spark, index.sample, schema, opts.out.compression)
    split = split_bytes(index.bytes, index.files, open_cost, slots, opts.target_file_size,
                        ratio or DEFAULT_RATIO)
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(split))
    spark.conf.set("spark.sql.files.openCostInBytes", str(open_cost))
    spark.conf.set("spark.sql.files.minPartitionNum", "1")  # the split size above already spreads

    parsed = parse_lines(lines, schema, opts.required_fields)
    obs = Observation("convert")
    kind = F.col("kind")
    observed = parsed.observe(
        obs,
        F.count(F.lit(1)).alias("lines"),
        _count(kind == KIND_BLANK).alias("blank"),
        _count(kind == KIND_REJECT).alias("rejected"),
        F.array_join(F.collect_set(F.when(kind == KIND_REJECT, F.col("source_file"))), _SEP)
        .alias("reject_files"),
    )
    group = output.new_group("convert")
    output.write_parquet(spark, good_rows(observed, schema, opts.with_source_file), target, mode,
                         opts.out.compression, group)
    clock.lap("write")
    tasks = output.tasks_of_group(spark, group)
    m = obs.get
    lines_read, blank, rejected = int(m["lines"]), int(m["blank"] or 0), int(m["rejected"] or 0)
    reject_files = [f for f in (m["reject_files"] or "").split(_SEP) if f]

    rejects_path, reasons = None, {}
    if rejected:
        rejects_path = f"{target}/_rejects"
        reasons = _write_rejects(spark, reject_files, schema, opts, rejects_path)
        clock.lap("rejects")

    outputs = hadoop.list_data_files(spark, target)
    nonblank = lines_read - blank
    bad_fraction = rejected / nonblank if nonblank else 0.0
    too_many = bad_fraction > opts.max_bad_fraction
    report = {
        **output.report_header("convert", "too_many_rejects" if too_many else "ok", started_at, opts.inputs, target, opts.out, mode),
        "input_files": index.files,
        "input_bytes": index.bytes,
        "lines_read": lines_read,
        "blank_lines": blank,
        "rows_written": nonblank - rejected,
        "rows_rejected": rejected,
        "reject_reasons": reasons,
        "files_with_rejects": len(reject_files),
        "rejects_path": redact_uri(rejects_path) if rejects_path else None,
        "bad_fraction": round(bad_fraction, 8),
        "max_bad_fraction": opts.max_bad_fraction,
        "output_files": len(outputs),
        "output_bytes": sum(f.size for f in outputs),
        "tasks": tasks,
        "target_file_size": opts.target_file_size,
        "task_slots": slots,
        "max_split_bytes": split,
        "estimated_compression_ratio": round(ratio, 4) if ratio else None,
        "compression": opts.out.compression,
        "schema": schema_ddl(schema),
        "schema_source": "explicit" if explicit is not None else f"sample of {len(index.sample)} files",
        "with_source_file": opts.with_source_file,
        "spark_version": spark.version,
        "spark_master": spark.sparkContext.master,
        "phase_s": clock.phases,
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    report["summary"] = summary_line(report, f"{target}/_report.json")
    output.finish(spark, target, report, opts.out.report, ok=not too_many)
    if too_many:
        raise cli.DataQualityError(
            f"{rejected:,} of {nonblank:,} lines rejected ({bad_fraction:.4%} > --max-bad-fraction "
            f"{opts.max_bad_fraction:g}); they are in {redact_uri(rejects_path or '')}; fix the input "
            "or raise --max-bad-fraction", report)
    return report


def summary_line(r: dict, report_path: str) -> str:
    """The one line the job prints on stdout."""
    return (f"convert: {r['input_files']:,} files ({human_bytes(r['input_bytes'])}) -> "
            f"{r['rows_written']:,} rows in {r['output_files']:,} files ({human_bytes(r['output_bytes'])}) "
            f"with {r['tasks']:,} tasks; {r['rows_rejected']:,} rejected, {r['blank_lines']:,} blank; "
            f"{r['elapsed_s']:.1f} s; report {redact_uri(report_path)}")


def job(spark: SparkSession, args: argparse.Namespace) -> dict:
    """Entry for ``cli.run``: flags -> options -> run."""
    return run_convert(spark, options_from_args(args))


# ---------------------------------------------------------------------------------------------
# Helpers


def _write_rejects(spark: SparkSession, files: Sequence[str], schema: StructType,
                   opts: ConvertOptions, path: str) -> dict[str, int]:
    """Read only the files that held rejected lines again and write those lines to ``path``."""
    again = spark.read.text([hadoop.escape_glob(hadoop.uri_to_path(spark, f)) for f in files])
    rejects = reject_rows(parse_lines(again, schema, opts.required_fields))
    obs = Observation("rejects")
    reason = F.col("reason")
    counted = rejects.observe(obs, *[_count(reason == r).alias(r) for r in REASONS])
    output.write_parquet(spark, counted.coalesce(max(1, min(len(files), 16))), path, "overwrite",
                         opts.out.compression)
    return {r: int(obs.get[r] or 0) for r in REASONS if obs.get[r]}


def _open_cost(spark: SparkSession) -> int:
    # Many small files: opening one must not count as megabytes, or tasks stay small. A value
    # set at launch (a properties file, --conf) wins.
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


def _collect_arrow(df: DataFrame):
    import pyarrow as pa

    batches = df._collect_as_arrow()
    if batches:
        return pa.Table.from_batches(batches)
    return pa.table({f.name: [] for f in df.schema.fields})


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
