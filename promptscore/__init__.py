"""promptscore: turn many small JSONL files into large Parquet files and score their prompts.

The Spark jobs in ``jobs/`` are thin entry points; their logic lives here and in ``udfs``.
"""

__version__ = "0.1.0"
