"""Lines of JSONL as the convert job judges them.

Every line is parsed once, in the JVM, by one streaming pass (``promptscore/convert/java/JsonLineParser.java``,
Jackson's ``JsonParser``) that yields either the row of the schema or the reason the line is set
aside, with a ``detail``, plus the paths of the fields the schema lacks. A line is ``ok`` (a row
of the output), ``blank`` (only whitespace, after an optional byte-order mark) or ``reject``. The
reasons, in the order they are looked for:

``line_too_long``, then ``invalid_utf8`` (strict UTF-8), then the line's syntax (``not_json_object``,
``trailing_data``, ``too_deep``), then the first value problem in the line (``invalid_unicode``,
``duplicate_key``, ``schema_mismatch``, ``number_out_of_range``), then ``missing_required_field``,
then (with ``strict``) ``unknown_field``.

Values are kept exactly: a number that does not fit its column (or overflows to infinity, or
underflows to zero) is ``number_out_of_range``, never rounded into range; a string in a numeric or
boolean column is ``schema_mismatch``; a value of any other JSON type in a ``string`` column keeps
its JSON text byte for byte as the line wrote it.
"""

from __future__ import annotations

from typing import Any, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, MapType, StringType, StructField, StructType

from promptscore import errors, sparkapi
from promptscore.convert import reader

KIND_OK, KIND_BLANK, KIND_REJECT = "ok", "blank", "reject"
# The one list of line reasons; the JVM parser names exactly these (a test checks).
REASONS = ("line_too_long", "invalid_utf8", "not_json_object", "trailing_data", "too_deep",
           "schema_mismatch", "missing_required_field", "unknown_field", "duplicate_key",
           "number_out_of_range", "invalid_unicode")
FILE_REASONS = ("corrupt_file", "unreadable_file")
MAX_DEPTH = 1000
REJECTS_SCHEMA = "source_file string, raw string, raw_bytes binary, reason string, detail string"
_PARSED = "parsed"


def output_schema(schema: StructType) -> StructType:
    """The parse's rows: the file, the kind, why (for rejects), the unknown field paths, the line
    itself (``value``, only for rejects) and the record (``parsed``, only for ``ok`` lines)."""
    return StructType([
        StructField("source_file", StringType()),
        StructField("kind", StringType(), False),
        StructField("reason", StringType()),
        StructField("detail", StringType()),
        StructField("unknown", ArrayType(StringType(), False), False),
        StructField("value", StringType()),
        StructField(_PARSED, schema),
    ])


def check_schema(schema: StructType, what: str = "--schema") -> None:
    """Refuse (UsageError, exit 2) a schema the parser cannot fill exactly: a type it does not
    support, or two fields of one struct whose names differ only in case (Spark would not tell
    them apart)."""
    problem = unsupported(schema)
    if problem:
        raise errors.UsageError(f"{what}: {problem}")
    clash = case_clash(schema)
    if clash:
        raise errors.UsageError(f"{what}: fields {clash[0]!r} and {clash[1]!r} differ only in case; Spark does not "
                             "tell them apart: keep one (the other is then an unknown field)")


_SUPPORTED = ("string", "boolean", "tinyint", "smallint", "int", "bigint", "float", "double")


def unsupported(t: DataType, path: str = "") -> str | None:
    """Why the parser cannot fill a column of type ``t`` (None when it can); mirrors the JVM's check."""
    from pyspark.sql.types import DecimalType

    if isinstance(t, StructType):
        for f in t.fields:
            found = unsupported(f.dataType, f"{path}.{f.name}" if path else f.name)
            if found:
                return found
        return None
    if isinstance(t, ArrayType):
        return unsupported(t.elementType, path + "[]")
    if isinstance(t, MapType):
        if not isinstance(t.keyType, StringType):
            return f"{path}: map keys must be string (JSON object keys are strings)"
        return unsupported(t.valueType, path + "{}")
    if isinstance(t, DecimalType) or type(t) is StringType or t.simpleString() in _SUPPORTED:
        return None
    return (f"{path}: type {t.simpleString()} is not supported (use string, boolean, tinyint, smallint, int, "
            "bigint, float, double, decimal, struct, array or map<string,...>; read dates and times as string)")


def case_clash(t: DataType) -> tuple[str, str] | None:
    """Two field names of one struct (at any depth) that differ only in case, or None."""
    if isinstance(t, StructType):
        seen: dict[str, str] = {}
        for f in t.fields:
            key = f.name.lower()
            if key in seen:
                return seen[key], f.name
            seen[key] = f.name
        for f in t.fields:
            found = case_clash(f.dataType)
            if found:
                return found
    elif isinstance(t, ArrayType):
        return case_clash(t.elementType)
    elif isinstance(t, MapType):
        return case_clash(t.valueType)
    return None


def parser_spec(spark: SparkSession, schema: StructType, required: Sequence[str] = ("prompt",),
                max_line_bytes: int = 64 << 20, strict: bool = False, check_fields: bool = True):
    """The JVM parser's spec (``JsonLineParser.Spec``): what each task's parser is built from.
    Raises UsageError (exit 2) when the parser's jar cannot be loaded or the schema holds a type
    it does not support."""
    check_schema(schema)
    reader.require(spark)
    cls = getattr(sparkapi.jvm(spark), reader.PARSER_CLASS)
    return cls.spec(schema.json(), "\u0000".join(required), int(max_line_bytes), bool(strict), bool(check_fields))


def line_rows(lines: DataFrame) -> Any:
    """The ``source_file, value`` rows of ``lines`` (as ``parse_lines`` takes them) as the JVM RDD
    that the parser reads: planned, and its code compiled, now; nothing is read yet."""
    source = F.col("source_file") if "source_file" in lines.columns else F.col("_metadata.file_path")
    rows = lines.select(source.cast("string").alias("source_file"), F.col("value").cast("string"))
    return sparkapi.internal_rows(rows)


def parse_lines(lines: DataFrame, schema: StructType, required: Sequence[str] = ("prompt",),
                max_line_bytes: int = 64 << 20, strict: bool = False, check_fields: bool = True,
                spec=None, rows=None) -> DataFrame:
    """Parse each line against ``schema`` and sort it: ``ok``, ``blank`` or ``reject``.

    Input: the lines of files (Spark's text source: ``value`` plus the hidden ``_metadata``), or
    any DataFrame with ``value`` and ``source_file`` columns. Output: ``output_schema(schema)``.
    ``unknown`` holds the dotted paths of fields the schema lacks (``x``, ``o.deep``, ``arr[].b``,
    ``m{}.k`` inside a map's values); empty with ``check_fields=False``. ``spec``: a parser spec
    made before (``parser_spec``), instead of the arguments; ``rows``: ``line_rows(lines)`` made
    before.
    """
    spark = lines.sparkSession
    if spec is None:
        spec = parser_spec(spark, schema, required, max_line_bytes, strict, check_fields)
    parsed = getattr(sparkapi.jvm(spark), reader.PARSER_CLASS).parseRows(
        line_rows(lines) if rows is None else rows, spec)
    return sparkapi.frame_of_rows(spark, parsed, output_schema(schema))


def good_rows(parsed: DataFrame, schema: StructType, with_source_file: bool = False) -> DataFrame:
    """The written rows: one column per schema field (plus ``source_file`` when asked)."""
    cols = [F.col(_PARSED).getField(f.name).alias(f.name) for f in schema.fields]
    if with_source_file:
        cols.append(F.col("source_file"))
    return parsed.filter(F.col("kind") == KIND_OK).select(*cols)


def reject_rows(parsed: DataFrame) -> DataFrame:
    """The set-aside lines: ``source_file``, ``raw`` (the line as read), ``raw_bytes`` (its exact
    bytes, only when they are not UTF-8: ``raw`` then shows them with U+FFFD), ``reason`` and
    ``detail``."""
    value = F.col("value")
    return (parsed.filter(F.col("kind") == KIND_REJECT)
            .select("source_file", F.decode(value.cast("binary"), "UTF-8").alias("raw"),
                    F.when(F.col("reason") == "invalid_utf8", value.cast("binary")).alias("raw_bytes"),
                    "reason", "detail"))
