"""What a convert run settles before it writes: the input (``promptscore.convert.inputs``), the
schema (given, or from a sample) and the packing of the input into tasks, so that each task writes
one output file of about ``--target-file-size`` and the tasks fill whole waves of the cluster.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructType

from promptscore import cli, errors, sparkapi
from promptscore.convert import jsonl
from promptscore.convert.inputs import INPUT_NAMES, InputIndex, select_input
from promptscore.convert.options import ConvertOptions
from promptscore.convert.schema import SAMPLE_HEAD_BYTES, SchemaSample, sample_schema, with_required
from promptscore.io import hadoop
from promptscore.io.files import File, lines_of
from promptscore.io.reports import Phases, redact_uri

DEFAULT_RATIO = 0.3  # Parquet bytes per input byte when no sample is read
RATIO_SAMPLE_BYTES = 8 << 20  # at most this much of the schema sample's whole files measure the ratio


@dataclass
class ConvertPlan:
    """What the job decided before writing: the input, the schema and the packing."""

    lines: DataFrame | None  # None: nothing to read (--only-new found nothing new)
    index: InputIndex
    schema: StructType
    schema_source: str
    sample: SchemaSample | None
    slots: int
    open_cost: int
    split: int
    ratio: float | None
    writer_options: dict[str, str]
    phases: Phases
    files: list[File] | None = None  # the files to read, when known one by one
    already_converted: int = 0  # --only-new: input files left out (other partitions hold them, or changed and skipped)
    sample_lines: DataFrame | None = None  # --plan: the sampled lines, held in memory (``sample_lines``)


def plan_convert(spark: SparkSession, opts: ConvertOptions, explicit: StructType | None,
                 target: str | None = None) -> ConvertPlan:
    """List the input, settle the schema (``explicit``, or from a sample) and size the tasks.
    Writes nothing."""
    clock = Phases()
    lines, index, files, already = select_input(spark, opts, target)
    clock.lap("list")
    if index.files == 0 and not (index.only_new and (already or index.only_new["changed_files"])):
        where = redact_uri(opts.input_list) if opts.input_list else ", ".join(map(redact_uri, opts.inputs))
        raise errors.UsageError(f"no {INPUT_NAMES} files in {where}")
    open_cost, slots = _open_cost(spark), _task_slots(spark)
    measure = bool(index.files) and (opts.plan or index.bytes / opts.target_file_size > slots)
    # Sampled files small enough to be read whole by the schema sample give the compression ratio
    # from its records, with no read of their own (--plan reads them in Spark anyway, for the rate).
    from_sample = measure and not opts.plan and explicit is None and _sampled_whole(index)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptscore-ratio") as pool:
        # Otherwise the ratio's read of the sampled files is planned while the schema is sampled.
        reading = pool.submit(_sample_read, spark, index, opts.plan) if measure and not from_sample else None
        schema, source, sample = _schema(spark, opts, explicit, index, RATIO_SAMPLE_BYTES if from_sample else 0)
        clock.lap("schema")
        ratio = None
        sampled = None
        if from_sample and sample:
            ratio = ratio_of_records(sample.kept_records, sample.kept_bytes, opts.out.compression)
            sample.kept_records = []  # the plan keeps the sample: not its records
            if ratio is None:  # values pyarrow cannot type alike, say: the sample is read in Spark after all
                reading = pool.submit(_sample_read, spark, index, False)
        if reading is not None:
            # --plan reads the sample once more, to measure the rate: held in memory for both.
            sampled, rows = reading.result()
            ratio = estimate_ratio(spark, sampled, sample_bytes(spark, index), schema, opts.out.compression, rows)
            if not opts.plan:
                sampled = None
    split = split_bytes(index.bytes, max(1, index.files), open_cost, slots, opts.target_file_size,
                        ratio or DEFAULT_RATIO)
    writer = parquet_options(schema, sample.distinct_share if sample else {})
    return ConvertPlan(lines, index, schema, source, sample, slots, open_cost, split, ratio, writer, clock,
                       files, already, sampled)


def _schema(spark: SparkSession, opts: ConvertOptions, explicit: StructType | None,
            index: InputIndex, keep_bytes: int = 0) -> tuple[StructType, str, SchemaSample | None]:
    """The schema (``explicit``, or from a sample of the input files), where it came from, and
    the sample (keeping the records of ``keep_bytes`` of whole files)."""
    sample = None
    if explicit is not None:
        schema, source = explicit, "explicit"
    elif index.files:
        sample = sample_schema(spark, index.sample, max_line_bytes=opts.max_line_bytes,
                               sizes={f.path: f.size for f in index.sample_files}, keep_bytes=keep_bytes)
        schema, source = with_required(sample.schema, opts.required_fields), f"sample of {sample.files} files"
    else:
        schema, source = with_required(StructType([]), opts.required_fields), "nothing new to sample"
    if opts.with_source_file and "source_file" in schema.fieldNames():
        raise errors.UsageError("--with-source-file clashes with a field named source_file in the data")
    return schema, source, sample


def _sample_read(spark: SparkSession, index: InputIndex, cache: bool) -> tuple[DataFrame | None, Any]:
    """``sample_lines`` and their rows as the parser reads them (``jsonl.line_rows``), planned."""
    lines = sample_lines(spark, index, cache=cache)
    return lines, None if lines is None else jsonl.line_rows(lines)


def sample_lines(spark: SparkSession, index: InputIndex, cache: bool = False) -> DataFrame | None:
    """The lines of the sampled files (``source_file``, ``value``; one partition), read through
    the statuses the listing gave when it gave them (no request per file); ``cache``: held in
    memory until ``unpersist``. None when nothing is sampled."""
    if not index.sample:
        return None
    if len(index.sample_files) == len(index.sample):
        read = lines_of(spark, index.sample_files)
    else:
        read = spark.read.text([hadoop.escape_glob(p) for p in index.sample])
    df = read.select(F.col("_metadata.file_path").alias("source_file"), "value").coalesce(1)
    return df.cache() if cache else df


def sample_bytes(spark: SparkSession, index: InputIndex) -> int:
    """The bytes of the sampled files: from the listing when it gave them, else asked per file."""
    if len(index.sample_files) == len(index.sample):
        return sum(f.size for f in index.sample_files)
    return sum(hadoop.file_size(spark, p) for p in index.sample)


def _sampled_whole(index: InputIndex) -> bool:
    """Whether the schema sample reads every sampled file whole (their sizes known and small)."""
    return bool(index.sample) and len(index.sample_files) == len(index.sample) and \
        all(f.size <= SAMPLE_HEAD_BYTES for f in index.sample_files)


def ratio_of_records(records: list[dict], in_bytes: int, codec: str) -> float | None:
    """Parquet bytes per input byte of ``records`` (parsed from ``in_bytes`` of whole files),
    measured by writing them in memory, their types as pyarrow infers them; None when there is
    nothing to measure or pyarrow cannot type the values alike (a field a number here, a string
    there)."""
    import pyarrow as pa

    if not records or in_bytes <= 0:
        return None
    try:
        table = pa.Table.from_struct_array(pa.array(records))
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None
    return _parquet_ratio(table, in_bytes, codec) if table.num_columns else None


def estimate_ratio(spark: SparkSession, lines: DataFrame | None, in_bytes: int, schema: StructType,
                   codec: str, rows=None) -> float:
    """Parquet bytes per input byte (``in_bytes`` of input in ``lines``, from ``sample_lines``),
    measured by writing the sampled records in memory; ``rows``: ``jsonl.line_rows(lines)`` made
    before."""
    import pyarrow as pa

    if lines is None:
        return DEFAULT_RATIO
    df = jsonl.good_rows(jsonl.parse_lines(lines, schema, (), check_fields=False, rows=rows), schema)
    batches = sparkapi.collect_arrow(df)
    if in_bytes <= 0 or not batches:
        return DEFAULT_RATIO
    return _parquet_ratio(pa.Table.from_batches(batches), in_bytes, codec)


def _parquet_ratio(table, in_bytes: int, codec: str) -> float:
    """Parquet bytes of ``table`` written in memory with ``codec``, per input byte (0.02 to 1)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression=None if codec == "none" else codec)
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
