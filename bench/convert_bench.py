"""Benchmark of the convert job against its peers, in one run, on the same files.

    python bench/convert_bench.py --files 4000        (what `make bench-convert` runs)

1. Writes N JSONL files of ~100 KB (kept between runs in --work).
2. Runs, each as a whole process on the same cores, --repeat times (the median is reported):
   - this job:  spark-submit <conf/local.conf as --conf pairs> jobs/convert.py
   - naive:     spark-submit bench/naive_convert.py (spark.read.json(...).write.parquet(...))
   - DuckDB:    COPY (SELECT * FROM read_json(...)) TO ... (FORMAT parquet)
   - with --job-conf LABEL:K=V: this job again with other Spark properties, as "this job (LABEL)"
   and checks that all three wrote the same number of rows.
3. The job's steady state apart from its fixed costs: from each run's ``_report.json``
   (``phase_s``, ``elapsed_s``), the seconds before the job's clock starts (JVM, session, imports),
   listing, schema sample and the one write pass, and the write pass's MB/s per core, against
   DuckDB's whole process and against ``--baseline-mb-s`` (an earlier steady-state rate).
4. Planning scale: the job over --planning-files tiny files (driver seconds, peak driver memory).

Prints a Markdown table to paste into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptscore.tools.sample_data import generate  # noqa: E402
from promptscore.tools.submit import conf_args  # noqa: E402


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    except OSError:
        mem = 0
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its children."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(cmd: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run ``cmd``; return wall seconds, peak resident bytes of its process tree, and stdout."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    elapsed = time.monotonic() - start
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    return elapsed, peak[0], out


def spark_env() -> dict:
    import pyspark

    env = dict(os.environ)
    env["SPARK_HOME"] = os.path.dirname(pyspark.__file__)
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def parquet_rows(path: Path) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(str(path), format="parquet", ignore_prefixes=["_", "."]).count_rows()


def parquet_files(path: Path) -> int:
    return len([p for p in path.rglob("*.parquet") if not p.name.startswith(("_", "."))]) if path.is_dir() else 1


def prepare(root: Path, files: int, file_kb: int, marker: Path | None = None) -> tuple[int, int]:
    """``files`` JSONL files of ~``file_kb`` KB under ``root`` (made once: ``marker``, by default a
    hidden file in ``root``, says they are complete); their count and size in bytes."""
    marker = marker or root / f".generated-{files}-{file_kb}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating {files} files of ~{file_kb} KB in {root} ...", flush=True)
        generate(str(root), files, file_kb)
        marker.touch()
    size = sum(p.stat().st_size for p in root.rglob("*.jsonl"))
    return files, size


def label_and_property(value: str) -> tuple[str, str]:
    """``LABEL:KEY=VALUE`` of ``--job-conf``: the label, and the property as ``--conf`` takes it."""
    label, sep, prop = value.partition(":")
    if not sep or not label or "=" not in prop:
        raise argparse.ArgumentTypeError(f"{value!r}: expected LABEL:KEY=VALUE")
    return label, prop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=4000)
    p.add_argument("--file-kb", type=int, default=100)
    p.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1), help="local[N] and DuckDB threads")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--planning-files", type=int, default=200_000, help="0 to skip the planning run")
    p.add_argument("--work", default=str(ROOT / "bench-data"))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--compare-checkout", metavar="DIR",
                   help="also run the job of another checkout of this repository (an earlier commit, "
                   "e.g. made with `git worktree add DIR REV`) as a peer, interleaved with this one")
    p.add_argument("--only", help="run only these peers (comma-separated names, e.g. 'this job,earlier')")
    p.add_argument("--job-conf", action="append", default=[], metavar="LABEL:K=V", type=label_and_property,
                   help="also run this job with this Spark property as the peer 'this job (LABEL)', e.g. "
                   "'pgc:spark.driver.extraJavaOptions=-XX:+UseParallelGC'; repeat it for more peers, or with "
                   "the same LABEL for more properties of one peer")
    p.add_argument("--baseline-mb-s", type=float, default=0.0,
                   help="an earlier steady-state rate (write pass, MB/s per core) to compare the job's with")
    a = p.parse_args()

    work = Path(a.work)
    src = work / f"in-{a.files}"
    n_files, in_bytes = prepare(src, a.files, a.file_kb)
    env = spark_env()
    master = f"local[{a.cores}]"
    spark_submit = str(Path(sys.executable).parent / "spark-submit")
    common = ["--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.log.level=WARN",
              "--conf", "spark.driver.memory=4g"]

    def job_cmd(inp: Path, extra: tuple[str, ...] = ()) -> list[str]:
        return [spark_submit, "--master", master, *conf_args("conf/local.conf"), *common, *extra,
                "jobs/convert.py", "--input", str(inp), "--output", "{out}"]

    runs = {
        "this job": job_cmd(src),
        **({"earlier": ["env", f"PYTHONPATH={Path(a.compare_checkout).resolve()}", *job_cmd(src)[:-5],
                        str(Path(a.compare_checkout).resolve() / "jobs" / "convert.py"), "--input", str(src),
                        "--output", "{out}"]} if a.compare_checkout else {}),
        **{f"this job ({label})": job_cmd(src, tuple(x for lb, kv in a.job_conf if lb == label for x in ("--conf", kv)))
           for label in dict.fromkeys(lb for lb, _ in a.job_conf)},
        "naive Spark": [spark_submit, "--master", master, *common, "bench/naive_convert.py", str(src), "{out}"],
        "DuckDB": [sys.executable, "bench/duckdb_convert.py", str(src), "{out}", str(a.cores)],
    }
    if a.only:
        keep = {n.strip() for n in a.only.split(",")}
        runs = {k: v for k, v in runs.items() if k in keep}
    results: dict[str, dict] = {}
    loads: list[float] = []  # other work on the machine slows every peer alike: say how much there was
    for rep in range(a.repeat):
        for name, cmd in runs.items():
            out = work / f"out-{list(runs).index(name)}"
            shutil.rmtree(out, ignore_errors=True)
            if out.with_suffix(".parquet").exists():
                out.with_suffix(".parquet").unlink()
            target = out.with_suffix(".parquet") if name == "DuckDB" else out
            secs, peak, _ = run([c.replace("{out}", str(target)) for c in cmd], env)
            r = results.setdefault(name, {"seconds": [], "peak_rss": []})
            r["seconds"].append(secs)
            r["peak_rss"].append(peak)
            r["rows"] = parquet_rows(target)
            r["output_files"] = parquet_files(target)
            loads.append(os.getloadavg()[0])
            if (target / "_report.json").is_file():  # the job's own phases: its one write pass alone
                report = json.loads((target / "_report.json").read_text())
                r.setdefault("write_s", []).append(report["phase_s"]["write"])
                r.setdefault("phases", []).append({**report["phase_s"], "elapsed": report["elapsed_s"],
                                                   "start": max(0.0, secs - report["elapsed_s"])})
            print(f"  round {rep + 1}: {name:<12} {secs:6.1f} s (load {loads[-1]:.1f})", flush=True)

    rows = {r["rows"] for r in results.values()}
    if len(rows) != 1:
        raise SystemExit(f"row counts differ: { {k: v['rows'] for k, v in results.items()} }")
    mb = in_bytes / 1e6

    def median_of(name: str) -> float | None:
        return statistics.median(results[name]["seconds"]) if name in results else None

    peers = [(label, median_of(name)) for label, name in (("vs naive", "naive Spark"), ("vs DuckDB", "DuckDB"),
                                                        ("vs earlier", "earlier")) if name in results]
    print()
    print(f"Machine: {machine()}; {a.cores} cores used (local[{a.cores}], DuckDB threads={a.cores})")
    print(f"Input: {n_files:,} files, {mb:,.0f} MB, {rows.pop():,} rows; median of {a.repeat} whole-process runs, "
          f"interleaved; 1-minute load average after each run {min(loads):.1f}-{max(loads):.1f}")
    print()
    print("| run | seconds | files/s | MB/s per core | output files | peak RSS |"
          + "".join(f" {p} |" for p, _ in peers))
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(peers))
    for name, r in results.items():
        s = statistics.median(r["seconds"])
        r["median_s"] = s
        print(f"| {name} | {s:.1f} | {n_files / s:,.0f} | {mb / s / a.cores:.1f} | {r['output_files']} | "
              f"{max(r['peak_rss']) / 2**30:.1f} GiB |" + "".join(f" {s / m:.2f}x |" for _, m in peers))

    steady = {name: r for name, r in results.items() if r.get("phases")}
    if steady:
        duck = median_of("DuckDB")
        print()
        print("Where the job's seconds go (its report: `elapsed_s`, `phase_s`; start = whole process - elapsed_s: "
              "JVM, session and imports; other = elapsed_s - list - schema - write: the output's lock, the reader's "
              "check, the report), median of each; the steady state is the write pass, listing and JVM start "
              "excluded:")
        print()
        print("| run | whole s | start s | list s | schema s | write s | other s | write MB/s per core |"
              + (" write vs DuckDB (whole) |" if duck else "") + (" vs baseline |" if a.baseline_mb_s else ""))
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if duck else "")
              + (" ---: |" if a.baseline_mb_s else ""))
        for name, r in steady.items():
            def med(key: str, phases=r["phases"]) -> float:
                return statistics.median(ph.get(key, 0.0) for ph in phases)
            other = statistics.median(ph["elapsed"] - ph.get("list", 0.0) - ph.get("schema", 0.0) - ph["write"]
                                      for ph in r["phases"])
            write = med("write")
            rate = mb / write / a.cores
            r["write_mb_s_per_core"] = rate
            print(f"| {name} | {r['median_s']:.1f} | {med('start'):.1f} | {med('list'):.1f} | {med('schema'):.1f} | "
                  f"{write:.1f} | {other:.1f} | {rate:.1f} |" + (f" {write / duck:.2f}x |" if duck else "")
                  + (f" {rate / a.baseline_mb_s:.2f}x |" if a.baseline_mb_s else ""))

    planning = None
    if a.planning_files:
        tiny = work / f"tiny-{a.planning_files}"
        prepare(tiny, a.planning_files, 0)
        out = work / "out-planning"
        shutil.rmtree(out, ignore_errors=True)
        secs, peak, _ = run([c.replace("{out}", str(out)) for c in job_cmd(tiny)], env)
        report = json.loads((out / "_report.json").read_text())
        planning = {"files": a.planning_files, "wall_s": secs, "peak_rss": peak, "report": report}
        print()
        print(f"Planning scale: {a.planning_files:,} tiny files -> {report['rows_written']:,} rows in "
              f"{report['output_files']} files with {report['tasks']} tasks: {secs:.1f} s whole process, "
              f"driver phases {report['phase_s']}, peak RSS of driver + local executor {peak / 2**30:.2f} GiB")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine(), "cores": a.cores, "files": n_files,
                                            "load_averages": loads,
                                            "input_bytes": in_bytes, "results": results,
                                            "planning": planning}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
