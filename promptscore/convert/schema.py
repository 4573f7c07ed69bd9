"""The schema of the records: given as Spark DDL (``--schema``, checked by ``explicit_schema``), or
inferred from the heads of a few sampled files (``sample_schema``), typed as Spark types JSON.

Reading a sample through a Spark job costs a job (seconds on a cold JVM); the sample is a few MB,
so the driver reads it through the Hadoop FileSystem and types the values with the rules of
Spark's own JSON schema inference (``spark.read.json``):

- integers -> ``bigint``; wider ones -> ``decimal(digits, 0)`` up to 38 digits, ``string`` past
  that (the job keeps the number's exact text; Spark would round it into a ``double``); other
  numbers -> ``double``; booleans -> ``boolean``; strings -> ``string``; objects -> ``struct``;
  lists -> ``array``;
- when values disagree: ``bigint`` + ``double`` -> ``double``; ``decimal`` + ``bigint`` ->
  ``decimal`` wide enough for both; ``decimal`` + ``double`` -> ``double``; structs merge field
  by field; anything else -> ``string`` (Spark's parser keeps the raw JSON text of such values);
- a field that is only ever ``null`` (or an empty list's element) becomes ``string``; an empty
  object is no field at all.

Unlike Spark, fields keep the order in which the sample first shows them, and two names that
differ only in case are never both columns: the first spelling seen wins, and the other is a
field the schema lacks. A line counts only if the convert job would accept it as a JSON object:
valid UTF-8, one JSON value and nothing after it, nested at most ``MAX_DEPTH`` deep, no ``NaN``
or ``Infinity`` constants, no number that overflows a double or underflows to zero, no key twice
(nor two keys that differ only in case) in one object, and no lone surrogate escape.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import tempfile
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

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

from promptscore import errors, sparkapi
from promptscore.convert import jsonl
from promptscore.io import hadoop

if TYPE_CHECKING:
    from promptscore.convert.options import ConvertOptions

MAX_DEPTH = 1000  # Jackson's default nesting limit, which Spark's JSON parser keeps
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_WS = " \t\r\n"
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class _Unusable(ValueError):
    """A line the convert job would reject (not a row)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    names: set[str] = set()
    folded: set[str] = set()
    for key, _ in pairs:
        lowered = key.lower()
        if key in names or lowered in folded:
            raise _Unusable(f"duplicate key {key!r}")
        names.add(key)
        folded.add(lowered)
    return dict(pairs)


def _constant(name: str) -> Any:
    raise _Unusable(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value) or value == 0.0 and any(c in "123456789" for c in re.split("[eE]", text)[0]):
        raise _Unusable(f"{text} does not fit a double")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant, parse_float=_float)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def type_of(value: Any) -> DataType:
    """The Spark type Spark's JSON inference gives one JSON value."""
    if value is None:
        return NullType()
    if isinstance(value, bool):
        return BooleanType()
    if isinstance(value, int):
        if _LONG_MIN <= value <= _LONG_MAX:
            return LongType()
        digits = len(str(abs(value)))
        return DecimalType(digits, 0) if digits <= 38 else StringType()
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
    """The narrowest type that holds values of both ``a`` and ``b``, as Spark widens them."""
    if a == b:
        return a
    if isinstance(a, NullType):
        return b
    if isinstance(b, NullType):
        return a
    if isinstance(a, DoubleType) and isinstance(b, (LongType, DecimalType)) or \
            isinstance(b, DoubleType) and isinstance(a, (LongType, DecimalType)):
        return DoubleType()
    if isinstance(a, (LongType, DecimalType)) and isinstance(b, (LongType, DecimalType)):
        da = a if isinstance(a, DecimalType) else DecimalType(20, 0)
        db = b if isinstance(b, DecimalType) else DecimalType(20, 0)
        scale = max(da.scale, db.scale)
        digits = max(da.precision - da.scale, db.precision - db.scale)
        return DecimalType(digits + scale, scale) if digits + scale <= 38 else StringType()
    if isinstance(a, StructType) and isinstance(b, StructType):
        fields = {f.name: f.dataType for f in a.fields}
        spelled = {name.lower(): name for name in fields}
        for f in b.fields:
            name = spelled.setdefault(f.name.lower(), f.name)
            if name != f.name:
                continue  # another spelling of a field already seen: not a column of its own
            fields[name] = merge(fields[name], f.dataType) if name in fields else f.dataType
        return StructType([StructField(k, t, True) for k, t in fields.items()])
    if isinstance(a, ArrayType) and isinstance(b, ArrayType):
        return ArrayType(merge(a.elementType, b.elementType), True)
    return StringType()


def settle(t: DataType) -> DataType | None:
    """Spark's last step: types no value pinned down (only nulls) become ``string``; empty
    structs, and fields with empty names, disappear."""
    if isinstance(t, NullType):
        return StringType()
    if isinstance(t, ArrayType):
        element = settle(t.elementType)
        return ArrayType(element, True) if element is not None else None
    if isinstance(t, StructType):
        fields = []
        for f in t.fields:
            settled = settle(f.dataType) if f.name else None
            if settled is not None:
                fields.append(StructField(f.name, settled, True))
        return StructType(fields) if fields else None
    return t


def depth_exceeds(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests objects and arrays deeper than ``limit`` (strings skipped)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def parse_line(raw: bytes, max_line_bytes: int) -> dict | None:
    """The JSON object on one line, or None when the convert job would not write it as a row."""
    if len(raw) > max_line_bytes:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.lstrip("\ufeff").strip(_WS)
    if not text or depth_exceeds(text):
        return None
    try:
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # _Unusable is a ValueError
        return None
    if text[end:].strip(_WS):
        return None  # trailing data after the first value
    if _ESCAPED_SURROGATE.search(text) and _has_surrogate(value):
        return None  # a lone surrogate escape (a pair decodes to one character)
    return value if isinstance(value, dict) else None


def parse_sample(data: bytes, compressed: bool, complete: bool,
                 max_line_bytes: int = 64 << 20) -> tuple[list[dict], int]:
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
        if not raw.strip(b" \t\r"):
            continue
        record = parse_line(raw, max_line_bytes)
        if record is None:
            bad += 1
        else:
            records.append(record)
    return records, bad


@dataclass
class SchemaSample:
    """What the sample showed: the schema, how many records and unusable lines it held, and for
    each top-level string field the share of distinct values (to choose Parquet encodings)."""

    schema: StructType
    files: int = 0
    records: int = 0
    unusable_lines: int = 0
    unreadable_files: list[str] = field(default_factory=list)
    distinct_share: dict[str, float] = field(default_factory=dict)
    # The records of the first files read whole, and those files' bytes (``keep_bytes``): what the
    # compression ratio is measured on, with no read of its own.
    kept_records: list[dict] = field(default_factory=list, repr=False, compare=False)
    kept_bytes: int = 0


HEAD_READERS = 8  # sampled files' heads read at once (each a request on an object store)
SAMPLE_HEAD_BYTES = 1 << 20  # read of each sampled file


def sample_schema(spark, paths: Iterable[str], bytes_per_file: int = SAMPLE_HEAD_BYTES,
                  max_line_bytes: int = 64 << 20, sizes: dict[str, int] | None = None,
                  keep_bytes: int = 0) -> SchemaSample:
    """Infer the schema of the JSONL files at ``paths`` from at most ``bytes_per_file`` of each
    (``sizes``: the files' sizes where the listing gave them, not asked again). The heads are
    read ``HEAD_READERS`` at a time, and taken in the order of ``paths``. The records of files
    read whole are kept while their bytes stay within ``keep_bytes`` (``kept_records``).

    A file whose head cannot be read or decompressed is listed in ``unreadable_files`` and
    otherwise left to the job (which sets it aside as a reject).
    """
    acc: DataType = StructType([])
    out = SchemaSample(StructType([]))
    distinct: dict[str, set[int]] = {}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="promptscore-sample-") as tmp:
        for path, head in _heads(spark, list(paths), tmp, bytes_per_file, sizes or {}):
            out.files += 1
            try:
                size, data = head.result()
                records, unusable = parse_sample(data, path.endswith(".gz"), len(data) >= size, max_line_bytes)
            except Exception:  # noqa: BLE001 - a broken file is the job's to report, not the sample's
                out.unreadable_files.append(path)
                continue
            for record in records:
                acc = merge(acc, type_of(record))
                for k, v in record.items():
                    if isinstance(v, str):
                        distinct.setdefault(k, set()).add(hash(v))
                        counts[k] = counts.get(k, 0) + 1
            out.records += len(records)
            out.unusable_lines += unusable
            if len(data) >= size and out.kept_bytes + size <= keep_bytes:
                out.kept_records.extend(records)
                out.kept_bytes += size
    out.schema = settle(acc) or StructType([])  # type: ignore[assignment]
    out.distinct_share = {k: len(distinct[k]) / n for k, n in counts.items()}
    return out


def _heads(spark, paths: list[str], tmp: str, max_bytes: int,
           sizes: dict[str, int]) -> Iterator[tuple[str, Future[tuple[int, bytes]]]]:
    """(path, the future of its (size, head)) for each of ``paths`` in order, with at most
    ``HEAD_READERS`` heads read ahead of the one taken."""
    def read(i: int, path: str) -> tuple[int, bytes]:
        local = os.path.join(tmp, str(i))
        size = hadoop.copy_head(spark, path, local, max_bytes, sizes.get(path))
        with open(local, "rb") as f:
            data = f.read()
        os.remove(local)
        return size, data

    with ThreadPoolExecutor(max_workers=HEAD_READERS, thread_name_prefix="promptscore-sample") as pool:
        ahead: deque[tuple[str, Future[tuple[int, bytes]]]] = deque()
        for i, path in enumerate(paths):
            ahead.append((path, pool.submit(read, i, path)))
            if len(ahead) >= HEAD_READERS:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()


# ---------------------------------------------------------------------------------------------
# Schemas as DDL


def parse_schema(ddl: str) -> StructType:
    """A Spark DDL string (``a string, b bigint`` or ``struct<...>``) as a StructType."""
    try:
        dt = sparkapi.parse_ddl(ddl)
    except Exception as e:  # noqa: BLE001 - Spark raises several kinds for bad DDL
        raise errors.UsageError(f"--schema is not valid Spark DDL: {errors.first_line(str(e))}") from None
    if not isinstance(dt, StructType):
        raise errors.UsageError(f"--schema must list fields (e.g. 'prompt string'), got {ddl!r}")
    return dt


def schema_ddl(schema: StructType) -> str:
    """A DDL string that ``parse_schema`` (and ``--schema``) read back as the same schema."""
    def quote(name: str) -> str:
        return name if name.isidentifier() else "`" + name.replace("`", "``") + "`"
    return ", ".join(f"{quote(f.name)} {f.dataType.simpleString()}" for f in schema.fields)


def with_required(schema: StructType, required: Sequence[str]) -> StructType:
    """``schema`` plus, as strings, the required fields it lacks (no sampled line held them). A
    sampled field whose name differs from a required one only in case gives way to it (its values
    are then a field the schema lacks): two such columns could not be told apart."""
    names = set(schema.fieldNames())
    missing = [n for n in required if n not in names]
    folded = {n.lower() for n in missing}
    kept = [f for f in schema.fields if f.name.lower() not in folded]
    return StructType(kept + [StructField(n, StringType()) for n in missing])


def explicit_schema(opts: "ConvertOptions") -> StructType | None:
    """The schema ``--schema`` gives, after checking it against the other options (UsageError if
    wrong); None without ``--schema``."""
    if not opts.schema:
        return None
    explicit = parse_schema(opts.schema)
    jsonl.check_schema(explicit)
    absent = [n for n in opts.required_fields if n not in explicit.fieldNames()]
    if absent:
        raise errors.UsageError(f"--schema lacks required field(s) {', '.join(absent)} "
                                "(add them or change --required-fields)")
    if opts.with_source_file and "source_file" in explicit.fieldNames():
        raise errors.UsageError("--with-source-file clashes with a schema field named source_file")
    return explicit
