"""``python bench/py4j_lookups.py [N]``: what naming a Java class costs the driver, through py4j's
own view (``sc._jvm.org.apache.hadoop.fs.Path``: py4j asks the JVM about ``org``, ``org.apache``,
... in turn) and through ``promptscore.sparkapi.jvm`` (no question until the class is used).

Each way names the class N times (default 2,000) and builds a ``Path`` with it, in a local
session; printed: the wall time and the driver JVM's CPU time of each, best of 3 rounds."""

from __future__ import annotations

import sys
import time

from pyspark.sql import SparkSession

from promptscore import sparkapi


def jvm_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def main(n: int) -> int:
    spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
    pid = int(sparkapi.jvm(spark).java.lang.ProcessHandle.current().pid())
    ways = {"py4j's view (sc._jvm)": lambda: spark.sparkContext._jvm.org.apache.hadoop.fs.Path("/a"),
            "sparkapi.jvm": lambda: sparkapi.jvm(spark).org.apache.hadoop.fs.Path("/a")}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(3):
        for name, make in ways.items():
            t, c = time.perf_counter(), jvm_cpu_s(pid)
            for _ in range(n):
                make()
            wall, cpu = time.perf_counter() - t, jvm_cpu_s(pid) - c
            best[name] = min(best.get(name, (wall, cpu)), (wall, cpu))
    print(f"{n:,} times: name org.apache.hadoop.fs.Path and build a Path")
    print("| way | wall s | driver JVM CPU s | per name, ms (wall) |\n| --- | ---: | ---: | ---: |")
    for name, (wall, cpu) in best.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {1000 * wall / n:.3f} |")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
