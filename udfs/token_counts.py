"""Token counts without an engine: what the score job's ``--plan`` reads from every row.

A pandas UDF that encodes each row exactly as the scoring UDF does (``udfs.prompts.Prompter``:
the same template, special tokens and unscorable rows) but cuts nothing and scores nothing: it
returns each row's full token count, or null for a row that would get no score (null, empty or
whitespace-only text, a null response, no tokens). The scored row keeps
``min(count, --max-model-len)`` tokens (``truncate_left`` keeps exactly that many).

The tokenizer is read from a local model directory, or from a directory shipped with
``SparkContext.addArchive`` (a model reference ``sparkfiles:NAME``), one ``Prompter`` per Python
worker and directory.
"""

from __future__ import annotations

import sys
from typing import Iterator

import pandas as pd

from udfs.prompts import Prompter

SPARK_FILES = "sparkfiles:"


def model_dir(ref: str) -> str:
    """The local directory a model reference names: a path, or ``sparkfiles:NAME`` (a directory
    the driver added with ``SparkContext.addArchive``, unpacked)."""
    if ref.startswith(SPARK_FILES):
        from pyspark import SparkFiles

        return SparkFiles.get(ref[len(SPARK_FILES):])
    return ref


def prompter(ref: str, template: str) -> Prompter:
    """This worker's Prompter for the tokenizer at ``ref``, built once; it never truncates."""
    from udfs.reward import cached_prompter

    return cached_prompter(model_dir(ref), template, sys.maxsize)


def count_tokens(p: Prompter, prompts: list, responses: list | None = None) -> list[int | None]:
    """Each row's untruncated token count, None where the row cannot be scored."""
    enc = p.encode(prompts, responses)
    return [len(ids) if ids is not None else None for ids in enc.ids]


def make_udf(ref: str, template: str = "raw", with_response: bool = False, slice_rows: int = 1024):
    """The pandas UDF (iterator form) of a row's token count (``long``, null when unscorable)."""
    from pyspark.sql.functions import pandas_udf

    def counts(prompts: list, responses: list | None) -> pd.Series:
        p = prompter(ref, template)
        out: list[int | None] = []
        for lo in range(0, len(prompts), slice_rows):
            out += count_tokens(p, prompts[lo:lo + slice_rows],
                                responses[lo:lo + slice_rows] if responses is not None else None)
        return pd.Series(pd.array(out, dtype="Int64"))

    if with_response:
        def count_pairs(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.Series]:
            for texts, responses in batches:
                yield counts(texts.tolist(), responses.tolist())
        return pandas_udf(count_pairs, "long")

    def count_texts(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        for texts in batches:
            yield counts(texts.tolist(), None)
    return pandas_udf(count_texts, "long")
