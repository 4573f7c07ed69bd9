"""``jobs/score.py --plan``: what a score run would process and how long it would take, without
loading an engine or writing output (the figures: ``estimate``)."""

from __future__ import annotations

import time

from pyspark.sql import SparkSession

from promptscore import sizing
from promptscore.io import output
from promptscore.io.reports import Phases, now_iso, num, redact_uri, spark_info, write_report
from promptscore.score.estimate import calibrate, count_tokens, estimates, ship_tokenizer, token_figures
from promptscore.score.model import check_inputs
from promptscore.score.options import ScoreOptions
from promptscore.score.plan import score_slots


def run_plan(spark: SparkSession, opts: ScoreOptions) -> dict:
    """Check, count, tokenize (and calibrate); print the plan and write it with ``--report``.
    Writes no output and, without ``--calibrate``, loads no engine."""
    from udfs.token_counts import make_udf

    started = time.monotonic()
    started_at = now_iso()
    clock = Phases()
    target = output.check_target(spark, opts.out, opts.inputs) if opts.out.output else None
    config, manifest, engine, df = check_inputs(spark, opts)
    ref, _ = ship_tokenizer(spark, opts.model, manifest)
    clock.lap("check")
    udf = make_udf(ref, opts.template, with_response=opts.response_col is not None)
    counts = count_tokens(df, udf, opts.text_col, opts.response_col, engine.max_model_len, opts.plan_fraction)
    figures = token_figures(counts, opts.plan_fraction, engine.max_model_len)
    clock.lap("tokenize")
    calibration = None
    if opts.calibrate:
        calibration = calibrate(spark, opts, engine, manifest, df, figures["rows"], opts.calibrate)
        clock.lap("calibrate")
    gpus = opts.gpus or score_slots(spark)
    est = estimates(figures, sizing.ModelShape.from_config(config), gpus, opts.gpu_type, calibration)
    report = {
        "job": "score", "plan": True, "status": "ok", "started_at": started_at,
        "inputs": [redact_uri(i) for i in opts.inputs], "output": redact_uri(target) if target else None,
        "model": redact_uri(opts.model), "architecture": (config.get("architectures") or [None])[0],
        "backend": engine.backend, "template": opts.template, "text_col": opts.text_col,
        "response_col": opts.response_col,
        **figures,
        "gpus_source": "--gpus" if opts.gpus else "the Spark configuration (the GPUs a run would use)",
        **est,
        "calibration": calibration,
        **spark_info(spark),
        "phase_s": clock.phases, "elapsed_s": round(time.monotonic() - started, 3),
    }
    report["summary"] = summary_line(report)
    for line in plan_lines(report):
        print(line, flush=True)
    if opts.out.report:
        write_report(spark, report, None, opts.out.report)
    return report


def _tokens_text(r: dict) -> str:
    if r["exact"]:
        return f"{r['tokens']:,} tokens (exact)"
    if r["tokens_error_95"] is None:
        return f"~{r['tokens']:,} tokens (too few sampled rows to state an error)"
    return f"~{r['tokens']:,} ± {r['tokens_error_95']:,} tokens ({r['tokens_error_pct']:g}%, 95%)"


def plan_lines(r: dict) -> list[str]:
    """The lines the plan prints before its summary line (pure)."""
    sample = ("every row tokenized" if r["exact"] else
              f"{r['sampled_rows']:,} tokenized: --plan-sample {r['sample_fraction']:g}")
    length = r["length_tokens"]
    e = r["estimate"]
    lines = [
        f"rows: {r['rows']:,} ({sample}); {r['unscorable_rows']:,} unscorable (null or empty text)",
        f"tokens: {_tokens_text(r)} after --max-model-len {r['max_model_len']}; "
        f"{r['tokens_untruncated']:,} before",
        f"length (tokens per scorable row): mean {num(length['mean'], ',.1f')}, p50 {num(length['p50'], ',')}, "
        f"p99 {num(length['p99'], ',')}, max {num(length['max'], ',')}",
        f"truncated: {r['truncated_share']:.2%} of rows (~{r['truncated_rows']:,}) are longer than "
        f"--max-model-len {r['max_model_len']}",
    ]
    c = r.get("calibration")
    if c:
        lines.append(f"calibration: {c['rows']:,} rows, {c['tokens']:,} tokens on {c['device']} in "
                     f"{num(c['busy_s'], ',.2f')} s busy (engine start {num(c['start_s'], ',.1f')} s): "
                     f"{num(c['tokens_per_s'], ',.0f')} tokens/s")
    lines.append(f"estimate on {e['gpus']:,} x {e['gpu']}: {e['gpu_hours']:,} GPU-hours, wall {e['wall']} "
                 f"({num(e['tokens_per_s_per_gpu'], ',.0f')} tokens/s per GPU; {e['rate_source']}"
                 f"{'; MFU %g' % e['expected_mfu'] if e['expected_mfu'] else ''}); physical limit "
                 f"{e['physical_limit_gpu_hours']:,} GPU-hours, wall {e['physical_limit_wall']}")
    if e.get("note"):
        lines.append(f"note: {e['note']}")
    return lines


def summary_line(r: dict) -> str:
    """The plan's one line (pure)."""
    e = r["estimate"]
    err = "" if r["exact"] or r["tokens_error_pct"] is None else f" ±{r['tokens_error_pct']:g}%"
    return (f"score plan: {r['rows']:,} rows, {'' if r['exact'] else '~'}{r['tokens']:,} tokens{err} "
            f"({r['truncated_share']:.2%} truncated at {r['max_model_len']}) -> ~{e['gpu_hours']:,} GPU-hours, "
            f"~{e['wall']} on {e['gpus']:,} x {e['gpu']} (physical limit {e['physical_limit_wall']}); "
            f"{'calibrated' if r.get('calibration') and r['calibration'].get('tokens_per_s') else 'FLOPs model'}; "
            "nothing written")
