"""The figures of ``jobs/score.py --plan`` (``dryrun``): what a score run would process and how long
it would take; and, for real runs, the same prediction beside what the run took.

The plan reads the input once: it counts every row, and tokenizes every row (or a random
fraction ``--plan-sample F`` of them) on the executors with the model's tokenizer and template
(``udfs.token_counts``), in the same Spark job. From that come the token total (exact, or the
total rows x the sample's mean tokens per row, with its 95% error 1.96 x sd / sqrt(n) x rows),
the length distribution, and the share of rows ``--max-model-len`` would cut.

The estimate is ``promptscore.sizing``'s throughput model for this model's shape (from its
config.json): FLOPs per prompt (2 x weights x tokens plus the attention term) at the share of the
GPU's data-sheet peak measured for that prompt length, or, with ``--calibrate N``, the rate one
engine reached scoring N sampled rows of this input with these options. Beside it, the physical
limit: every GPU at its peak.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from promptscore import errors, sizing
from promptscore.frames import list_accumulator
from promptscore.io import hadoop
from promptscore.io.reports import redact_uri
from promptscore.score import fingerprint
from promptscore.score.options import ScoreOptions
from promptscore.score.rows import score_rows
from promptscore.score.tasks import engine_summaries
from udfs.uris import has_scheme

SAMPLE_SEED = 20261126
Z95 = 1.96
DEFAULT_GPU = "H100"


# ---------------------------------------------------------------------------------------------
# The tokenizer, where the executors find it


def tokenizer_files(manifest: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The files of a model's manifest that the tokenizer may need: everything but weights,
    hidden files and files over 64 MB (config, tokenizer, vocabulary, merges, chat template)."""
    return [(rel, size) for rel, size in manifest
            if not rel.endswith(fingerprint.WEIGHT_SUFFIXES) and size <= fingerprint.WHOLE_BYTES
            and not any(part.startswith(".") for part in rel.split("/"))]


def ship_tokenizer(spark: SparkSession, model: str, manifest: list[tuple[str, int]] | None) -> tuple[str, str | None]:
    """A model reference the executors can read the tokenizer from, and the archive shipped (None
    for a local ``--model``, used as is: it is on every node, as for a run). For a URI, the driver
    copies the tokenizer's files (no weights) into a zip archive and ships it with
    ``SparkContext.addArchive`` (Spark's file server: any cluster manager; a directory could be
    added as such only in local mode). The archive lies in the driver's SparkFiles directory,
    which Spark removes when the session stops: an executor that joins later fetches it from there."""
    from pyspark import SparkFiles

    from udfs.token_counts import SPARK_FILES

    if not has_scheme(model):
        return model, None
    files = tokenizer_files(manifest or [])
    if not any(os.path.basename(rel).startswith(("tokenizer", "vocab", "merges", "spiece", "sentencepiece"))
               for rel, _ in files):
        raise errors.UsageError(f"--model {redact_uri(model)}: no tokenizer files there (tokenizer.json, "
                             "tokenizer_config.json, vocab, merges)")
    shipped = os.path.join(SparkFiles.getRootDirectory(), "promptscore-tokenizers")
    os.makedirs(shipped, exist_ok=True)
    work = tempfile.mkdtemp(prefix="promptscore-tokenizer-")
    try:
        base = model.rstrip("/")
        for rel, _ in files:
            target = os.path.join(work, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(hadoop.read_bytes(spark, f"{base}/{rel}"))
        archive = shutil.make_archive(os.path.join(shipped, os.path.basename(work)), "zip", root_dir=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    spark.sparkContext.addArchive(archive)
    return SPARK_FILES + os.path.basename(archive), archive


# ---------------------------------------------------------------------------------------------
# Counting


def count_tokens(df: DataFrame, udf, text_col: str, response_col: str | None, max_model_len: int,
                 fraction: float, seed: int = SAMPLE_SEED) -> dict:
    """One Spark job over ``df``: every row counted, the rows of a ``fraction`` sample (all rows
    at 1) tokenized by ``udf`` (a row's untruncated token count, null when unscorable), and the
    sample's sums, moments and length quantiles."""
    cols = [text_col] + ([response_col] if response_col else [])
    d = df.select(*cols)
    d = d.withColumn("_s", F.rand(seed) < F.lit(fraction) if fraction < 1 else F.lit(True))
    d = d.withColumn("_n", udf(*[F.when(F.col("_s"), F.col(c)) for c in cols]))
    s, n = F.col("_s"), F.col("_n")
    # A scored row keeps min(n, max_model_len) tokens (least() alone would turn a null into the limit).
    kept = F.when(n.isNotNull(), F.least(n, F.lit(max_model_len))).cast("long")
    x = F.when(s, F.coalesce(kept, F.lit(0)))  # a sampled row's scored tokens (0 when unscorable)
    row = d.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(s, 1).otherwise(0)).alias("sampled"),
        F.count(n).alias("scorable"),
        F.sum(kept).alias("tokens"),
        F.sum(kept.cast("double") * kept.cast("double")).alias("tokens_sq"),
        F.sum(n).alias("tokens_untruncated"),
        F.stddev_samp(x).alias("tokens_sd"),
        F.avg(n).alias("length_mean"),
        F.percentile_approx(n, [0.5, 0.99]).alias("length_quantiles"),
        F.max(n).alias("length_max"),
        F.sum(F.when(n > max_model_len, 1).otherwise(0)).alias("truncated"),
    ).collect()[0]
    out = row.asDict()
    out["length_quantiles"] = list(out["length_quantiles"] or [None, None])
    return out


def token_figures(c: dict, fraction: float, max_model_len: int) -> dict:
    """The plan's figures from ``count_tokens``' aggregates (pure): exact at ``fraction`` 1; from
    a sample, every total is the rows times the sample's mean per row, and the token total has a
    95% error of 1.96 x sd / sqrt(n) x rows (sd over the n sampled rows, an unscorable row
    counting 0 tokens; without the finite-population correction, so it errs on the safe side)."""
    rows, n = int(c["rows"] or 0), int(c["sampled"] or 0)
    exact = fraction >= 1
    scale = rows / n if n else 0.0

    def total(v) -> float:
        return float(v or 0) * (1.0 if exact else scale)

    tokens = total(c["tokens"])
    if exact:
        error = 0.0
    elif n > 1 and c["tokens_sd"] is not None:
        error = Z95 * float(c["tokens_sd"]) / math.sqrt(n) * rows
    else:
        error = None  # fewer than two sampled rows: no error to state
    scorable = total(c["scorable"])
    truncated = total(c["truncated"])
    p50, p99 = c["length_quantiles"]
    return {
        "rows": rows,
        "sample_fraction": fraction,
        "sample_seed": None if exact else SAMPLE_SEED,
        "sampled_rows": n,
        "exact": exact,
        "scorable_rows": round(scorable),
        "unscorable_rows": round(total(n - int(c["scorable"] or 0)) if n else 0),
        "tokens": round(tokens),
        "tokens_error_95": None if error is None else round(error),
        "tokens_error_pct": (round(100 * error / tokens, 2) if tokens else 0.0) if error is not None else None,
        "tokens_untruncated": round(total(c["tokens_untruncated"])),
        "tokens_sq": total(c["tokens_sq"]),
        "max_model_len": max_model_len,
        "length_tokens": {
            "mean": round(float(c["length_mean"]), 1) if c["length_mean"] is not None else None,
            "p50": p50, "p99": p99, "max": c["length_max"],
        },
        "truncated_rows": round(truncated),
        "truncated_share": round(int(c["truncated"] or 0) / n, 6) if n else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# Calibrating


def calibrate(spark: SparkSession, opts: ScoreOptions, engine, manifest, df: DataFrame, rows: int,
              n: int) -> dict:
    """Score ``n`` rows sampled from ``df`` (of ``rows`` rows) on one engine, as a run would (the
    scoring UDF, these options), into Spark's ``noop`` sink; the rate is the tokens scored over
    the engine's busy seconds (its start left out)."""
    from udfs.reward import ScoreSpec, make_udf

    spec = ScoreSpec(engine=engine, template=opts.template, model_manifest=manifest, cache_dir=opts.cache_dir)
    acc = list_accumulator(spark)
    udf = make_udf(spec, acc, with_response=opts.response_col is not None)
    cols = [opts.text_col] + ([opts.response_col] if opts.response_col else [])
    sample = df.select(*cols)
    fraction = min(1.0, 2.0 * n / rows) if rows else 1.0
    if fraction < 1:
        sample = sample.sample(fraction=fraction, seed=SAMPLE_SEED)
    sample = sample.limit(n).coalesce(1)
    t0 = time.monotonic()
    score_rows(sample, udf, opts.text_col, opts.response_col) \
        .write.format("noop").mode("overwrite").save()
    seconds = time.monotonic() - t0
    return calibration_figures(acc.value, seconds, engine.tensor_parallel_size)


def calibration_figures(tasks: list[dict], seconds: float, gpus_per_engine: int = 1) -> dict:
    """What a calibration measured (pure): rows, tokens, the engine's busy and start seconds, its
    device, tokens per busy second and (``gpus_per_engine``: the tensor-parallel size) per GPU."""
    engines = engine_summaries(tasks)
    tokens = sum(int(t.get("tokens") or 0) for t in tasks)
    busy = sum(e["busy_s"] or 0 for e in engines)
    device = engines[0]["device"] if engines else None
    return {
        "rows": sum(int(t.get("rows") or 0) for t in tasks),
        "scored": sum(int(t.get("scored") or 0) for t in tasks),
        "tokens": tokens,
        "busy_s": round(busy, 3),
        "start_s": max((e["start_s"] or 0 for e in engines), default=None),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / busy, 1) if busy > 0 and tokens else None,
        "gpus_per_engine": max(1, gpus_per_engine),
        "tokens_per_s_per_gpu": round(tokens / busy / max(1, gpus_per_engine), 1) if busy > 0 and tokens else None,
        "device": device,
        "gpu": sizing.gpu_kind(device),
        "engines": len(engines),
    }


# ---------------------------------------------------------------------------------------------
# Estimating


def estimates(figures: dict, shape: sizing.ModelShape, gpus: int, gpu_type: str | None,
              calibration: dict | None) -> dict:
    """The estimate for ``gpus`` GPUs of ``gpu_type`` (default: the GPU the calibration ran on,
    else H100) and a FLOPs-scaled table for every GPU of ``sizing.GPU_PEAK_FLOPS`` (pure)."""
    rows, tokens, tokens_sq = figures["scorable_rows"], figures["tokens"], figures["tokens_sq"]
    rate = calibration.get("tokens_per_s_per_gpu") if calibration else None
    measured_on = calibration.get("gpu") if calibration else None
    gpu = gpu_type or measured_on or DEFAULT_GPU
    note = None
    if rate and measured_on and measured_on != gpu:
        rate = rate * sizing.GPU_PEAK_FLOPS[gpu] / sizing.GPU_PEAK_FLOPS[measured_on]
        note = (f"calibrated on {calibration['device']} ({measured_on}); scaled to {gpu} by the ratio of their "
                "peak FLOP/s")
    elif rate and not measured_on:
        note = (f"calibrated on {calibration['device'] or 'an unknown device'}, not a GPU of known peak: its rate "
                f"is taken as one {gpu}'s")
    elif calibration and not rate:
        note = "the calibration measured no rate (no row scored, or no engine time): the FLOPs model is used"
    main = sizing.score_estimate_from_sums(rows, tokens, tokens_sq, shape, gpu, gpus, rate or None)
    table = []
    for g, peak in sizing.GPU_PEAK_FLOPS.items():
        r = rate * peak / sizing.GPU_PEAK_FLOPS[gpu] if rate else None
        e = sizing.score_estimate_from_sums(rows, tokens, tokens_sq, shape, g, gpus, r)
        table.append({k: e[k] for k in ("gpu", "gpus", "tokens_per_s_per_gpu", "gpu_hours", "wall_s", "wall",
                                        "physical_limit_gpu_hours", "physical_limit_wall_s")})
    basis = (f"FLOPs-scaled: the calibrated {gpu} rate times each GPU's data-sheet peak over the {gpu}'s" if rate else
             "FLOPs-scaled: each GPU's data-sheet peak times the MFU measured on H100 (assumed for other GPUs)")
    return {"estimate": {**main, "note": note}, "estimate_by_gpu": table, "estimate_by_gpu_basis": basis}


def predicted_vs_actual(config: dict, counts: dict, engines: list[dict], write_s: float,
                        tensor_parallel_size: int = 1) -> dict:
    """A run's prediction by the throughput model (for the rows and tokens this run scored, on the
    GPUs its engines ran on) beside what it took (pure). ``predicted`` is None, with a
    ``reason``, where no GPU of known peak scored (CPU, an unknown card, all chunks resumed)."""
    rows = int(counts.get("scored") or 0)
    tokens = int(counts.get("tokens") or 0)
    tokens_sq = counts.get("tokens_sq")
    tp = max(1, tensor_parallel_size)
    busy = sum(e.get("busy_s") or 0 for e in engines)
    actual = {
        "rows": int(counts.get("rows") or 0), "scored": rows, "tokens": tokens, "engines": len(engines),
        "write_s": round(write_s, 3),
        "engine_start_s": max((e.get("start_s") or 0 for e in engines), default=None),
        "engine_busy_s": round(busy, 3),
        "engine_busy_gpu_hours": round(busy * tp / 3600, 4),
        "tokens_per_s_per_gpu": round(tokens / (busy * tp), 1) if busy > 0 and tokens else None,
    }
    devices = sorted({str(e.get("device")) for e in engines})
    kinds = {sizing.gpu_kind(d) for d in devices}
    shape = sizing.ModelShape.from_config(config)
    reason = None
    if not engines or not rows:
        reason = "no engine scored rows in this run (every chunk was resumed, or no row was scorable)"
    elif None in kinds:
        reason = (f"the engines ran on {', '.join(devices)}: no GPU of known peak FLOP/s to predict for "
                  f"(known: {', '.join(sizing.GPU_PEAK_FLOPS)})")
    elif len(kinds) > 1:
        reason = f"the engines ran on several kinds of GPU ({', '.join(sorted(kinds))})"
    elif not shape.params:
        reason = "the model's config.json gives no shape (hidden_size, num_hidden_layers)"
    out: dict = {"predicted": None, "reason": reason, "actual": actual}
    if reason is None:
        gpu = kinds.pop()
        est = sizing.score_estimate_from_sums(rows, tokens, float(tokens_sq), shape, gpu, len(engines) * tp)
        out["predicted"] = est
        out["actual_over_predicted"] = {
            "wall": round(write_s / est["wall_s"], 3) if est["wall_s"] else None,
            "gpu_hours": round(actual["engine_busy_gpu_hours"] / est["gpu_hours"], 3) if est["gpu_hours"] else None,
        }
        out["note"] = ("predicted: the engines' computing only; actual write_s also holds engine start, reading, "
                       "tokenizing and writing")
    return out
