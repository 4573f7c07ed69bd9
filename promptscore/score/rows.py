"""The score job's pure transformations: the UDF's column, the output's columns, the counts each
chunk's write observes, and the statistics of the ``score`` column."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from promptscore.frames import count_if
from promptscore.io import hadoop
from udfs.reasons import REASONS

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


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


def observed_metrics(scored: DataFrame, obs: Observation) -> DataFrame:
    """Counts and tokens (``COUNTS``), collected by the write itself."""
    s = F.col("_score")
    err = s["score_error"]
    reason = F.split(err, ":")[0]
    metrics: list[Column] = [
        F.count(F.lit(1)).alias("rows"),
        count_if(err.isNull()).alias("scored"),
        count_if(s["truncated"]).alias("truncated"),
        F.sum(s["n_tokens"]).alias("tokens"),
        # The attention term of the FLOPs (promptscore.sizing): the sum of each row's tokens squared.
        F.sum(s["n_tokens"].cast("long") * s["n_tokens"].cast("long")).alias("tokens_sq"),
        F.max(s["n_tokens"]).alias("max_tokens"),
    ]
    metrics += [count_if(reason == r).alias(f"err_{r}") for r in REASONS]
    return scored.observe(obs, *metrics)


def merge_counts(counts: list[dict]) -> dict:
    """The counts of several chunks as one (sums; the largest ``max_tokens``)."""
    out = {k: 0 for k in COUNTS}
    out["max_tokens"] = None
    for c in counts:
        for k in COUNTS:
            v = c.get(k)
            if v is None:
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

