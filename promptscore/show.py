"""``python -m promptscore.show DIR``: print a job's report and a few rows of its Parquet output.

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
    """Print the report's main numbers, the output schema and ``limit`` rows."""
    root = Path(directory)
    report_path = root / "_report.json"
    if not report_path.exists():
        print(f"show: no _report.json in {directory}", file=sys.stderr)
        return 2
    report = json.loads(report_path.read_text())
    print(f"report: {report_path}")
    for key in ("status", "input_files", "input_bytes", "rows_written", "rows_rejected", "blank_lines",
                "reject_reasons", "output_files", "output_bytes", "tasks", "schema", "elapsed_s"):
        if key in report:
            print(f"  {key:<16} {report[key]}")
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
    p = argparse.ArgumentParser(prog="python -m promptscore.show", description=__doc__.splitlines()[0])
    p.add_argument("directory")
    p.add_argument("--rows", type=int, default=3)
    a = p.parse_args(argv)
    return show(a.directory, a.rows)


if __name__ == "__main__":
    raise SystemExit(main())
