"""Small DataFrame and session helpers that both jobs use."""

from __future__ import annotations

import contextlib
from typing import Iterator

from pyspark.accumulators import Accumulator, AccumulatorParam
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F


def count_if(cond: Column) -> Column:
    """An aggregate: the rows where ``cond`` holds."""
    return F.sum(F.when(cond, 1).otherwise(0))


@contextlib.contextmanager
def session_conf(spark: SparkSession, settings: dict[str, str]) -> Iterator[None]:
    """Set session settings for the duration of a block, then restore the previous values."""
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


class _ListParam(AccumulatorParam):
    def zero(self, value):
        return []

    def addInPlace(self, a, b):
        a.extend(b)
        return a


def list_accumulator(spark: SparkSession) -> Accumulator:
    """An accumulator of lists: tasks add lists, the driver reads their concatenation."""
    return spark.sparkContext.accumulator([], _ListParam())
