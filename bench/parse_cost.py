"""What parsing costs: Spark's own JSON expressions (what the convert job used before its parser)
and the job's one-pass JVM parser over the same lines, each written to Spark's ``noop`` sink (best
of two), on ``local[2]``.

    python bench/parse_cost.py [--input bench-data/in-4000]   (the files `make bench-convert` made)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=str(ROOT / "bench-data" / "in-4000"))
    a = p.parse_args()
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    from promptscore.convert import jsonl

    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").config("spark.log.level", "WARN").getOrCreate())
    df = spark.read.option("recursiveFileLookup", "true").text(a.input)
    schema = spark.read.json(df.limit(2000).select("value").rdd.map(lambda r: r[0])).schema
    v = F.col("value")
    wrapped = StructType([StructField("r", schema), StructField("_corrupt_record", StringType())])
    known = F.array(*[F.lit(f.name) for f in schema.fields])

    def timed(name: str, frame, cols) -> None:
        best = float("inf")
        for _ in range(2):
            t0 = time.monotonic()
            frame.select(*cols).write.format("noop").mode("overwrite").save()
            best = min(best, time.monotonic() - t0)
        print(f"| {name} | {best:.2f} |", flush=True)

    print(f"{df.count():,} lines of {a.input}\n\n| expression | seconds |\n| --- | ---: |")
    timed("read the lines", df, [v])
    timed("from_json(line)", df, [F.from_json(v, schema)])
    timed('from_json({"r": line}) (trailing data is an error)', df,
          [F.from_json(F.concat(F.lit('{"r":'), v, F.lit("}")), wrapped)])
    timed("json_object_keys (unknown fields)", df, [F.array_except(F.json_object_keys(v), known)])
    timed("UTF-8 check of every line (Spark expression)", df,
          [F.decode(v.cast("binary"), "UTF-8") != v])
    timed("the three together: the checks of the parse before the JVM parser", df,
          [F.from_json(F.concat(F.lit('{"r":'), v, F.lit("}")), wrapped),
           F.array_except(F.json_object_keys(v), known), F.decode(v.cast("binary"), "UTF-8") != v])
    timed("jsonl.parse_lines: the JVM parser, every check in one pass", jsonl.parse_lines(df, schema),
          ["parsed", "kind", "unknown"])
    timed("jsonl.parse_lines, no unknown-field paths", jsonl.parse_lines(df, schema, check_fields=False),
          ["parsed", "kind"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
