"""``python -m promptscore.tools.show DIR``: print a job's report and a few rows of its Parquet output
(for a score output: the top and bottom prompts).

Reads local output directories with pyarrow (no Spark needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.dataset as ds


def _rows(path: Path, columns: list[str] | None = None, limit: int = 3) -> list[dict]:
    dataset = ds.dataset(str(path), format="parquet", exclude_invalid_files=True,
                         ignore_prefixes=["_", "."])
    cols = [c for c in (columns or dataset.schema.names)]
    return dataset.head(limit, columns=cols).to_pylist()


def _short(value, width: int = 70):
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def show(directory: str, limit: int = 3) -> int:
    """Print the report's main numbers and ``limit`` rows (for scores: the top and bottom rows)."""
    root = Path(directory)
    report_path = root / "_report.json"
    if not report_path.exists():
        print(f"show: no _report.json in {directory}", file=sys.stderr)
        return 2
    report = json.loads(report_path.read_text())
    print(f"report: {report_path}")
    keys = ("status", "input_files", "input_bytes", "rows_written", "rows_rejected", "blank_lines",
            "reject_reasons", "output_files", "output_bytes", "tasks", "schema", "rows", "scored", "errors",
            "truncated", "tokens", "prompts_per_s", "engines", "score_quantiles", "elapsed_s")
    for key in keys:
        if key in report and not (key == "tasks" and isinstance(report[key], list)):
            print(f"  {key:<16} {report[key]}")
    if report.get("job") == "score":
        text = report.get("text_col") or "prompt"
        rows = ds.dataset(str(root), format="parquet", ignore_prefixes=["_", "."]) \
            .to_table(columns=[text, "score", "score_error"]).to_pylist()
        ranked = sorted((r for r in rows if r["score"] is not None), key=lambda r: r["score"], reverse=True)
        for title, part in ((f"top {limit}", ranked[:limit]), (f"bottom {limit}", ranked[-limit:][::-1])):
            print(f"{title} by score:")
            for r in part:
                print(f"  {r['score']:+8.4f}  {_short(r[text], 70)}")
        unscored = [r for r in rows if r["score"] is None]
        if unscored:
            print(f"not scored ({len(unscored)}):")
            for r in unscored[:limit]:
                print(f"  {r['score_error']:<24} {_short(r[text] if r[text] is not None else 'null', 50)}")
        if report.get("histogram_png"):
            print(f"histogram: {report['histogram_png']}")
        return 0
    print(f"first {limit} rows:")
    for row in _rows(root, limit=limit):
        print("  " + ", ".join(f"{k}={_short(v, 40)}" for k, v in row.items()))
    rejects = root / "_rejects"
    if rejects.exists():
        print(f"rejected lines ({rejects}):")
        for row in _rows(rejects, limit=limit):
            print(f"  {row['reason']:<24} {_short(row['raw'], 60)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m promptscore.tools.show", description=__doc__.splitlines()[0])
    p.add_argument("directory")
    p.add_argument("--rows", type=int, default=3)
    a = p.parse_args(argv)
    return show(a.directory, a.rows)


if __name__ == "__main__":
    raise SystemExit(main())
