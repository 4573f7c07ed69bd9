"""The convert job on an object store with latency: files per second per core at 0, 10 and 30 ms.

    python bench/objectstore_bench.py --files 2000          (what `make bench-objectstore` runs)
    python bench/objectstore_bench.py --files 2000 --extra-conf spark.promptscore.convert.readAhead=16 \
        --variant "read-ahead 16"     (today's reader against the read-ahead reader, interleaved)

1. Builds the fake ``oss://`` of the tests (``tests/objectstore/``, needs ``javac``) and writes N
   JSONL files of ~100 KB into its bucket ``bench`` (kept between runs in --work).
2. Runs the job as users run it, ``spark-submit`` with the local profile's settings,
   ``jobs/convert.py`` on ``local[--cores]``, from ``oss://bench/in-...`` to
   ``oss://bench/out-...``, once per delay (each open, list page and head request sleeps that
   long). ``today`` runs the job as it was before its read-ahead reader
   (``spark.promptscore.convert.readAhead=0``: Spark's text source); with ``--extra-conf
   KEY=VALUE`` (repeatable) a second run per delay adds those settings (``--variant`` names it),
   and with ``--tasks-per-core K`` it runs K task slots per core, so both are measured in one
   invocation, interleaved.
3. Prints a Markdown table: whole-process and job seconds, files/s per core (over the job's own
   time from its report), the ratio to ``today`` at the same delay, and the requests every JVM
   made, by kind. All runs must write the same number of rows. A control row reads the same
   files from the local disk (plain paths, no oss://) with today's settings: what the machine
   does without any object store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import fake_oss  # noqa: E402
from convert_bench import machine, parquet_rows, run, spark_env  # noqa: E402
from convert_bench import prepare as generate_once  # noqa: E402

from promptscore.tools.submit import conf_args  # noqa: E402

BUCKET = "bench"
DELAYED = ("open", "list", "head")
SHOWN = ("open", "list", "head", "create", "rename", "delete")
READ_AHEAD = "spark.promptscore.convert.readAhead"


def parse_conf(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` for --extra-conf."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def prepare(root: Path, work: Path, files: int, file_kb: int) -> tuple[str, int]:
    """The input prefix (generated once) and its size in bytes."""
    name = f"in-{files}-{file_kb}k"
    # The marker lies outside the bucket: in it, it would be an object the job lists.
    _, size = generate_once(root / BUCKET / name, files, file_kb, marker=work / f".fake-oss-{name}.done")
    return name, size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--file-kb", type=int, default=100)
    p.add_argument("--delays", default="0,10,30", help="milliseconds per request, comma separated")
    p.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1), help="local[N]")
    p.add_argument("--extra-conf", type=parse_conf, action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting of the second variant (repeatable)")
    p.add_argument("--variant", default="lever", help="the name of the --extra-conf variant")
    p.add_argument("--tasks-per-core", type=int, default=1, metavar="K",
                   help="the variant runs K task slots per core (local[cores x K]): more reads in flight")
    p.add_argument("--repeat", type=int, default=1, help="runs of each variant and delay (median)")
    p.add_argument("--work", default=str(ROOT / "bench-data"))
    p.add_argument("--no-local", action="store_true", help="skip the local-disk control run")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--warm", action="store_true",
                   help="run the job twice in one driver (bench/convert_twice.py) and rate the second "
                   "run's write phase: the warm rate of a long run, without a short run's fixed costs")
    a = p.parse_args()

    jar = fake_oss.build_jar()
    if jar is None:
        raise SystemExit("no javac: the fake oss:// needs a JDK (e.g. apt-get install openjdk-17-jdk-headless)")
    work = Path(a.work).resolve()
    root = work / "oss"
    name, in_bytes = prepare(root, work, a.files, a.file_kb)
    delays = [int(d) for d in a.delays.split(",")]
    # "today" is the job as it ran before its read-ahead reader: Spark's text source.
    variants = {"today": ["--conf", f"{READ_AHEAD}=0"]}
    if a.extra_conf or a.tasks_per_core > 1:
        variants[a.variant] = [x for k, v in a.extra_conf for x in ("--conf", f"{k}={v}")]
    masters = {"today": f"local[{a.cores}]", a.variant: f"local[{a.cores * a.tasks_per_core}]"}
    env = spark_env()
    spark_submit = str(Path(sys.executable).parent / "spark-submit")

    local_run = ("today, local disk", -1)
    results: dict[tuple[str, int], dict] = {}
    loads = []  # other work on the machine slows every run alike: show how much there was
    runs = [(v, d) for d in delays for v in variants] + ([] if a.no_local else [local_run])
    for rep in range(a.repeat):
        for variant, delay in runs:
            counters = work / f"fake-oss-counts-{variant.split(',')[0]}-{delay}.jsonl"
            counters.unlink(missing_ok=True)
            cmd = [spark_submit, "--master", masters.get(variant, masters["today"]), *conf_args("conf/local.conf"),
                   "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.log.level=WARN",
                   "--conf", "spark.driver.memory=4g",
                   *fake_oss.submit_args(jar, root, delays_ms={op: max(delay, 0) for op in DELAYED},
                                         counters_file=counters),
                   *variants.get(variant, variants["today"]), "bench/convert_twice.py" if a.warm else "jobs/convert.py"]
            if (variant, delay) == local_run:
                out_dir = work / "out-local-disk"
                cmd += ["--input", str(root / BUCKET / name), "--output", str(out_dir)]
            else:
                out_dir = root / BUCKET / f"out-{variant}-{delay}ms"
                cmd += ["--input", f"oss://{BUCKET}/{name}", "--output", f"oss://{BUCKET}/{out_dir.name}"]
            again = out_dir.with_name(out_dir.name + "-again")
            shutil.rmtree(out_dir, ignore_errors=True)
            shutil.rmtree(again, ignore_errors=True)
            wall, peak, _ = run(cmd, env)
            loads.append(os.getloadavg()[0])
            if a.warm:
                out_dir = again
            report = json.loads((out_dir / "_report.json").read_text())
            r = results.setdefault((variant, delay), {"wall_s": [], "job_s": [], "peak_rss": []})
            r["wall_s"].append(wall)
            r["job_s"].append(float(report["phase_s"]["write"] if a.warm else report.get("elapsed_s", wall)))
            r["peak_rss"].append(peak)
            r["phase_s"] = report.get("phase_s")
            r["tasks"] = report.get("tasks")
            r["requests"] = fake_oss.read_counts(counters)
            r["rows"] = parquet_rows(out_dir)
            print(f"  round {rep + 1}: {variant:<18} {max(delay, 0):>3} ms  {wall:6.1f} s whole, "
                  f"{r['job_s'][-1]:6.1f} s job", flush=True)

    rows = {r["rows"] for r in results.values()}
    if len(rows) != 1:
        raise SystemExit(f"row counts differ: { {k: v['rows'] for k, v in results.items()} }")
    extra_text = " ".join(f"--extra-conf {k}={v}" for k, v in a.extra_conf)
    if a.tasks_per_core > 1:
        extra_text += f" --tasks-per-core {a.tasks_per_core}"
    if a.extra_conf and a.variant != "lever":
        extra_text += f" --variant {a.variant}"
    print()
    print(f"Command: python bench/objectstore_bench.py --files {a.files} --file-kb {a.file_kb} "
          f"--delays {a.delays} --cores {a.cores} --repeat {a.repeat}{' --no-local' if a.no_local else ''}"
          f"{' --warm' if a.warm else ''} {extra_text}".rstrip())
    if a.warm:
        print("--warm: each run is the job twice in one driver; \"job s\" is the second run's write phase")
    print(f"Machine: {machine()}; local[{a.cores}]; 1-minute load average after the runs "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print(f"Input: {a.files:,} files, {in_bytes / 1e6:,.0f} MB, {rows.pop():,} rows, on the fake oss:// "
          f"(each {'/'.join(DELAYED)} request sleeps the delay); median of {a.repeat} whole-process run(s)")
    if a.extra_conf:
        print(f"{a.variant}: {extra_text}")
    print()
    head = " | ".join(SHOWN)
    print(f"| run | delay | whole process s | job s | files/s per core | vs today | {head} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(SHOWN))
    for (variant, delay), r in results.items():
        job = statistics.median(r["job_s"])
        r["median_job_s"] = job
        rate = a.files / job / a.cores
        req = " | ".join(f"{r['requests'][op]:,}" for op in SHOWN)
        if (variant, delay) == local_run:
            ratio, shown_delay = "-", "-"
        else:
            ratio, shown_delay = f"{statistics.median(results[('today', delay)]['job_s']) / job:.2f}x", f"{delay} ms"
        print(f"| {variant} | {shown_delay} | {statistics.median(r['wall_s']):.1f} | {job:.1f} | {rate:,.1f} | "
              f"{ratio} | {req} |")
    if a.json:
        Path(a.json).write_text(json.dumps(
            {"machine": machine(), "cores": a.cores, "files": a.files, "input_bytes": in_bytes,
             "extra_conf": a.extra_conf, "load_averages": loads,
             "results": {f"{v}@{d}ms": r for (v, d), r in results.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
