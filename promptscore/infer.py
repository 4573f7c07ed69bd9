"""Schema inference from a few sampled files, on the driver, with Spark's JSON typing rules.

Reading a sample through a Spark job costs a job (seconds on a cold JVM); the sample is a few MB,
so the driver reads it through the Hadoop FileSystem and types the values itself:

- integers -> ``bigint`` (wider ones -> ``decimal(38,0)``), other numbers -> ``double``,
  booleans -> ``boolean``, strings -> ``string``, objects -> ``struct``, lists -> ``array``;
- when files disagree: ``bigint`` + ``double`` -> ``double``, structs merge field by field,
  anything else -> ``string`` (Spark's JSON parser keeps the raw JSON text of such values);
- a field that is only ever ``null`` becomes ``string``.

Fields keep the order in which the sample first shows them.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from typing import Any, Iterable

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DecimalType,
    DoubleType,
    LongType,
    NullType,
    StringType,
    StructField,
    StructType,
)

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def type_of(value: Any) -> DataType:
    """The Spark type Spark's JSON inference gives one JSON value."""
    if value is None:
        return NullType()
    if isinstance(value, bool):
        return BooleanType()
    if isinstance(value, int):
        if _LONG_MIN <= value <= _LONG_MAX:
            return LongType()
        return DecimalType(38, 0) if len(str(abs(value))) <= 38 else DoubleType()
    if isinstance(value, float):
        return DoubleType()
    if isinstance(value, str):
        return StringType()
    if isinstance(value, list):
        element: DataType = NullType()
        for item in value:
            element = merge(element, type_of(item))
        return ArrayType(element, True)
    if isinstance(value, dict):
        return StructType([StructField(k, type_of(v), True) for k, v in value.items()])
    return StringType()


def merge(a: DataType, b: DataType) -> DataType:
    """The narrowest type that holds values of both ``a`` and ``b``."""
    if a == b:
        return a
    if isinstance(a, NullType):
        return b
    if isinstance(b, NullType):
        return a
    numeric = (LongType, DoubleType, DecimalType)
    if isinstance(a, numeric) and isinstance(b, numeric):
        return DoubleType() if DoubleType() in (a, b) else DecimalType(38, 0)
    if isinstance(a, StructType) and isinstance(b, StructType):
        fields = {f.name: f.dataType for f in a.fields}
        for f in b.fields:
            fields[f.name] = merge(fields[f.name], f.dataType) if f.name in fields else f.dataType
        return StructType([StructField(k, t, True) for k, t in fields.items()])
    if isinstance(a, ArrayType) and isinstance(b, ArrayType):
        return ArrayType(merge(a.elementType, b.elementType), True)
    return StringType()


def _settle(t: DataType) -> DataType:
    """Replace types no value pinned down (only nulls, empty lists) by ``string``."""
    if isinstance(t, NullType):
        return StringType()
    if isinstance(t, ArrayType):
        return ArrayType(_settle(t.elementType), True)
    if isinstance(t, StructType):
        return StructType([StructField(f.name, _settle(f.dataType), True) for f in t.fields])
    return t


def infer_struct(records: Iterable[dict]) -> StructType:
    """The schema of a stream of JSON objects (see the module notes for the rules)."""
    acc: DataType = StructType([])
    for record in records:
        acc = merge(acc, type_of(record))
    return _settle(acc)  # type: ignore[return-value]


def parse_sample(data: bytes, compressed: bool, complete: bool) -> tuple[list[dict], int]:
    """The JSON objects among the lines of ``data`` and the number of other non-blank lines.

    ``complete`` is false when ``data`` is only the head of a file: its last, possibly cut, line
    is then left out.
    """
    if compressed:
        data = gzip.decompress(data) if complete else zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
    lines = data.split(b"\n")
    if not complete:
        lines = lines[:-1]
    records, bad = [], 0
    for raw in lines:
        text = raw.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            bad += 1
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            bad += 1
    return records, bad


def sample_schema(spark, paths: Iterable[str], bytes_per_file: int = 1 << 20) -> tuple[StructType, int, int]:
    """Infer the schema of the JSONL files at ``paths`` from at most ``bytes_per_file`` of each.

    Returns the schema, the number of records seen and the number of unusable lines seen.
    """
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    acc: DataType = StructType([])
    seen = bad = 0
    with tempfile.TemporaryDirectory(prefix="promptscore-sample-") as tmp:
        for i, path in enumerate(paths):
            p = jvm.org.apache.hadoop.fs.Path(path)
            fs = p.getFileSystem(conf)
            size = int(fs.getFileStatus(p).getLen())
            local = os.path.join(tmp, str(i))
            # The JVM copies the head of the file to a local file: much faster than bytes
            # through py4j. copyInputStreamToFile closes the stream.
            head = jvm.org.apache.commons.io.input.BoundedInputStream(fs.open(p), min(size, bytes_per_file))
            jvm.org.apache.commons.io.FileUtils.copyInputStreamToFile(head, jvm.java.io.File(local))
            with open(local, "rb") as f:
                data = f.read()
            records, unusable = parse_sample(data, path.endswith(".gz"), complete=len(data) >= size)
            for record in records:
                acc = merge(acc, type_of(record))
            seen += len(records)
            bad += unusable
    return _settle(acc), seen, bad  # type: ignore[return-value]
