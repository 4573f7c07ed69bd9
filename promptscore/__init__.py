"""promptscore: turn many small JSONL files into large Parquet files and score their prompts.

The Spark jobs in ``jobs/`` are thin entry points; their logic lives here and in ``udfs``.
"""

# Bumped on every change to what the jobs write (outputs, reports, resume pieces). The pieces'
# own format has its version in promptscore.score.pieces.FORMAT.
__version__ = "0.2.0"
