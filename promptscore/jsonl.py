"""Lines of JSONL as the convert job judges them: pure DataFrame transformations.

Every line is parsed once, in the JVM, and sorted into ``ok`` (a row of the output), ``blank``
(only whitespace) or ``reject``. A line is a reject when it is longer than the line limit, is not
one JSON object with nothing after it, has values that do not fit the schema, lacks a required
field, holds bytes that are not UTF-8, is nested deeper than the parser takes, or (with
``strict``) carries a field the schema does not have. ``reject_rows`` says which, for the lines
set aside.
"""

from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, MapType, StringType, StructField, StructType

CORRUPT = "_corrupt_record"
KIND_OK, KIND_BLANK, KIND_REJECT = "ok", "blank", "reject"
REASONS = ("line_too_long", "invalid_utf8", "not_json_object", "trailing_data", "too_deep",
           "schema_mismatch", "missing_required_field", "unknown_field")
FILE_REASONS = ("corrupt_file", "unreadable_file")
MAX_DEPTH = 1000
REJECTS_SCHEMA = "source_file string, raw string, raw_bytes binary, reason string, detail string"
_BOM = "\ufeff"
_BLANK = r"^[ \t\r\n]*$"


def _opts(max_line_bytes: int, depth: int | None = MAX_DEPTH + 1) -> dict[str, str]:
    opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT,
            # Jackson's own limit on one string (20 MB by default) must not reject a valid line
            # that is within the job's line limit.
            "maxStringLen": str(max(max_line_bytes, 1))}
    if depth is not None:
        opts["maxNestingDepth"] = str(depth)  # +1: the parse wraps each line in one more object
    return opts


def _wrap(text: Column) -> Column:
    """``{"r": <line>}``: the parser then fails on anything after the line's first value."""
    return F.concat(F.lit('{"r":'), text, F.lit("}"))


def _text(value: Column) -> Column:
    return F.when(value.startswith(_BOM), F.expr("substring(value, 2)")).otherwise(value)


def _string_checks(r: Column, schema: StructType) -> Column:
    """True when a parsed string holds U+FFFD, the mark of bytes that were not UTF-8 (or of a
    real U+FFFD, which the exact check that follows tells apart)."""
    cond = F.lit(False)
    for f in schema.fields:
        if isinstance(f.dataType, StringType):
            cond = cond | (F.instr(r[f.name], "\ufffd") > 0)
        elif _holds_strings(f.dataType):
            cond = cond | (F.instr(F.to_json(r[f.name]), "\ufffd") > 0)
    return cond


def _holds_strings(t: DataType) -> bool:
    if isinstance(t, StringType):
        return True
    if isinstance(t, ArrayType):
        return _holds_strings(t.elementType)
    if isinstance(t, MapType):
        return True
    if isinstance(t, StructType):
        return any(_holds_strings(f.dataType) for f in t.fields)
    return False


def not_utf8(value: Column) -> Column:
    """True when the line's bytes are not valid UTF-8 (Spark keeps the bytes it read as they are)."""
    return F.decode(value.cast("binary"), "UTF-8") != value


def parse_lines(lines: DataFrame, schema: StructType, required: Sequence[str] = ("prompt",),
                max_line_bytes: int = 64 << 20, strict: bool = False, check_fields: bool = True) -> DataFrame:
    """Parse each line against ``schema`` and sort it: ``ok``, ``blank`` or ``reject``.

    Input: the lines of files (``value`` plus the hidden ``_metadata``), or any DataFrame with
    ``value`` and ``source_file`` columns. Output columns: ``source_file``, ``value``, ``parsed``
    (the record as a struct), ``kind`` and ``unknown`` (the line's top-level fields that are not
    in the schema, for ``ok`` lines; empty with ``check_fields=False``). A leading byte-order mark
    is ignored.
    """
    value = F.col("value")
    source = F.col("source_file") if "source_file" in lines.columns else F.col("_metadata.file_path")
    wrapped = StructType([StructField("r", schema), StructField(CORRUPT, StringType())])
    known = F.array(*[F.lit(f.name) for f in schema.fields]) if schema.fields else F.array().cast("array<string>")
    text = _text(value)
    keys = F.coalesce(F.array_except(F.json_object_keys(F.col("_text")), known), F.array().cast("array<string>")) \
        if check_fields else F.array().cast("array<string>")
    # Two projections, so that Spark parses each line once: the optimizer does not merge a
    # projection whose expensive results (the parse, the keys) are used more than once above it.
    first = (lines.select(source.alias("source_file"), value, text.alias("_text"))
             .select("source_file", "value", "_text",
                     F.from_json(_wrap(F.col("_text")), wrapped, _opts(max_line_bytes)).alias("_w"),
                     keys.alias("unknown")))
    w = F.col("_w")
    r = w["r"]
    missing = F.lit(False)
    for name in required:
        missing = missing | r[name].isNull()
    kind = (F.when(F.octet_length(value) > max_line_bytes, F.lit(KIND_REJECT))
            .when(w[CORRUPT].isNotNull() | r.isNull(),
                  F.when(F.col("_text").rlike(_BLANK), F.lit(KIND_BLANK)).otherwise(F.lit(KIND_REJECT)))
            .when(missing, F.lit(KIND_REJECT))
            .when(_string_checks(r, schema) & not_utf8(value), F.lit(KIND_REJECT)))
    if strict:
        kind = kind.when(F.size(F.col("unknown")) > 0, F.lit(KIND_REJECT))
    kind = kind.otherwise(F.lit(KIND_OK))
    return first.select("source_file", "value", r.alias("parsed"), kind.alias("kind"), "unknown", "_text", "_w")


def good_rows(parsed: DataFrame, schema: StructType, with_source_file: bool = False) -> DataFrame:
    """The written rows: one column per schema field (plus ``source_file`` when asked)."""
    cols = [F.col("parsed")[f.name].alias(f.name) for f in schema.fields]
    if with_source_file:
        cols.append(F.col("source_file"))
    return parsed.filter(F.col("kind") == KIND_OK).select(*cols)


def reject_reason(parsed: DataFrame, schema: StructType, required: Sequence[str], max_line_bytes: int,
                  strict: bool) -> Column:
    """Why a rejected line (a row of ``parse_lines``) was set aside: one of ``REASONS``."""
    value, text, w = F.col("value"), F.col("_text"), F.col("_w")
    parsed_ok = w[CORRUPT].isNull() & w["r"].isNotNull()
    missing = F.lit(False)
    for name in required:
        missing = missing | w["r"][name].isNull()
    deep = _opts(max_line_bytes, depth=1 << 20)
    as_object = F.from_json(text, "map<string,string>", deep)
    single = F.from_json(_wrap(text), "struct<r:map<string,string>, _corrupt_record:string>", deep)
    shallow = F.from_json(text, "map<string,string>", _opts(max_line_bytes, depth=MAX_DEPTH))
    reason = (F.when(F.octet_length(value) > max_line_bytes, F.lit("line_too_long"))
              .when(not_utf8(value), F.lit("invalid_utf8"))
              .when(parsed_ok & missing, F.lit("missing_required_field")))
    if strict:
        reason = reason.when(parsed_ok & (F.size(F.col("unknown")) > 0), F.lit("unknown_field"))
    return (reason.when(as_object.isNull(), F.lit("not_json_object"))
            .when(single[CORRUPT].isNotNull() | single["r"].isNull(), F.lit("trailing_data"))
            .when(shallow.isNull(), F.lit("too_deep"))
            .otherwise(F.lit("schema_mismatch")))


def reject_rows(parsed: DataFrame, schema: StructType, required: Sequence[str] = ("prompt",),
                max_line_bytes: int = 64 << 20, strict: bool = False) -> DataFrame:
    """The set-aside lines: ``source_file``, ``raw`` (the line as read), ``raw_bytes`` (its exact
    bytes, only when they are not UTF-8: ``raw`` then shows them with U+FFFD), ``reason`` and
    ``detail`` (null for lines; the error for files that could not be read)."""
    value = F.col("value")
    reason = reject_reason(parsed, schema, required, max_line_bytes, strict)
    return (parsed.filter(F.col("kind") == KIND_REJECT)
            .select("source_file", value.alias("raw"), reason.alias("reason"))
            .select("source_file", F.decode(F.col("raw").cast("binary"), "UTF-8").alias("raw"),
                    F.when(F.col("reason") == "invalid_utf8", F.col("raw").cast("binary")).alias("raw_bytes"),
                    "reason", F.lit(None).cast("string").alias("detail")))
