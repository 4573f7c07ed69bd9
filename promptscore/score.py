"""The score job: a reward-model score for every row of a Parquet dataset.

The driver checks the model and the columns, builds the pandas UDF of ``udfs.reward`` and writes
every input column plus ``score`` (float, null when not scorable) and ``score_error`` (string,
null when scored). The input is cut into chunks of whole files (``promptscore.pieces``), each
scored by a Spark write of its own and committed when done, several at a time from driver
threads, so that a rerun of the same command after a kill resumes: it reuses every chunk an
earlier run with the same fingerprint (``promptscore.fingerprint``) committed. Counts and token
totals are observed metrics of each chunk's write; score quantiles and the histogram come from
one read of the ``score`` column at the end; each task's timings come back through an
accumulator. A progress line goes to stderr every few seconds (``promptscore.progress``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.accumulators import AccumulatorParam
from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from promptscore import (cli, errors, fingerprint, model_files, pieces, progress, score_plan,
                         sizing)
from promptscore.io import files, hadoop, output, publish
from promptscore.io.output import OutputSpec
from promptscore.io.reports import human_bytes, redact_uri
from udfs.engines import EngineSpec
from udfs.reasons import REASONS
from udfs.uris import has_scheme

MAX_ROWS_IN_FLIGHT_CONF = "spark.promptscore.score.maxRowsInFlight"
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
HISTOGRAM_PNG = "_score_histogram.png"


@dataclass
class ScoreOptions:
    """Everything the score job takes. ``engine.backend`` may be ``auto`` (see resolve_backend)."""

    inputs: list[str]
    out: OutputSpec
    engine: EngineSpec
    text_col: str = "prompt"
    response_col: str | None = None
    template: str = "raw"
    max_bad_fraction: float = 0.001
    cache_dir: str = "/tmp/promptscore-models"
    partitions: int | None = None
    compare_sample: int | None = None
    compare_dtype: str | None = None
    plan: bool = False
    plan_sample: float = 1.0
    gpus: int | None = None
    gpu_type: str | None = None
    calibrate: int | None = None

    @property
    def model(self) -> str:
        return self.engine.model_dir


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``jobs/score.py``."""
    p = cli.JobParser(prog="score.py", description=(
        "Score every row of a Parquet dataset with a reward model (one-label sequence classifier;\n"
        "the raw logit is the score).\n\n"
        "Resume: the input is scored in chunks of whole files, each committed when done; the same\n"
        "command run again after a kill or exit 1 reuses them when the model and every option that\n"
        "changes a score are the same (_report.json: resumed_rows).\n"
        "Progress: a line on stderr every 10 s (--conf spark.promptscore.progress.interval=SECONDS;\n"
        "0: off). Engines keep their compile caches in <--cache-dir>/engine-cache/.\n"
        "Plan: --plan tokenizes the input (or a --plan-sample of it) with the model's tokenizer and\n"
        "template, prints rows, tokens, their length distribution, the share --max-model-len cuts and\n"
        "an estimate of GPU-hours and wall-clock time beside the physical limit; writes no output."))
    p.add_argument("--input", action="append", required=True, metavar="URI",
                   help="Parquet input (e.g. the convert job's output); repeatable")
    output.add_args(p, output_required=False)
    p.add_argument("--model", required=True, metavar="PATH|URI",
                   help="model directory: a local path on every node, or a URI (oss://, hdfs://, file://) "
                   "copied once per node into --cache-dir")
    p.add_argument("--text-col", default="prompt", help="the column to score (default prompt)")
    p.add_argument("--response-col", help="score (prompt, response) pairs; needs --template chat")
    p.add_argument("--template", choices=("raw", "chat"), default="raw",
                   help="raw: the text as tokenizer(text) encodes it; chat: the tokenizer's chat template "
                   "over [user: prompt(, assistant: response)]")
    p.add_argument("--max-model-len", type=int, default=4096,
                   help="longer inputs are cut from the left, keeping a BOS token (default 4096)")
    p.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto",
                   help="auto: vllm when Spark schedules GPUs (spark.task.resource.gpu.amount), else "
                   "transformers")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    p.add_argument("--quantization", choices=("fp8",), help="vLLM weight quantization")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    p.add_argument("--max-num-batched-tokens", type=int, default=65536,
                   help="vLLM tokens per engine step (default 65536: prefill-only scoring)")
    p.add_argument("--max-num-seqs", type=int, default=512, help="vLLM rows per engine step (default 512)")
    p.add_argument("--engine-args", default="{}", metavar="JSON", help="more vLLM LLM(...) arguments")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="transformers backend")
    p.add_argument("--max-bad-fraction", type=cli.fraction, default=0.001, metavar="F",
                   help="exit 3 if more than this fraction of rows gets no score (default 0.001)")
    p.add_argument("--cache-dir", default="/tmp/promptscore-models",
                   help="local directory on each node for models given as URIs, (in "
                   "engine-cache/) the engines' compile caches and (on the driver) the model files' "
                   "digests, kept across runs")
    p.add_argument("--partitions", type=int, metavar="N",
                   help="repartition the input into about N tasks in all (spread a small input over GPUs)")
    p.add_argument("--compare-sample", type=int, metavar="N",
                   help="check instead of scoring: score a fixed sample of N rows with these options and "
                   "with the reference options (no --quantization, --compare-dtype), report Spearman and "
                   "the largest score difference; writes no output (only --report)")
    p.add_argument("--compare-dtype", metavar="DTYPE",
                   help="the reference's --dtype for --compare-sample (default: --dtype)")
    p.add_argument("--plan", action="store_true",
                   help="plan instead of scoring: count the rows, tokenize the prompts on the executors "
                   "(no engine), print the token counts and an estimate of GPU-hours and wall-clock time, "
                   "and write it with --report; writes no output (--output optional)")
    p.add_argument("--plan-sample", type=float, metavar="F",
                   help="with --plan: tokenize a random fraction F in (0, 1] of the rows (rows are still "
                   "counted exactly) and state the token total's 95%% error (default 1: every row)")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="with --plan: estimate for N GPUs (default: the GPUs the Spark configuration asks "
                   "for, as the run would use them)")
    p.add_argument("--gpu-type", choices=tuple(sizing.GPU_PEAK_FLOPS), metavar="GPU",
                   help="with --plan: the GPU to estimate for, one of "
                   f"{', '.join(sizing.GPU_PEAK_FLOPS)} (default H100, or the GPU --calibrate ran on)")
    p.add_argument("--calibrate", type=int, metavar="N",
                   help="with --plan: score N sampled rows on one engine with these options and estimate "
                   "from that measured rate instead of the FLOPs model (on the GPUs of the run)")
    return p


def options_from_args(args: argparse.Namespace) -> ScoreOptions:
    """Check the flags together and turn them into ScoreOptions."""
    try:
        engine_args = json.loads(args.engine_args)
    except ValueError as e:
        raise errors.UsageError(f"--engine-args is not JSON: {e}") from None
    if not isinstance(engine_args, dict):
        raise errors.UsageError("--engine-args must be a JSON object")
    if args.response_col and args.template != "chat":
        raise errors.UsageError("--response-col needs --template chat")
    for name in ("max_model_len", "tensor_parallel_size", "max_num_batched_tokens", "max_num_seqs"):
        if getattr(args, name) < 1:
            raise errors.UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.gpu_memory_utilization <= 1:
        raise errors.UsageError("--gpu-memory-utilization must be in (0, 1]")
    if args.partitions is not None and args.partitions < 1:
        raise errors.UsageError("--partitions must be at least 1")
    if args.compare_sample is not None:
        if args.compare_sample < 2:
            raise errors.UsageError("--compare-sample must be at least 2 (rows)")
        if not args.quantization and (args.compare_dtype or args.dtype) == args.dtype:
            raise errors.UsageError("--compare-sample has nothing to compare: pass --quantization fp8, or a "
                                 "--compare-dtype other than --dtype")
    elif args.compare_dtype:
        raise errors.UsageError("--compare-dtype goes with --compare-sample")
    if args.plan:
        if args.compare_sample is not None:
            raise errors.UsageError("--plan and --compare-sample are two different checks; run them one at a time")
        if args.plan_sample is not None and not 0 < args.plan_sample <= 1:
            raise errors.UsageError(f"--plan-sample must be a fraction in (0, 1], got {args.plan_sample:g}")
        if args.gpus is not None and args.gpus < 1:
            raise errors.UsageError("--gpus must be at least 1")
        if args.calibrate is not None and args.calibrate < 1:
            raise errors.UsageError("--calibrate must be at least 1 (rows)")
    else:
        given = [flag for flag, value in (("--plan-sample", args.plan_sample), ("--gpus", args.gpus),
                                          ("--gpu-type", args.gpu_type), ("--calibrate", args.calibrate))
                 if value is not None]
        if given:
            raise errors.UsageError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --plan")
        if not args.output:
            raise errors.UsageError("the following arguments are required: --output (see --help)")
    engine = EngineSpec(
        model_dir=args.model, backend=args.backend, max_model_len=args.max_model_len, dtype=args.dtype,
        quantization=args.quantization, tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization, max_num_batched_tokens=args.max_num_batched_tokens,
        max_num_seqs=args.max_num_seqs, engine_args=engine_args, device=args.device,
    )
    return ScoreOptions(
        inputs=list(args.input), out=output.from_args(args), engine=engine, text_col=args.text_col,
        response_col=args.response_col, template=args.template, max_bad_fraction=args.max_bad_fraction,
        cache_dir=args.cache_dir, partitions=args.partitions, compare_sample=args.compare_sample,
        compare_dtype=args.compare_dtype, plan=args.plan,
        plan_sample=args.plan_sample if args.plan_sample is not None else 1.0, gpus=args.gpus,
        gpu_type=args.gpu_type, calibrate=args.calibrate,
    )


# ---------------------------------------------------------------------------------------------
# The model, as the driver sees it


def model_manifest(spark: SparkSession, model: str) -> tuple[dict, list[tuple[str, int]] | None]:
    """The model's config.json and, for a URI, the files (relative path, size) to copy. A
    config.json that does not parse is a UsageError naming it."""
    if not has_scheme(model):
        config = os.path.join(model, "config.json")
        if not os.path.isfile(config):
            raise errors.UsageError(f"--model {model}: no config.json there (a local path must exist on the "
                                 "driver and every node; use a URI to have it copied)")
        with open(config, "rb") as f:
            return model_files.parse_config(model, f.read()), None
    if not hadoop.exists(spark, model.rstrip("/") + "/config.json"):
        raise errors.UsageError(f"--model {redact_uri(model)}: no config.json there")
    config = model_files.parse_config(model, hadoop.read_bytes(spark, model.rstrip("/") + "/config.json"))
    return config, files.list_tree(spark, model)


def check_model(config: dict, model: str) -> None:
    """A reward model here is a sequence classifier with exactly one label."""
    archs = config.get("architectures") or []
    labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    if not any(a.endswith("ForSequenceClassification") or a.endswith("RewardModel") for a in archs):
        raise errors.UsageError(f"--model {redact_uri(model)} is a {archs or 'model of unknown architecture'}, "
                             "not a *ForSequenceClassification reward model")
    if labels not in (1, None):
        raise errors.UsageError(f"--model {redact_uri(model)} has {labels} labels; a reward model has one")


def resolve_backend(spark: SparkSession, backend: str) -> str:
    if backend != "auto":
        return backend
    gpus = spark.sparkContext.getConf().get("spark.task.resource.gpu.amount", "0")
    return "vllm" if float(gpus or 0) > 0 else "transformers"


# ---------------------------------------------------------------------------------------------
# Pure transformations


def score_rows(df: DataFrame, udf, text_col: str, response_col: str | None = None) -> DataFrame:
    """``df`` plus ``_score``: the UDF's struct of score, score_error, n_tokens and truncated."""
    args = [F.col(text_col)] + ([F.col(response_col)] if response_col else [])
    return df.withColumn("_score", udf(*args))


def final_rows(scored: DataFrame) -> DataFrame:
    """Every input column plus ``score`` and ``score_error``."""
    cols = [c for c in scored.columns if c != "_score"]
    return scored.select(*cols, F.col("_score.score").alias("score"),
                         F.col("_score.score_error").alias("score_error"))


COUNTS = ("rows", "scored", "truncated", "tokens", "tokens_sq", "max_tokens", *(f"err_{r}" for r in REASONS))
# Counts that markers of older versions lack: merged as None unless every chunk has them.
NEWER_COUNTS = ("tokens_sq",)


def observed_metrics(scored: DataFrame, obs: Observation) -> DataFrame:
    """Counts and tokens (``COUNTS``), collected by the write itself."""
    s = F.col("_score")
    err = s["score_error"]
    reason = F.split(err, ":")[0]
    metrics: list[Column] = [
        F.count(F.lit(1)).alias("rows"),
        _count(err.isNull()).alias("scored"),
        _count(s["truncated"]).alias("truncated"),
        F.sum(s["n_tokens"]).alias("tokens"),
        # The attention term of the FLOPs (promptscore.sizing): the sum of each row's tokens squared.
        F.sum(s["n_tokens"].cast("long") * s["n_tokens"].cast("long")).alias("tokens_sq"),
        F.max(s["n_tokens"]).alias("max_tokens"),
    ]
    metrics += [_count(reason == r).alias(f"err_{r}") for r in REASONS]
    return scored.observe(obs, *metrics)


def merge_counts(counts: list[dict]) -> dict:
    """The counts of several chunks as one (sums; the largest ``max_tokens``; a count of
    ``NEWER_COUNTS`` that any chunk lacks, as markers of older versions do, is None)."""
    out = {k: 0 for k in COUNTS}
    out["max_tokens"] = None
    for c in counts:
        for k in COUNTS:
            v = c.get(k)
            if k in NEWER_COUNTS and k not in c:
                out[k] = None
            if v is None or out[k] is None and k in NEWER_COUNTS:
                continue
            if k == "max_tokens":
                out[k] = v if out[k] is None else max(out[k], v)
            else:
                out[k] += int(v)
    return out


def score_stats(spark: SparkSession, parts: str) -> dict:
    """Mean, quantiles and a 30-bin histogram of the ``score`` column of the Parquet files in
    ``parts`` (a read of that one column)."""
    df = spark.read.schema("score float").parquet(hadoop.escape_glob(parts))
    row = df.agg(
        F.avg("score").alias("mean"),
        F.to_json(F.percentile_approx("score", list(QUANTILES))).alias("quantiles"),
        F.to_json(F.histogram_numeric("score", F.lit(30))).alias("histogram"),
    ).collect()[0]
    return row.asDict()


# ---------------------------------------------------------------------------------------------
# The job


class _ListParam(AccumulatorParam):
    def zero(self, value):
        return []

    def addInPlace(self, a, b):
        a.extend(b)
        return a


@dataclass
class ScorePlan:
    """What the job settled before scoring: the model, the engine, the input, the fingerprint."""

    config: dict
    manifest: list[tuple[str, int]] | None
    engine: EngineSpec
    df: DataFrame
    basis: dict
    fp: str
    input_rows: int


@dataclass
class ScoreResult:
    """What the chunk writes committed (this run's and the reused ones) and what they observed."""

    metrics: dict
    tasks: list[dict]
    write_s: float
    output_files: list[files.File]
    resume: dict = field(default_factory=dict)
    this_run: dict = field(default_factory=dict)


def plan_score(spark: SparkSession, opts: ScoreOptions) -> ScorePlan:
    """Check the model and the input columns; choose the backend; fingerprint the model and the
    options. Writes nothing."""
    config, manifest, engine, df = check_inputs(spark, opts)
    digest = fingerprint.model_digest(spark, opts.model, manifest, opts.cache_dir,
                                      note=lambda text: cli.print_err(f"score: {text}"))
    basis = fingerprint.score_basis(digest, engine.backend,
                                    opts.template, opts.text_col, opts.response_col, engine, opts.out.compression,
                                    df.schema.json())
    return ScorePlan(config, manifest, engine, df, basis, fingerprint.fingerprint(basis), 0)


def check_inputs(spark: SparkSession, opts: ScoreOptions) -> tuple[dict, list[tuple[str, int]] | None,
                                                                   EngineSpec, DataFrame]:
    """Check the model (its config.json, and that its weights files are there and their headers
    read: ``model_files``) and the input columns and choose the backend: the model's config, its
    manifest (for a URI), the engine and the input. Reads no weights; writes nothing."""
    from pyspark.errors import AnalysisException

    config, manifest = model_manifest(spark, opts.model)
    check_model(config, opts.model)
    model_files.check_weights(spark, opts.model, manifest)
    engine = dataclasses.replace(opts.engine, backend=resolve_backend(spark, opts.engine.backend))
    try:
        df = spark.read.parquet(*opts.inputs)
    except AnalysisException as e:
        raise errors.UsageError(f"cannot read --input as Parquet: {redact_uri(str(e).strip().splitlines()[0])}") from None
    for col, flag in ((opts.text_col, "--text-col"), (opts.response_col, "--response-col")):
        if col is None:
            continue
        if col not in df.columns:
            raise errors.UsageError(f"{flag} {col!r} is not a column of the input (columns: {', '.join(df.columns)})")
        if not isinstance(df.schema[col].dataType, StringType):
            raise errors.UsageError(f"{flag} {col!r} is {df.schema[col].dataType.simpleString()}, not string")
    clash = [c for c in ("score", "score_error") if c in df.columns]
    if clash:
        raise errors.UsageError(f"the input already has column(s) {', '.join(clash)}; drop or rename them first")
    return config, manifest, engine, df


def score_slots(spark: SparkSession) -> int:
    """Tasks the cluster runs at once for this job: GPUs (executors x GPUs per executor / GPUs
    per task) under GPU scheduling, as many as the configuration says; else Spark's default
    parallelism."""
    sc = spark.sparkContext
    conf = sc.getConf()
    task_gpus = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
    if task_gpus > 0:
        per = max(1, int(float(conf.get("spark.executor.resource.gpu.amount", "1") or 1) // task_gpus))
        key = ("spark.dynamicAllocation.maxExecutors" if conf.get("spark.dynamicAllocation.enabled", "false") == "true"
               else "spark.executor.instances")
        try:
            executors = int(conf.get(key, "0") or 0)
        except ValueError:
            executors = 0
        if 0 < executors < 100_000:
            return executors * per
    return max(1, sc.defaultParallelism)


def _conf_int(spark: SparkSession, key: str, default: int) -> int:
    raw = spark.conf.get(key, None)
    if raw in (None, ""):
        return default
    try:
        value = cli.parse_size(raw) if key == pieces.MAX_CHUNK_BYTES_CONF else int(raw)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise errors.UsageError(f"{key} must be a positive number, got {raw!r}") from None
    if value < 1:
        raise errors.UsageError(f"{key} must be a positive number, got {raw!r}")
    return value


class ScoreProgress:
    """The numbers behind the progress line: rows of committed chunks (this run's and reused
    ones) plus the rows whose scores have come back in the chunks being written, as their tasks
    report them (``progress.StatusServer``; without it, the rows the Python workers handed back
    to Spark, which lag). While no row of this run is scored yet and engines are starting, the
    line says so instead; the rate and ETA count scored rows only."""

    def __init__(self, spark: SparkSession, total: int, chunks: int, resumed_rows: int, resumed_chunks: int,
                 status: progress.StatusServer | None = None):
        self.spark, self.total, self.chunks = spark, total, chunks
        self.done_rows, self.done_chunks = resumed_rows, resumed_chunks
        self.resumed_rows = resumed_rows
        self.status = status
        self.running: set[str] = set()
        self.lock = threading.Lock()
        self.rate = progress.Rate()
        self._live: progress.LiveRows | None = None

    def begin(self, group: str) -> None:
        if self.status is not None:
            self.status.open(group)
        with self.lock:
            self.running.add(group)

    def end(self, group: str, rows: int | None) -> None:
        with self.lock:
            self.running.discard(group)
            if rows is not None:
                self.done_rows += rows
                self.done_chunks += 1
            if self.status is not None:
                self.status.close(group)
        if self._live is not None:
            self._live.forget(group)

    def rows_now(self) -> int:
        """Rows of committed chunks plus rows scored so far in the running ones."""
        with self.lock:
            done, running = self.done_rows, list(self.running)
            live = 0
            for group in running:
                reported = self.status.rows(group) if self.status is not None else 0
                live += max(reported, self._handed_back(group))
        return min(self.total, done + live) if self.total else done + live

    def _handed_back(self, group: str) -> int:
        try:
            if self._live is None:
                self._live = progress.LiveRows(self.spark)
            return self._live.node_rows(group, "ArrowEvalPython")
        except Exception:  # noqa: BLE001 - the status store of a job that just ended
            return 0

    def line(self) -> str:
        now = self.rows_now()
        scored = now - self.resumed_rows
        # The rate starts with the first scored row: an engine's start is no part of it.
        rate = self.rate.add(time.monotonic(), scored) if scored > 0 else None
        engines = self.status.engine_states() if self.status is not None else None
        chunks = f"chunks {self.done_chunks:,} / {self.chunks:,} done"
        rows = f"{now:,} / {self.total:,} rows scored"
        if engines and engines["starting"] and not scored:
            n = engines["starting"] + engines["ready"]
            return (f"score: engines starting ({engines['starting']} of {n}), "
                    f"{progress.duration(engines['starting_s'])} so far; {rows}; {chunks}")
        if engines and engines["preparing"] and not engines["ready"] and not scored:
            return (f"score: tasks preparing ({engines['preparing']}: model files, tokenizer), "
                    f"{progress.duration(engines['preparing_s'])} so far; {rows}; {chunks}")
        pct = f"{100 * now / self.total:.1f}%" if self.total else "-"
        resumed = f", {self.resumed_rows:,} resumed" if self.resumed_rows else ""
        if engines is None:
            state = "no live engine status"
        elif not self.status.heard:
            state = "no task has reported yet"
        else:
            state = f"{engines['ready']} engine(s) scoring"
            if engines["starting"]:
                state += f", {engines['starting']} starting ({progress.duration(engines['starting_s'])} so far)"
        return (f"score: {now:,} / {self.total:,} rows scored ({pct}){resumed}, "
                f"{rate or 0:,.0f} rows/s, ETA {progress.duration(progress.eta(now, self.total, rate))}; "
                f"{state}; {chunks}")


def execute_score(spark: SparkSession, opts: ScoreOptions, plan: ScorePlan, out: output.Output,
                  pcs: pieces.Pieces, rp: pieces.ResumePlan) -> ScoreResult:
    """Score every chunk not committed yet into the pieces (several at a time), then gather the
    counts of all of them and list the output files."""
    from udfs.reward import ScoreSpec, make_udf

    interval = progress.interval_s(spark)
    status = progress.StatusServer.for_session(spark) if interval > 0 and rp.todo else None
    spec = ScoreSpec(engine=plan.engine, template=opts.template, model_manifest=plan.manifest,
                     cache_dir=opts.cache_dir,
                     max_rows_in_flight=_conf_int(spark, MAX_ROWS_IN_FLIGHT_CONF, ScoreSpec.max_rows_in_flight),
                     status_address=status.address if status else None, status_token=status.token if status else None)
    tasks_acc = spark.sparkContext.accumulator([], _ListParam())
    udf = make_udf(spec, tasks_acc, with_response=opts.response_col is not None)
    total_bytes = sum(c.bytes for c in rp.todo) or 1
    resumed_rows = sum(int(m.counts.get("rows", 0)) for m in rp.reused)
    state = ScoreProgress(spark, plan.input_rows, len(rp.reused) + len(rp.todo), resumed_rows, len(rp.reused),
                          status)
    markers: list[pieces.Marker] = []
    cancel = threading.Event()

    def score_chunk(chunk: pieces.Chunk) -> None:
        if cancel.is_set():
            return
        paths = [hadoop.encoded_uri(spark, f.path) for f in chunk.files]
        df = plan.df.where(F.col("_metadata.file_path").isin(paths))
        if opts.partitions:
            df = df.repartition(max(1, round(opts.partitions * chunk.bytes / total_bytes)))
        obs = Observation(f"chunk-{chunk.id}-{out.run_id}")
        group = f"{output.new_group('score')}-{chunk.id}"
        state.begin(group)
        rows = None
        try:
            start = time.monotonic()
            hadoop.delete(spark, pcs.tmp(chunk))
            output.write_parquet(spark, final_rows(observed_metrics(score_rows(df, udf, opts.text_col,
                                                                               opts.response_col), obs)),
                                 pcs.tmp(chunk), opts.out.compression, group)
            counts = {k: obs.get[k] for k in COUNTS}
            out.verify_lock()  # a run whose lock was taken over commits nothing more
            marker = pcs.commit(chunk, out.run_id, counts, time.monotonic() - start)
            markers.append(marker)
            rows = int(counts["rows"])
        finally:
            state.end(group, rows)
        publish.pause_point("chunk-committed")

    start = time.monotonic()
    concurrency = _conf_int(spark, pieces.CONCURRENT_CONF, score_slots(spark))
    if rp.todo:
        try:
            with progress.Reporter(state.line, interval), \
                    ThreadPoolExecutor(max_workers=min(concurrency, len(rp.todo)),
                                       thread_name_prefix="promptscore-chunk") as pool:
                futures = [pool.submit(score_chunk, c) for c in rp.todo]
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f for f in finished if f.exception() is not None), None)
                if failed is not None:
                    cancel.set()
                    for f in futures:
                        f.cancel()
                    for group in list(state.running):
                        spark.sparkContext.cancelJobGroup(group)
                    wait(futures)
                    raise failed.exception()
        finally:
            if status is not None:
                status.shutdown()
    write_s = time.monotonic() - start
    tasks = sorted(tasks_acc.value, key=lambda t: (t["partition"] is None, t["partition"], t["attempt"]))
    every = rp.reused + markers
    metrics = merge_counts([m.counts for m in every])
    this_run = merge_counts([m.counts for m in markers])
    resume = {
        "fingerprint": plan.fp, "chunks": len(every), "chunks_resumed": len(rp.reused),
        "chunks_scored": len(markers), "resumed_rows": resumed_rows, "chunks_dropped": rp.dropped,
        "orphan_files_removed": rp.orphans, "concurrent_chunks": concurrency,
        "chunk_bytes": rp.target_bytes, "basis": {k: v for k, v in plan.basis.items() if k != "schema"},
    }
    return ScoreResult(metrics, tasks, write_s, files.list_data_files(spark, pcs.parts), resume, this_run)


def build_report(opts: ScoreOptions, plan: ScorePlan, result: ScoreResult, stats: dict, header: dict,
                 spark_info: dict, phases: dict[str, float]) -> dict:
    """The job's report (pure: everything comes from the plan, the result and the stats)."""
    m = result.metrics
    rows, scored_n = int(m["rows"]), int(m["scored"] or 0)
    errors = {r: int(m[f"err_{r}"] or 0) for r in REASONS if m[f"err_{r}"]}
    error_rows = rows - scored_n
    bad_fraction = error_rows / rows if rows else 0.0
    tokens = int(m["tokens"] or 0)
    engines = engine_summaries(result.tasks)
    quantiles = json.loads(stats["quantiles"]) if stats.get("quantiles") else None
    histogram = [[b["x"], b["y"]] for b in json.loads(stats["histogram"])] if stats.get("histogram") else []
    write_s = result.write_s
    run_rows, run_tokens = int(result.this_run.get("rows") or 0), int(result.this_run.get("tokens") or 0)
    report = {
        **header,
        "status": "too_many_errors" if bad_fraction > opts.max_bad_fraction else "ok",
        "model": redact_uri(opts.model),
        "architecture": (plan.config.get("architectures") or [None])[0],
        "backend": plan.engine.backend,
        "template": opts.template,
        "text_col": opts.text_col,
        "response_col": opts.response_col,
        "engine": {k: v for k, v in plan.engine.__dict__.items() if k != "model_dir"},
        "rows": rows,
        "input_rows": plan.input_rows,
        "resumed_rows": result.resume.get("resumed_rows", 0),
        "scored": scored_n,
        "error_rows": error_rows,
        "errors": errors,
        "bad_fraction": round(bad_fraction, 8),
        "max_bad_fraction": opts.max_bad_fraction,
        "truncated": int(m["truncated"] or 0),
        "tokens": tokens,
        "max_tokens": m["max_tokens"],
        # Rates of this run's own scoring: resumed rows took no time here.
        "prompts_per_s": round(run_rows / write_s, 2) if write_s and run_rows else None,
        "tokens_per_s": round(run_tokens / write_s, 1) if write_s and run_rows else None,
        "engines": engines,
        "engine_start_s": max((e["start_s"] or 0 for e in engines), default=None),
        # Seconds the engines spent computing (GPU seconds with vLLM), summed over engines.
        "engine_busy_s": round(sum(e["busy_s"] or 0 for e in engines), 3),
        "engine_idle_s": round(sum(e["idle_s"] or 0 for e in engines), 3),
        # The throughput model's prediction for this run's rows and tokens beside what it took.
        "estimate": score_plan.predicted_vs_actual(plan.config, result.this_run, engines, write_s,
                                                plan.engine.tensor_parallel_size),
        "score_mean": stats.get("mean"),
        "score_quantiles": dict(zip((f"p{int(q * 100)}" for q in QUANTILES), quantiles)) if quantiles else None,
        "score_histogram": histogram,
        "histogram_png": None,
        "resume": result.resume,
        "tasks": result.tasks,
        "output_files": len(result.output_files),
        "output_bytes": sum(f.size for f in result.output_files),
        "phase_s": phases,
        **spark_info,
        "elapsed_s": None,
    }
    return report


def run_score(spark: SparkSession, opts: ScoreOptions) -> dict:
    """Run the whole job; return the report. Raises UsageError / DataQualityError."""
    if opts.compare_sample:
        from promptscore import compare

        return compare.run_compare(spark, opts)
    if opts.plan:
        from promptscore import score_plan

        return score_plan.run_plan(spark, opts)
    started = time.monotonic()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clock = output.Phases()
    output.check_target(spark, opts.out, opts.inputs)
    plan = plan_score(spark, opts)
    out = output.open_output(spark, opts.out, opts.inputs, keep=pieces.keep_only(plan.fp), job="score")
    try:
        pcs = pieces.Pieces(spark, out.publisher.work, plan.fp)
        pcs.prepare(plan.basis)
        out.publisher.adopt_staging(pcs.parts)
        files = pieces.list_input_files(spark, plan.df)
        target = pieces.chunk_bytes(sum(f.size for f in files), score_slots(spark),
                                    _conf_int(spark, pieces.CHUNKS_PER_SLOT_CONF, pieces.DEFAULT_CHUNKS_PER_SLOT),
                                    _conf_int(spark, pieces.MAX_CHUNK_BYTES_CONF, pieces.DEFAULT_MAX_CHUNK_BYTES))
        rp = pcs.plan(files, target)
        plan.input_rows = plan.df.count()
        clock.lap("plan")
        result = execute_score(spark, opts, plan, out, pcs, rp)
        if result.metrics["rows"] != plan.input_rows:
            raise RuntimeError(f"the chunks hold {result.metrics['rows']:,} rows but the input has "
                               f"{plan.input_rows:,}: the input changed during the run; run the same command again")
        clock.lap("write")
        stats = score_stats(spark, pcs.parts) if result.output_files else {}
        clock.lap("stats")
        header = output.report_header("score", "ok", started_at, opts.inputs, out, opts.out)
        spark_info = {"spark_version": spark.version, "spark_master": spark.sparkContext.master}
        report = build_report(opts, plan, result, stats, header, spark_info, clock.phases)
        png = histogram_png(report["score_histogram"], f"{report['rows']:,} rows, {report['scored']:,} scored; "
                            f"model {os.path.basename(opts.model.rstrip('/'))}")
        if png is not None:
            hadoop.write_bytes(spark, f"{out.staging}/{HISTOGRAM_PNG}", png)
            report["histogram_png"] = redact_uri(f"{out.target}/{HISTOGRAM_PNG}")
        report["elapsed_s"] = round(time.monotonic() - started, 3)
        report["summary"] = summary_line(report)
        output.finish(spark, out, report, opts.out.report, ok=report["status"] == "ok")
    except BaseException:
        out.publisher.discard()
        raise
    if report["status"] != "ok":
        raise errors.DataQualityError(
            f"{report['error_rows']:,} of {report['rows']:,} rows got no score ({report['bad_fraction']:.4%} > "
            f"--max-bad-fraction {opts.max_bad_fraction:g}): {report['errors']}; see score_error in the output",
            report)
    return report


def engine_summaries(tasks: list[dict]) -> list[dict]:
    """One entry per engine the tasks used: its device, start seconds, its compile cache (where,
    and whether an engine of the same spec had started with it before), tasks, and the seconds it
    spent computing (``busy_s``) and waiting for rows (``idle_s``) between the first of these
    tasks' connections and the last one's end. A high ``idle_s`` means the engine waited on Spark
    (reads, tokenizing): give the executor more task slots per GPU."""
    by_engine: dict[tuple, list[dict]] = {}
    for t in tasks:
        if t.get("engine_pid") is not None:
            by_engine.setdefault((t["engine_key"], t["engine_pid"]), []).append(t)
    out = []
    for (key, pid), spans in by_engine.items():
        e = {"key": key, "pid": pid, "device": spans[0]["engine_device"], "start_s": spans[0]["engine_start_s"],
             "cache_dir": spans[0].get("engine_cache_dir"), "cache_warm": spans[0].get("engine_cache_warm"),
             "tasks": len(spans)}
        for name in ("busy", "idle"):
            starts = [t[f"engine_{name}_start_s"] for t in spans if t.get(f"engine_{name}_start_s") is not None]
            ends = [t[f"engine_{name}_s"] for t in spans if t.get(f"engine_{name}_s") is not None]
            e[f"{name}_s"] = round(max(ends) - min(starts), 3) if starts and ends else None
        out.append(e)
    return out


def histogram_png(histogram: list[list[float]], title: str) -> bytes | None:
    """A bar chart of the observed score histogram, as PNG bytes (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    if histogram:
        xs = [h[0] for h in histogram]
        width = (max(xs) - min(xs)) / max(1, len(xs) - 1) * 0.9 if len(xs) > 1 else 0.1
        ax.bar(xs, [h[1] for h in histogram], width=width or 0.1, color="#3b7dd8")
    ax.set_xlabel("score (raw logit)")
    ax.set_ylabel("rows")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def summary_line(r: dict) -> str:
    """The one line the job prints on stdout."""
    rate = f"{r['prompts_per_s']:,.1f} prompts/s" if r["prompts_per_s"] else "-"
    resumed = f" ({r['resumed_rows']:,} resumed from an earlier run)" if r.get("resumed_rows") else ""
    return (f"score: {r['rows']:,} rows{resumed} -> {r['scored']:,} scored, {r['error_rows']:,} not "
            f"({', '.join(f'{k} {v:,}' for k, v in r['errors'].items()) or 'no errors'}), "
            f"{r['truncated']:,} truncated; {r['backend']} on {len(r['engines'])} engine(s), {rate}, "
            f"{r['output_files']} files ({human_bytes(r['output_bytes'])}); {r['elapsed_s']:.1f} s; "
            f"report {r['output']}/_report.json")


def job(spark: SparkSession, args: argparse.Namespace) -> dict:
    """Entry for ``cli.run``: flags -> options -> run."""
    return run_score(spark, options_from_args(args))


def _count(cond: Column) -> Column:
    return F.sum(F.when(cond, 1).otherwise(0))
