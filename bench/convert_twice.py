"""spark-submit [options] bench/convert_twice.py ARGS: ``jobs/convert.py ARGS`` run twice in one
driver, the second time into ``<--output>-again``.

The second run is what most of a long run looks like: the JVMs are warm (JIT-compiled parsing,
classes and connections loaded), and the fixed costs of a short benchmark (starting the JVM,
the session, the first job) are paid. ``bench/objectstore_bench.py --warm`` measures it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("convert_job", ROOT / "jobs" / "convert.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    i = argv.index("--output") + 1
    again = [*argv[:i], argv[i].rstrip("/") + "-again", *argv[i + 1:]]
    return job.main(argv) or job.main(again)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
