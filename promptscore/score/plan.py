"""What the score job settles before scoring: the model and input checked, the backend chosen, the
fingerprint of everything that changes a score, and the task slots and chunk settings."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession

from promptscore import cli, errors
from promptscore.score import fingerprint, pieces
from promptscore.score.model import check_inputs
from promptscore.score.options import ScoreOptions
from udfs.engines import EngineSpec


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



def plan_score(spark: SparkSession, opts: ScoreOptions) -> ScorePlan:
    """Check the model and the input columns; choose the backend; fingerprint the model and the
    options. Writes nothing."""
    config, manifest, engine, df = check_inputs(spark, opts)
    prestart_engines(spark, opts, engine, manifest)
    digest = fingerprint.model_digest(spark, opts.model, manifest, opts.cache_dir,
                                      note=lambda text: cli.print_err(f"score: {text}"))
    basis = fingerprint.score_basis(digest, engine.backend,
                                    opts.template, opts.text_col, opts.response_col, engine, opts.out.compression,
                                    df.schema.json())
    return ScorePlan(config, manifest, engine, df, basis, fingerprint.fingerprint(basis), 0)



def prestart_engines(spark: SparkSession, opts: ScoreOptions, engine: EngineSpec,
                     manifest: list[tuple[str, int]] | None) -> None:
    """Start the engine hosts now, while the driver plans, in a Spark job of their own
    (``udfs.prestart``), unless ``spark.promptscore.score.prestart`` is false."""
    from udfs import prestart

    value = (spark.conf.get(prestart.CONF, "true") or "true").strip().lower()
    if value not in ("true", "false"):
        raise errors.UsageError(f"{prestart.CONF} must be true or false, not {value!r}")
    if value == "true":
        prestart.start_engines(spark, engine, manifest, opts.cache_dir, score_slots(spark),
                               note=lambda text: cli.print_err(f"score: {text}"))


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


def conf_int(spark: SparkSession, key: str, default: int) -> int:
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

