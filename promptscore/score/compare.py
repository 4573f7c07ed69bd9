"""``--compare-sample N``: a check to run before trusting cheaper engine options (``--quantization
fp8``, a smaller ``--dtype``): the same fixed sample of N rows scored with the options as given and
with the reference options (the same ones without ``--quantization``, with ``--compare-dtype``),
and how far apart the two sets of scores are.

The sample is the N rows whose (text, response) hash is smallest: the same rows on every run over
the same input, spread over all of it. Each side is one Spark job over the sample, so each side
starts its own engine on every GPU (the host of a GPU runs one spec at a time). Nothing is
written but the report (``--report``) and the summary line.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from promptscore.frames import list_accumulator
from promptscore.io.reports import now_iso, num, redact_uri, spark_info, write_report
from promptscore.score.model import check_inputs
from promptscore.score.options import ScoreOptions
from promptscore.score.plan import score_slots
from promptscore.score.rows import score_rows
from promptscore.score.tasks import engine_summaries

SEED = 20261125


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (ties get their mean rank); None
    for fewer than two pairs or a constant list."""
    if len(a) < 2:
        return None
    ra = pd.Series(a, dtype="float64").rank().to_numpy()
    rb = pd.Series(b, dtype="float64").rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_scores(got: list[float | None], ref: list[float | None]) -> dict:
    """How far ``got`` is from ``ref`` (pairs where both have a score)."""
    pairs = [(x, y) for x, y in zip(got, ref) if x is not None and y is not None
             and math.isfinite(x) and math.isfinite(y)]
    diffs = sorted(abs(x - y) for x, y in pairs)
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    pearson = float(np.corrcoef(xs, ys)[0, 1]) if len(pairs) > 1 and np.std(xs) > 0 and np.std(ys) > 0 else None
    return {
        "rows_compared": len(pairs),
        "rows_unscored": len(got) - len(pairs),
        "spearman": spearman(xs, ys),
        "pearson": pearson,
        "max_abs_diff": diffs[-1] if diffs else None,
        "median_abs_diff": diffs[len(diffs) // 2] if diffs else None,
        "mean_abs_diff": sum(diffs) / len(diffs) if diffs else None,
        "reference_std": float(np.std(ys)) if ys else None,
    }


def reference_engine(engine, compare_dtype: str | None):
    """The reference options: ``engine`` without quantization, with ``compare_dtype`` if given."""
    return dataclasses.replace(engine, quantization=None, dtype=compare_dtype or engine.dtype)


def run_compare(spark: SparkSession, opts: ScoreOptions) -> dict:
    """Score the sample both ways and report; writes no output."""
    from udfs.reward import ScoreSpec, make_udf

    started = time.monotonic()
    started_at = now_iso()
    # The checks of a run without its fingerprint: nothing is written, so nothing is reused.
    _, manifest, engine_spec, input_df = check_inputs(spark, opts)
    cols = [opts.text_col] + ([opts.response_col] if opts.response_col else [])
    key = F.xxhash64(F.lit(SEED), *[F.coalesce(F.col(c), F.lit("")) for c in cols])
    sample = input_df.select(*cols).withColumn("_key", key).orderBy("_key").limit(opts.compare_sample).toPandas()
    sample.insert(0, "_row", range(len(sample)))
    slots = score_slots(spark)
    df = spark.createDataFrame(sample.drop(columns=["_key"])).repartition(max(1, min(slots, len(sample))))
    sides = {"options": engine_spec, "reference": reference_engine(engine_spec, opts.compare_dtype)}
    scores: dict[str, list] = {}
    seconds: dict[str, float] = {}
    engines: dict[str, list] = {}
    for name, engine in sides.items():
        acc = list_accumulator(spark)
        spec = ScoreSpec(engine=engine, template=opts.template, model_manifest=manifest, cache_dir=opts.cache_dir)
        udf = make_udf(spec, acc, with_response=opts.response_col is not None)
        t0 = time.monotonic()
        got = (score_rows(df, udf, opts.text_col, opts.response_col)
               .select("_row", F.col("_score.score").alias("score")).toPandas().sort_values("_row"))
        seconds[name] = round(time.monotonic() - t0, 3)
        scores[name] = [None if pd.isna(v) else float(v) for v in got["score"]]
        engines[name] = engine_summaries(acc.value)
    result = compare_scores(scores["options"], scores["reference"])
    report = {
        "job": "score", "mode": "compare-sample", "status": "ok", "started_at": started_at,
        "inputs": [redact_uri(i) for i in opts.inputs], "model": redact_uri(opts.model),
        "backend": engine_spec.backend, "template": opts.template, "text_col": opts.text_col,
        "response_col": opts.response_col, "sample_rows": len(sample),
        "options": {k: v for k, v in dataclasses.asdict(sides["options"]).items() if k != "model_dir"},
        "reference": {k: v for k, v in dataclasses.asdict(sides["reference"]).items() if k != "model_dir"},
        **result,
        # Each side's job, engine start included (a small sample is mostly engine start).
        "seconds": seconds["options"], "reference_seconds": seconds["reference"],
        "engines": engines["options"], "reference_engines": engines["reference"],
        **spark_info(spark),
        "elapsed_s": round(time.monotonic() - started, 3),
    }
    report["summary"] = summary_line(report)
    if opts.out.report:
        write_report(spark, report, None, opts.out.report)
    return report


def _side(engine: dict) -> str:
    return engine.get("quantization") or engine.get("dtype") or "auto"


def summary_line(r: dict) -> str:
    """The one line the check prints on stdout."""
    return (f"score: compare-sample {r['sample_rows']:,} rows, {_side(r['options'])} vs {_side(r['reference'])}: "
            f"Spearman {num(r['spearman'], '.5f')}, max abs diff {num(r['max_abs_diff'], '.4g')}, "
            f"median {num(r['median_abs_diff'], '.4g')} (reference std {num(r['reference_std'], '.3g')}); "
            f"{r['rows_compared']:,} compared, {r['rows_unscored']:,} without a score on either side; "
            f"{r['seconds']:.1f} s vs {r['reference_seconds']:.1f} s; nothing written")
