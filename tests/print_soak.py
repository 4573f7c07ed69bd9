"""A driver for spark-submit that prints LINES lines through ``cli.print_err`` as the jobs do (half
from the main thread, half from a ``progress.Reporter`` thread) and prints, as one JSON line on
stdout, the driver's open files and the JVM's threads before and after (after a line ``CONF{...}``:
the session's Spark properties).

    spark-submit tests/print_soak.py LINES
"""

from __future__ import annotations

import json
import sys
import threading

import psutil

from promptscore import cli, progress


def main(lines: int) -> None:
    cli.print_err("soak: before the session")  # the gateway exists before any SparkContext
    spark = cli.get_session("print-soak")
    # The properties the session runs with, for tests/e2e/test_conf_submit.py.
    print("CONF" + json.dumps(dict(spark.sparkContext.getConf().getAll())), flush=True)
    bean = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getThreadMXBean()
    me = psutil.Process()
    cli.print_err("soak: warm")
    before = {"fds": me.num_fds(), "jvm_threads": int(bean.getThreadCount())}

    for i in range(lines // 2):
        cli.print_err(f"soak: main {i}")
    count = 0
    done = threading.Event()

    def line() -> str | None:
        nonlocal count
        if count >= lines - lines // 2:
            done.set()
            return None
        count += 1
        return f"soak: progress {count}"

    with progress.Reporter(line, 0.001):
        done.wait(600)
    after = {"fds": me.num_fds(), "jvm_threads": int(bean.getThreadCount())}
    print(json.dumps({"before": before, "after": after, "printed": lines // 2 + count}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
