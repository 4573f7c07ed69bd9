"""Planning at the mission's scale: listing time and driver memory of `convert --plan` as the
number of input files grows, fitted to 4 million files.

    python bench/scale_bench.py --steps 250000,500000,1000000      (what `make bench-scale` runs)

1. Writes up to the largest step of tiny JSONL files (one short line each) in folders of 1,000,
   in parts that add up to each step (kept between runs in --work; ~4 GB of disk at 1M files).
2. For each step, runs `jobs/convert.py --plan` through spark-submit with the local profile
   (`local[2]`, an 8 GB driver as in `conf/emr-convert.conf`): whole-process seconds, the plan's
   listing seconds, the driver's heap in use after listing (after a full GC), and the peak
   resident memory of the whole process tree.
3. Fits each figure to a line in the number of files and extrapolates it to --target files.

Prints a Markdown table to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.convert_bench import machine, run, spark_env  # noqa: E402
from promptscore.tools.submit import conf_args  # noqa: E402

PER_DIR = 1000


def _write_dir(args: tuple[str, int, int]) -> None:
    folder, start, n = args
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (d / f"f{i:07d}.jsonl").write_text(f'{{"id": "r{i:07d}", "prompt": "prompt number {i}"}}\n')


def make_part(root: Path, name: str, files: int, offset: int) -> Path:
    """``files`` tiny files under ``root/name`` (made once; a marker says the part is complete)."""
    part = root / name
    marker = root / f".{name}-{files}.done"
    if marker.exists():
        return part
    print(f"writing {files:,} files in {part} ...", flush=True)
    jobs = [(str(part / f"d{(offset + i) // PER_DIR:05d}"), offset + i, min(PER_DIR, files - i))
            for i in range(0, files, PER_DIR)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(_write_dir, jobs, chunksize=16))
    marker.touch()
    return part


def run_plan(inputs: list[Path], report: Path, driver_memory: str) -> tuple[float, int]:
    """Run ``convert --plan`` on ``inputs``; return wall seconds and the peak RSS of its tree."""
    spark_submit = str(Path(sys.executable).parent / "spark-submit")
    cmd = [spark_submit, "--master", "local[2]", *conf_args("conf/local.conf"),
           "--conf", "spark.ui.showConsoleProgress=false", "--conf", f"spark.driver.memory={driver_memory}",
           "jobs/convert.py", "--plan", "--report", str(report)]
    for i in inputs:
        cmd += ["--input", str(i)]
    elapsed, peak, _ = run(cmd, spark_env())
    return elapsed, peak


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares line ``y = a + b x``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="250000,500000,1000000", help="file counts to plan, comma-separated")
    p.add_argument("--target", type=int, default=4_000_000, help="extrapolate to this many files")
    p.add_argument("--driver-memory", default="8g")
    p.add_argument("--work", default=str(ROOT / "bench-data" / "scale"))
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    steps = sorted(int(s) for s in a.steps.split(","))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    parts, made = [], 0
    for i, step in enumerate(steps):
        parts.append(make_part(work, f"part{i}", step - made, made))
        made = step

    rows = []
    for i, step in enumerate(steps):
        report = work / f"plan-{step}.json"
        wall, peak = run_plan(parts[: i + 1], report, a.driver_memory)
        plan = json.loads(report.read_text())
        rows.append({"files": plan["input_files"], "wall_s": round(wall, 1), "list_s": plan["phase_s"]["list"],
                     "heap_mb": plan["driver_heap_mb"], "rss_mb": round(peak / 2**20)})
        print(f"  {step:>9,} files: {rows[-1]}", flush=True)

    xs = [r["files"] for r in rows]
    print()
    print(f"Machine: {machine()}; spark.driver.memory={a.driver_memory}, local[2]")
    print()
    print("| files | whole process s | listing s | driver heap after listing | peak RSS (driver + local executor) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['files']:,} | {r['wall_s']:.1f} | {r['list_s']:.1f} | {r['heap_mb']:,} MB | {r['rss_mb']:,} MB |")
    fits = {}
    for key in ("wall_s", "list_s", "heap_mb", "rss_mb"):
        a0, b = fit(xs, [r[key] for r in rows])
        fits[key] = {"intercept": a0, "per_file": b, "at_target": a0 + b * a.target}
    print(f"| {a.target:,} (fitted) | {fits['wall_s']['at_target']:.0f} | {fits['list_s']['at_target']:.0f} | "
          f"{fits['heap_mb']['at_target']:,.0f} MB | {fits['rss_mb']['at_target']:,.0f} MB |")
    print()
    print(f"Per file: {fits['heap_mb']['per_file'] * 1024:.2f} KB of driver heap, "
          f"{fits['list_s']['per_file'] * 1e6:.1f} us of listing.")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(), "rows": rows, "fits": fits}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
