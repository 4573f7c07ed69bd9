"""The score job's report, its histogram picture and its summary line (pure but for the picture)."""

from __future__ import annotations

import json

from promptscore.io.reports import human_bytes, redact_uri
from promptscore.score.estimate import predicted_vs_actual
from promptscore.score.options import ScoreOptions
from promptscore.score.plan import ScorePlan
from promptscore.score.rows import QUANTILES
from promptscore.score.tasks import engine_summaries
from promptscore.score.write import ScoreResult
from udfs.reasons import REASONS

HISTOGRAM_PNG = "_score_histogram.png"


def score_report(opts: ScoreOptions, plan: ScorePlan, result: ScoreResult, stats: dict, header: dict,
                 spark_info: dict, phases: dict[str, float]) -> dict:
    """The job's report (pure: everything comes from the plan, the result and the stats)."""
    m = result.metrics
    rows, scored_n = int(m["rows"]), int(m["scored"] or 0)
    errors = {r: int(m[f"err_{r}"] or 0) for r in REASONS if m[f"err_{r}"]}
    error_rows = rows - scored_n
    bad_fraction = error_rows / rows if rows else 0.0
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
        "tokens": int(m["tokens"] or 0),
        "max_tokens": m["max_tokens"],
        # Rates of this run's own scoring: resumed rows took no time here.
        "prompts_per_s": round(run_rows / write_s, 2) if write_s and run_rows else None,
        "tokens_per_s": round(run_tokens / write_s, 1) if write_s and run_rows else None,
        "engines": engines,
        "engine_start_s": max((e["start_s"] or 0 for e in engines), default=None),
        # Where the slowest engine's start went (udfs.start_parts); each engine's own: engines[].start_parts.
        "engine_start_parts": max(engines, key=lambda e: e["start_s"] or 0)["start_parts"] if engines else None,
        # Seconds the engines spent computing (GPU seconds with vLLM), summed over engines.
        "engine_busy_s": round(sum(e["busy_s"] or 0 for e in engines), 3),
        "engine_idle_s": round(sum(e["idle_s"] or 0 for e in engines), 3),
        # The throughput model's prediction for this run's rows and tokens beside what it took.
        "estimate": predicted_vs_actual(plan.config, result.this_run, engines, write_s,
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

