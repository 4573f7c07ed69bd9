"""parse_lines / good_rows / reject_rows on in-memory DataFrames: what each kind of line becomes."""

from __future__ import annotations

import pytest
from chispa import assert_df_equality

from promptscore import convert
from promptscore.convert import KIND_BLANK, KIND_OK, KIND_REJECT

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
]


@pytest.fixture(scope="module")
def lines(spark):
    rows = [(f"file:/in/{i % 3}.jsonl", v) for i, (v, _) in enumerate(LINES)]
    return spark.createDataFrame(rows, "source_file string, value string")


@pytest.fixture(scope="module")
def schema(spark):
    return convert.parse_schema(spark, SCHEMA_DDL)


def test_each_line_gets_its_kind(spark, lines, schema):
    got = convert.parse_lines(lines, schema).select("value", "kind")
    expected = spark.createDataFrame(LINES, "value string, kind string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_good_rows_are_typed_records(spark, lines, schema):
    got = convert.good_rows(convert.parse_lines(lines, schema), schema)
    expected = spark.createDataFrame(
        [
            (1, "hello", ("en", 0.5)),
            (2, "你好, プロンプト 🙂", None),
            (3, "after a byte-order mark", None),
            (4, "42", None),
        ],
        SCHEMA_DDL,
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_good_rows_can_carry_the_source_file(lines, schema):
    got = convert.good_rows(convert.parse_lines(lines, schema), schema, with_source_file=True)
    assert got.columns == ["id", "prompt", "meta", "source_file"]
    assert {r.source_file for r in got.collect()} <= {"file:/in/0.jsonl", "file:/in/1.jsonl", "file:/in/2.jsonl"}


def test_rejects_keep_the_raw_line_and_say_why(spark, lines, schema):
    got = convert.reject_rows(convert.parse_lines(lines, schema)).select("raw", "reason")
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
        ],
        "raw string, reason string",
    )
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_no_required_fields_accepts_objects_without_prompt(lines, schema):
    kinds = {r.value: r.kind for r in convert.parse_lines(lines, schema, required=()).collect()}
    assert kinds['{"id": 7}'] == KIND_OK
    assert kinds['{"id": 8, "prompt": null}'] == KIND_OK
    assert kinds["just some text"] == KIND_REJECT


def test_every_line_is_accounted_for(lines, schema):
    parsed = convert.parse_lines(lines, schema)
    good = convert.good_rows(parsed, schema).count()
    bad = convert.reject_rows(parsed).count()
    blank = parsed.filter(parsed.kind == KIND_BLANK).count()
    assert (good, bad, blank) == (4, 8, 2)
    assert good + bad + blank == lines.count()


def test_schema_ddl_round_trips(spark):
    ddl = "id bigint, `odd name` string, tags array<string>, m struct<a:double,b:boolean>"
    schema = convert.parse_schema(spark, ddl)
    assert convert.parse_schema(spark, convert.schema_ddl(schema)) == schema


@pytest.mark.parametrize("bad", ["prompt strin", "prompt string,, x", "int"])
def test_bad_schema_ddl_is_a_usage_error(spark, bad):
    from promptscore.cli import UsageError

    with pytest.raises(UsageError, match="--schema"):
        convert.parse_schema(spark, bad)
