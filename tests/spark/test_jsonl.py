"""parse_lines / good_rows / reject_rows on in-memory DataFrames: what each kind of line becomes
(the JVM parser); and the convert job's other pure helpers."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from promptscore.convert import jsonl, plan
from promptscore.convert.jsonl import KIND_BLANK, KIND_OK, KIND_REJECT
from promptscore.convert.schema import parse_schema, schema_ddl, with_required

SCHEMA_DDL = "id bigint, prompt string, meta struct<lang:string,score:double>"

LINES = [
    ('{"id": 1, "prompt": "hello", "meta": {"lang": "en", "score": 0.5}}', KIND_OK),
    ('{"id": 2, "prompt": "你好, プロンプト 🙂"}', KIND_OK),
    ("\ufeff" + '{"id": 3, "prompt": "after a byte-order mark"}', KIND_OK),
    ('{"id": 4, "prompt": 42}', KIND_OK),  # a number where a string is expected keeps its JSON text
    ("", KIND_BLANK),
    ("   \t ", KIND_BLANK),
    ('{"id": 5, "prompt": "cut off', KIND_REJECT),  # truncated object
    ("just some text", KIND_REJECT),  # plain text
    ('[{"id": 6, "prompt": "in an array"}]', KIND_REJECT),  # a JSON array
    ('"a bare string"', KIND_REJECT),
    ("123", KIND_REJECT),
    ('{"id": 7}', KIND_REJECT),  # no prompt
    ('{"id": 8, "prompt": null}', KIND_REJECT),
    ('{"id": "not a number", "prompt": "x"}', KIND_REJECT),  # does not fit the schema
    ('{"id": 9, "prompt": "a"}{"id": 10, "prompt": "b"}', KIND_REJECT),  # two objects on one line
    ('{"id": 11, "prompt": "c"} and more', KIND_REJECT),  # trailing text
    ('{"id": 12, "prompt": "' + "x" * 300 + '"}', KIND_REJECT),  # over the line limit of the tests
    ('{"id": 13, "prompt": "p", "meta": ' + "[" * 1100 + "]" * 1100 + "}", KIND_REJECT),  # too deep
    ('{"id": 14, "prompt": "\ufffd is a real character"}', KIND_OK),
]
LIMIT = 256


@pytest.fixture(scope="module")
def lines(spark):
    rows = [(f"file:/in/{i % 3}.jsonl", v) for i, (v, _) in enumerate(LINES)]
    return spark.createDataFrame(rows, "source_file string, value string")


@pytest.fixture(scope="module")
def schema(spark):
    return parse_schema(SCHEMA_DDL)


def test_each_line_gets_its_kind(spark, schema):
    # The parse keeps a line's text only for rejects: the file name says which line each row is.
    numbered = spark.createDataFrame([(str(i), v) for i, (v, _) in enumerate(LINES)],
                                     "source_file string, value string")
    got = jsonl.parse_lines(numbered, schema, max_line_bytes=LIMIT).select("source_file", "kind")
    expected = spark.createDataFrame([(str(i), k) for i, (_, k) in enumerate(LINES)], "source_file string, kind string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_good_rows_are_typed_records(spark, lines, schema):
    got = jsonl.good_rows(jsonl.parse_lines(lines, schema, max_line_bytes=LIMIT), schema)
    expected = spark.createDataFrame(
        [
            (1, "hello", ("en", 0.5)),
            (2, "你好, プロンプト 🙂", None),
            (3, "after a byte-order mark", None),
            (4, "42", None),
            (14, "\ufffd is a real character", None),
        ],
        SCHEMA_DDL,
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_good_rows_can_carry_the_source_file(lines, schema):
    got = jsonl.good_rows(jsonl.parse_lines(lines, schema, max_line_bytes=LIMIT), schema, with_source_file=True)
    assert got.columns == ["id", "prompt", "meta", "source_file"]
    assert {r.source_file for r in got.collect()} <= {"file:/in/0.jsonl", "file:/in/1.jsonl", "file:/in/2.jsonl"}


def test_rejects_keep_the_raw_line_and_say_why(spark, lines, schema):
    got = jsonl.reject_rows(jsonl.parse_lines(lines, schema, max_line_bytes=LIMIT))
    assert got.where("detail is null or detail = ''").count() == 0  # every line reject says what failed
    got = got.select("raw", "reason")
    expected = spark.createDataFrame(
        [
            ('{"id": 5, "prompt": "cut off', "not_json_object"),
            ("just some text", "not_json_object"),
            ('[{"id": 6, "prompt": "in an array"}]', "not_json_object"),
            ('"a bare string"', "not_json_object"),
            ("123", "not_json_object"),
            ('{"id": 7}', "missing_required_field"),
            ('{"id": 8, "prompt": null}', "missing_required_field"),
            ('{"id": "not a number", "prompt": "x"}', "schema_mismatch"),
            ('{"id": 9, "prompt": "a"}{"id": 10, "prompt": "b"}', "trailing_data"),
            ('{"id": 11, "prompt": "c"} and more', "trailing_data"),
            ('{"id": 12, "prompt": "' + "x" * 300 + '"}', "line_too_long"),
            ('{"id": 13, "prompt": "p", "meta": ' + "[" * 1100 + "]" * 1100 + "}", "line_too_long"),
        ],
        "raw string, reason string",
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_no_required_fields_accepts_objects_without_prompt(spark, schema):
    lines = spark.createDataFrame([("7", '{"id": 7}'), ("8", '{"id": 8, "prompt": null}'), ("t", "just some text")],
                                  "source_file string, value string")
    kinds = {r.source_file: r.kind for r in jsonl.parse_lines(lines, schema, required=()).collect()}
    assert kinds == {"7": KIND_OK, "8": KIND_OK, "t": KIND_REJECT}


def test_every_line_is_accounted_for(lines, schema):
    parsed = jsonl.parse_lines(lines, schema, max_line_bytes=LIMIT)
    good = jsonl.good_rows(parsed, schema).count()
    bad = jsonl.reject_rows(parsed).count()
    blank = parsed.filter(parsed.kind == KIND_BLANK).count()
    assert (good, bad, blank) == (5, 12, 2)
    assert good + bad + blank == lines.count()


def test_schema_ddl_round_trips(spark):
    ddl = "id bigint, `odd name` string, tags array<string>, m struct<a:double,b:boolean>"
    schema = parse_schema(ddl)
    assert parse_schema(schema_ddl(schema)) == schema


@pytest.mark.parametrize("bad", ["prompt strin", "prompt string,, x", "int"])
def test_bad_schema_ddl_is_a_usage_error(spark, bad):
    from promptscore.errors import UsageError

    with pytest.raises(UsageError, match="--schema"):
        parse_schema(bad)


def test_too_deep_is_told_apart_when_the_line_fits_the_limit(spark, schema):
    deep = '{"id": 13, "prompt": "p", "meta": ' + "[" * 1100 + "]" * 1100 + "}"
    lines = spark.createDataFrame([("f", deep)], "source_file string, value string")
    got = jsonl.reject_rows(jsonl.parse_lines(lines, schema)).select("reason", "detail").first()
    assert (got.reason, got.detail) == ("too_deep", "nested deeper than 1000 levels, at byte 1033")


def test_bytes_that_are_not_utf8_are_rejected_with_the_bytes_kept(spark, tmp_path, schema):
    raw = '{"id": 1, "prompt": "caf\xe9"}'.encode("latin-1")
    (tmp_path / "f.jsonl").write_bytes(raw + b"\n" + b'{"id": 2, "prompt": "ok"}\n')
    parsed = jsonl.parse_lines(spark.read.text(str(tmp_path / "f.jsonl")), schema)
    assert [r.prompt for r in jsonl.good_rows(parsed, schema).collect()] == ["ok"]
    rejected = jsonl.reject_rows(parsed).first()
    assert (rejected.reason, bytes(rejected.raw_bytes), rejected.detail) == \
        ("invalid_utf8", raw, "byte 24 is not UTF-8")
    assert rejected.raw == '{"id": 1, "prompt": "caf\ufffd"}'


@pytest.mark.parametrize("total, files, slots, target, ratio, splits", [
    (400 << 20, 4000, 2, 256 << 20, 0.3, 2),      # small input: one task per slot
    (400 << 30, 4_000_000, 64, 256 << 20, 0.3, 512),  # the mission: whole waves of 64 slots
    (10 << 20, 1, 8, 1 << 20, 1.0, 16),
])
def test_split_bytes_fills_whole_waves(total, files, slots, target, ratio, splits):
    open_cost = 8 << 10
    split = plan.split_bytes(total, files, open_cost, slots, target, ratio)
    n = (total + files * open_cost) / split
    assert splits - 1 < n <= splits


def test_parquet_options_skip_dictionaries_for_mostly_distinct_strings(schema):
    opts = plan.parquet_options(schema, {"prompt": 0.99, "id": 0.1})
    assert opts == {"parquet.enable.dictionary#prompt": "false"}


def test_the_parse_says_what_failed_and_where(spark, schema):
    """The detail of each kind of reject, from the same single parse that makes the rows."""
    cases = [
        ('{"id": "x", "prompt": "p"}', "schema_mismatch", "id: expected bigint, found a string"),
        ('{"id": 1, "prompt": "p", "meta": {"lang": 1.5, "score": 1}}', KIND_OK, None),
        ('{"id": 1, "prompt": "p", "meta": {"score": "high"}}', "schema_mismatch",
         "meta.score: expected double, found a string"),
        ('{"id": 1, "prompt": "p", "meta": {"lang": "en", "lang": "zh"}}', "duplicate_key", "meta.lang"),
        ('{"id": 1, "prompt": "p", "meta": {"score": 1e999}}', "number_out_of_range",
         "meta.score: 1e999 does not fit double"),
        ('{"id": 1, "prompt": "\\udc00"}', "invalid_unicode", "prompt: a lone surrogate \\udc00"),
        ("just some text", "not_json_object", "Unrecognized token 'just': was expecting..."),
        ('"a bare string"', "not_json_object", "the line is a JSON string, not a JSON object"),
        ("123", "not_json_object", "the line is a JSON number, not a JSON object"),
        ("null", "not_json_object", "the line is JSON null, not a JSON object"),
        ('{"id": 7}', "missing_required_field", "prompt is absent"),
    ]
    lines = spark.createDataFrame([("f", line) for line, _, _ in cases], "source_file string, value string")
    got = {r.value: (r.reason, r.detail) for r in jsonl.parse_lines(lines, schema).collect() if r.kind == KIND_REJECT}
    for line, reason, detail in cases:
        if reason == KIND_OK:
            assert line not in got
            continue
        assert got[line][0] == reason, line
        assert got[line][1].startswith(detail[:-3]) if detail.endswith("...") else got[line][1] == detail, got[line]


def test_unknown_fields_are_found_at_every_depth(spark):
    schema = parse_schema("prompt string, o struct<a:bigint>, arr array<struct<b:bigint>>")
    lines = spark.createDataFrame([
        ("f", '{"prompt": "p", "x": {"y": 1}, "o": {"a": 1, "deep": [1]}, "arr": [{"b": 1, "c": 2}, {"c": 3}]}'),
        ("f", '{"prompt": "q"}'),
    ], "source_file string, value string")
    got = jsonl.parse_lines(lines, schema).select("kind", "unknown")
    expected = spark.createDataFrame([("ok", ["x", "o.deep", "arr[].c"]), ("ok", [])],
                                     "kind string, unknown array<string>")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    unchecked = jsonl.parse_lines(lines, schema, check_fields=False).select("unknown").collect()
    assert [r.unknown for r in unchecked] == [[], []]


def test_a_required_field_spelled_otherwise_in_the_sample_is_its_own_column():
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    sampled = StructType([StructField("Prompt", LongType()), StructField("id", StringType())])
    assert with_required(sampled, ["prompt"]) == StructType(
        [StructField("id", StringType()), StructField("prompt", StringType())])


def test_utf8_is_checked_as_strictly_as_python_decodes_it(spark, tmp_path):
    """Random short byte strings inside a JSON string: a line is invalid_utf8, at the offset of
    the first bad sequence, exactly when Python's strict decoder refuses it."""
    import random

    rng = random.Random(7)
    pieces = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2\x80", b"\xdf\xbf", b"\xe0\x80\x80", b"\xe0\xa0\x80",
              b"\xed\x9f\xbf", b"\xed\xa0\x80", b"\xef\xbf\xbf", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80",
              b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xe6\x97", b"\xe6\x97\xa5",
              b"a", b"abcdefgh", b"\xe4\xbd\xa0\xe5\xa5\xbd"]
    lines = [b'{"prompt": "' + b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) + b'"}'
             for _ in range(3000)]
    (tmp_path / "f.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    schema = parse_schema("prompt string")
    got = {bytes(r.raw_bytes) if r.raw_bytes else r.raw.encode(): r.detail
           for r in jsonl.reject_rows(jsonl.parse_lines(spark.read.text(str(tmp_path / "f.jsonl")), schema)).collect()}
    expected = {}
    for line in lines:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            expected[line] = f"byte {e.start} is not UTF-8"
    assert got == expected and 0 < len(expected) < len(lines)
