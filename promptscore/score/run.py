"""The score job: a reward-model score for every row of a Parquet dataset.

The driver checks the model and the columns, builds the pandas UDF of ``udfs.reward`` and writes
every input column plus ``score`` (float, null when not scorable) and ``score_error`` (string,
null when scored). The input is cut into chunks of whole files (``pieces``), each
scored by a Spark write of its own and committed when done, several at a time from driver
threads, so that a rerun of the same command after a kill resumes: it reuses every chunk an
earlier run with the same fingerprint (``fingerprint``) committed. Counts and token
totals are observed metrics of each chunk's write; score quantiles and the histogram come from
one read of the ``score`` column at the end; each task's timings come back through an
accumulator. A progress line goes to stderr every few seconds (``progress``).
"""

from __future__ import annotations

import argparse
import os
import time

from pyspark.sql import SparkSession

from promptscore import errors
from promptscore.io import hadoop, output
from promptscore.io.reports import Phases, now_iso, redact_uri, spark_info
from promptscore.score import pieces
from promptscore.score.options import ScoreOptions
from promptscore.score.plan import conf_int, plan_score, score_slots
from promptscore.score.report import HISTOGRAM_PNG, histogram_png, score_report, summary_line
from promptscore.score.rows import score_stats
from promptscore.score.write import execute_score


def run_score(spark: SparkSession, opts: ScoreOptions) -> dict:
    """Run the whole job; return the report. Raises UsageError / DataQualityError."""
    if opts.compare_sample:
        from promptscore.score.compare import run_compare

        return run_compare(spark, opts)
    if opts.plan:
        from promptscore.score.dryrun import run_plan

        return run_plan(spark, opts)
    started = time.monotonic()
    started_at = now_iso()
    clock = Phases()
    output.check_target(spark, opts.out, opts.inputs)
    plan = plan_score(spark, opts)
    out = output.open_output(spark, opts.out, opts.inputs, keep=pieces.keep_only(plan.fp), job="score")
    try:
        pcs = pieces.Pieces(spark, out.publisher.work, plan.fp)
        pcs.prepare(plan.basis)
        out.publisher.adopt_staging(pcs.parts)
        files = pieces.list_input_files(spark, plan.df)
        target = pieces.chunk_bytes(sum(f.size for f in files), score_slots(spark),
                                    conf_int(spark, pieces.CHUNKS_PER_SLOT_CONF, pieces.DEFAULT_CHUNKS_PER_SLOT),
                                    conf_int(spark, pieces.MAX_CHUNK_BYTES_CONF, pieces.DEFAULT_MAX_CHUNK_BYTES))
        rp = pcs.plan(files, target)
        plan.input_rows = pieces.input_rows(spark, plan.df, rp)
        clock.lap("plan")
        result = execute_score(spark, opts, plan, out, pcs, rp)
        if result.metrics["rows"] != plan.input_rows:
            raise RuntimeError(f"the chunks hold {result.metrics['rows']:,} rows but the input has "
                               f"{plan.input_rows:,}: the input changed during the run; run the same command again")
        clock.lap("write")
        stats = score_stats(spark, pcs.parts) if result.output_files else {}
        clock.lap("stats")
        header = output.report_header("score", "ok", started_at, opts.inputs, out, opts.out)
        report = score_report(opts, plan, result, stats, header, spark_info(spark), clock.phases)
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



def job(spark: SparkSession, args: argparse.Namespace) -> dict:
    """Entry for ``cli.run``: flags -> options -> run."""
    return run_score(spark, ScoreOptions.from_args(args))

