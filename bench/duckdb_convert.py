"""The DuckDB peer of the convert job. python bench/duckdb_convert.py IN OUT.parquet THREADS"""

import sys

import duckdb

src, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute(
    f"COPY (SELECT * FROM read_json('{src}/**/*.jsonl', format = 'newline_delimited')) "
    f"TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
)
