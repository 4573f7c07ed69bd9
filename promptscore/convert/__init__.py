"""The convert job: many small JSONL files under a prefix -> a few large Parquet files.

``run`` is the job; ``options`` what it takes; ``inputs``, ``plan``, ``write``, ``report`` its steps;
``jsonl``, ``schema`` and ``reader`` (with ``java/``) how lines become rows.
"""
