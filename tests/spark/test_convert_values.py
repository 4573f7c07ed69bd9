"""Every value the convert job writes is the input's, exactly, or its line is a named, counted
reject with a detail: numbers out of range, JSON text in string columns, duplicate keys, lone
surrogates, unknown fields at every depth, keys that differ only in case. Real files in, real
Parquet read back, with both readers."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from chispa import assert_df_equality
from conftest import run_job, write_lines

from promptscore.convert import jsonl, reader

SCHEMA = ("id string, prompt string, n bigint, i int, s smallint, t tinyint, d double, f float, "
          "dec decimal(5,2), ok boolean, o struct<a:bigint,b:string>, tags array<string>, m map<string,bigint>, "
          "recs array<struct<a:bigint>>")

# (line, the row it becomes: only the fields it sets)
GOOD = [
    ('{"id": "g1", "prompt": "plain", "n": 9223372036854775807, "i": -2147483648, "s": 32767, "t": -128, '
     '"d": 0.1, "f": 1.5, "dec": 123.45, "ok": true, "o": {"a": 1, "b": "x"}, "tags": ["a", "b"], "m": {"k": 1}}',
     dict(prompt="plain", n=9223372036854775807, i=-2147483648, s=32767, t=-128, d=0.1, f=1.5,
          dec=Decimal("123.45"), ok=True, o=(1, "x"), tags=["a", "b"], m={"k": 1})),
    ('{"id": "g2", "prompt": 1.50, "d": 1e308, "dec": 1.50, "o": {"a": -9223372036854775808}}',
     dict(prompt="1.50", d=1e308, dec=Decimal("1.50"), o=(-9223372036854775808, None))),
    ('{"id": "g3", "prompt": {"k": 2}, "d": 4.9e-324, "tags": [1.50, true, {"x": [1,  2]}, null]}',
     dict(prompt='{"k": 2}', d=5e-324, tags=["1.50", "true", '{"x": [1,  2]}', None])),
    ('{"id": "g4", "prompt": true, "d": 0e-400, "dec": 1e2, "ok": false}',
     dict(prompt="true", d=0.0, dec=Decimal("100.00"), ok=False)),
    ('{"id": "g5", "prompt": "a \\ud83d\\ude00 \\u00e9 \\"q\\" \\\\ \\n end"}',
     dict(prompt='a \U0001f600 \u00e9 "q" \\ \n end')),
    ('{"id": "g6", "prompt": 0.1000000000000000055511151231257827}',
     dict(prompt="0.1000000000000000055511151231257827")),
    ('{"id": "g7", "prompt": 1e400, "n": -0}', dict(prompt="1e400", n=0)),
    ('{"id": "g8", "prompt": [1, 2 ], "o": null, "tags": []}', dict(prompt="[1, 2 ]", tags=[])),
    ('{"id": "g9", "prompt": "p", "o": {"a": 1, "deep": {"x": 1}}, "extra": 1}', dict(prompt="p", o=(1, None))),
    ('{"id": "g10", "prompt": "p", "recs": [{"a": 1, "b": 2}, {"a": 2}], "m": {"k": null}}',
     dict(prompt="p", recs=[(1,), (2,)], m={"k": None})),
    ('{"id": "g11", "prompt": "ÿ 日本 \ufffd", "f": -3.4028235e38}', dict(prompt="ÿ 日本 \ufffd", f=-3.4028235e38)),
]

# (line, reason, detail) for lines of text; a detail ending in "..." is a prefix
BAD = [
    ('{"id": "b1", "prompt": "p", "n": 9223372036854775808}', "number_out_of_range",
     "n: 9223372036854775808 does not fit bigint"),
    ('{"id": "b2", "prompt": "p", "i": 2147483648}', "number_out_of_range", "i: 2147483648 does not fit int"),
    ('{"id": "b3", "prompt": "p", "s": 32768}', "number_out_of_range", "s: 32768 does not fit smallint"),
    ('{"id": "b4", "prompt": "p", "t": -129}', "number_out_of_range", "t: -129 does not fit tinyint"),
    ('{"id": "b5", "prompt": "p", "d": 1e400}', "number_out_of_range", "d: 1e400 does not fit double"),
    ('{"id": "b6", "prompt": "p", "d": -1e400}', "number_out_of_range", "d: -1e400 does not fit double"),
    ('{"id": "b7", "prompt": "p", "d": 1e-400}', "number_out_of_range", "d: 1e-400 does not fit double"),
    ('{"id": "b8", "prompt": "p", "f": 1e39}', "number_out_of_range", "f: 1e39 does not fit float"),
    ('{"id": "b9", "prompt": "p", "f": 1e-50}', "number_out_of_range", "f: 1e-50 does not fit float"),
    ('{"id": "b10", "prompt": "p", "dec": 1.234}', "number_out_of_range", "dec: 1.234 does not fit decimal(5,2)"),
    ('{"id": "b11", "prompt": "p", "dec": 1234.5}', "number_out_of_range", "dec: 1234.5 does not fit decimal(5,2)"),
    ('{"id": "b12", "prompt": "p", "n": 12345678901234567890123456789012345678901}', "number_out_of_range",
     "n: 1234567890123456789012345678901234567890... does not fit bigint"),
    ('{"id": "b13", "prompt": "p", "d": NaN}', "not_json_object", "Non-standard token 'NaN' (at byte 37)"),
    ('{"id": "b14", "prompt": "p", "d": Infinity}', "not_json_object", "Non-standard token 'Infinity' (at byte 42)"),
    ('{"id": "b15", "prompt": "p", "d": -Infinity}', "not_json_object", "Non-standard token '-Infinity' (at byte 43)"),
    ('{"id": "b16", "prompt": "p", "d": "NaN"}', "schema_mismatch", "d: expected double, found a string"),
    ('{"id": "b17", "prompt": "p", "n": "12"}', "schema_mismatch", "n: expected bigint, found a string"),
    ('{"id": "b18", "prompt": "p", "n": 1.0}', "schema_mismatch",
     "n: expected bigint, found a number with a fraction or exponent"),
    ('{"id": "b19", "prompt": "p", "o": {"a": "x"}}', "schema_mismatch", "o.a: expected bigint, found a string"),
    ('{"id": "b20", "prompt": "p", "tags": "a"}', "schema_mismatch", "tags: expected array<string>, found a string"),
    ('{"id": "b21", "prompt": "p", "ok": "true"}', "schema_mismatch", "ok: expected boolean, found a string"),
    ('{"id": "b22", "prompt": "a", "prompt": "b"}', "duplicate_key", "prompt"),
    ('{"id": "b23", "prompt": "p", "o": {"a": 1, "a": 2}}', "duplicate_key", "o.a"),
    ('{"id": "b24", "prompt": "p", "m": {"k": 1, "k": 2}}', "duplicate_key", "m.k"),
    ('{"id": "b25", "prompt": "p", "extra": {"x": 1, "x": 1}}', "duplicate_key", "extra.x"),
    ('{"id": "b26", "prompt": {"k": 1, "k": 2}}', "duplicate_key", "prompt.k"),
    ('{"id": "b27", "prompt": "p", "recs": [{"a": 1}, {"a": 1, "a": 2}]}', "duplicate_key", "recs[].a"),
    ('{"id": "b28", "prompt": "p", "Prompt": "q"}', "duplicate_key", "prompt and Prompt differ only in case"),
    ('{"id": "b29", "prompt": "\\ud800"}', "invalid_unicode", "prompt: a lone surrogate \\ud800"),
    ('{"id": "b30", "prompt": "x\\udc00y"}', "invalid_unicode", "prompt: a lone surrogate \\udc00"),
    ('{"id": "b31", "prompt": "p", "tags": ["\\ud83d"]}', "invalid_unicode", "tags[]: a lone surrogate \\ud83d"),
    ('{"id": "b32", "prompt": "p", "extra": "\\udfff"}', "invalid_unicode", "extra: a lone surrogate \\udfff"),
    ('{"id": "b33"}', "missing_required_field", "prompt is absent"),
    ('{"id": "b34", "prompt": null}', "missing_required_field", "prompt is null"),
    ('{"id": "b35", "prompt": "p"} x', "trailing_data", "more after the object, at byte 29"),
    ('{"id": "b36", "prompt": "p"}{"id": "b37"}', "trailing_data", "more after the object, at byte 28"),
    ('{"id": "b38", "prompt": ', "not_json_object", "Unexpected end-of-input..."),
    ("[1]", "not_json_object", "the line is a JSON array, not a JSON object"),
    ('{"id": "b39", "prompt": "p", "extra": ' + "[" * 1000 + "]" * 1000 + "}", "too_deep",
     "nested deeper than 1000 levels, at byte 1037"),
    ('{"id": "b40", "prompt": "p", "d": 1e400, "extra": ' + "[" * 1000 + "]" * 1000 + "}", "too_deep",
     "nested deeper than 1000 levels, at byte 1049"),
    ('{"id": "b41", "prompt": "' + "x" * 5000 + '"}', "line_too_long", "5027 bytes, over the limit of 4096"),
]

# Lines that are not UTF-8: (bytes, detail)
NOT_UTF8 = [
    (b'{"id": "u1", "prompt": "caf\xe9"}', "byte 27 is not UTF-8"),          # Latin-1
    (b'{"id": "u2", "prompt": "\xc0\x80"}', "byte 24 is not UTF-8"),         # an overlong NUL
    (b'{"id": "u3", "prompt": "\xed\xa0\x80"}', "byte 24 is not UTF-8"),     # an encoded surrogate
    (b'{"id": "u4", "prompt": "\xf4\x90\x80\x80"}', "byte 24 is not UTF-8"),  # above U+10FFFF
    (b'{"id": "u5", "prompt": "p"} \xe6\x97', "byte 28 is not UTF-8"),       # cut short
]


def expected_rows(spark):
    from pyspark.sql.types import StructType

    schema = StructType.fromJson(json.loads(spark.createDataFrame([], SCHEMA).schema.json()))
    rows = []
    for line, values in GOOD:
        record = json.loads(line, parse_float=str, parse_int=str, parse_constant=str)
        rows.append(tuple(record["id"] if f.name == "id" else values.get(f.name) for f in schema.fields))
    return spark.createDataFrame(rows, schema)


def write_input(src: Path) -> list[bytes]:
    """One file: the good lines with the bad ones between them."""
    lines = []
    bad = [b.encode() for b, _, _ in BAD] + [b for b, _ in NOT_UTF8]
    for i in range(max(len(GOOD), len(bad))):
        if i < len(GOOD):
            lines.append(GOOD[i][0].encode())
        if i < len(bad):
            lines.append(bad[i])
    src.mkdir(parents=True, exist_ok=True)
    (src / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return lines


@pytest.mark.parametrize("in_flight", [16, 0])
def test_every_value_is_exact_or_its_line_a_named_reject(spark, tmp_path, capsys, in_flight):
    src, out = tmp_path / "in", tmp_path / "out"
    lines = write_input(src)
    argv = ["--input", src, "--output", out, "--schema", SCHEMA, "--max-line-bytes", "4k"]
    spark.conf.set(reader.KEY, str(in_flight))
    try:
        # Read-ahead on: under --max-bad-fraction 1, exit 0. Spark's text source: the default
        # fraction, exit 3, and the same output and rejects published.
        code, _, err = run_job("convert", argv + (["--max-bad-fraction", "1"] if in_flight else []), capsys)
    finally:
        spark.conf.unset(reader.KEY)
    assert code == (0 if in_flight else 3), err
    got = spark.read.parquet(str(out)).orderBy("id")  # (a map column cannot be sorted on)
    assert_df_equality(got, expected_rows(spark).orderBy("id"), ignore_nullable=True)

    rejects = spark.read.parquet(str(out / "_rejects"))
    by_line = {(bytes(r.raw_bytes) if r.raw_bytes else r.raw.encode()): (r.reason, r.detail) for r in rejects.collect()}
    expected = {line.encode(): (reason, detail) for line, reason, detail in BAD}
    expected.update({raw: ("invalid_utf8", detail) for raw, detail in NOT_UTF8})
    assert set(by_line) == set(expected) and rejects.count() == len(expected)
    wrong = []
    for line, (reason, detail) in expected.items():
        got_reason, got_detail = by_line[line]
        same = got_detail.startswith(detail[:-3]) if detail.endswith("...") else got_detail == detail
        if got_reason != reason or not same:
            wrong.append((line[:60], got_reason, got_detail))
    assert not wrong, wrong

    report = json.loads((out / "_report.json").read_text())
    counts: dict[str, int] = {}
    for reason, _ in expected.values():
        counts[reason] = counts.get(reason, 0) + 1
    assert report["reject_reasons"] == counts
    assert report["rows_written"] == len(GOOD) and report["rows_rejected"] == len(expected)
    assert report["lines_read"] == len(lines)
    assert report["unknown_fields"] == {"lines": 2, "names": ["extra", "o.deep", "recs[].b"]}
    assert report["reader"]["name"] == ("read-ahead" if in_flight else "spark")


def test_strict_schema_rejects_unknown_fields_at_every_depth(spark, tmp_path, capsys):
    src, strict = tmp_path / "in", tmp_path / "strict"
    write_lines(src / "f.jsonl", [
        '{"prompt": "a", "o": {"a": 1}, "arr": [{"b": 1}]}',
        '{"prompt": "b", "o": {"a": 2, "deep": {"x": 1}}}',
        '{"prompt": "c", "arr": [{"b": 1}, {"b": 2, "c": [1]}], "x": 1}',
        '{"prompt": "d", "m": {"k": {"a": 1, "z": 2}}}',
    ])
    ddl = "prompt string, o struct<a:bigint>, arr array<struct<b:bigint>>, m map<string,struct<a:bigint>>"
    code, _, err = run_job("convert", ["--input", src, "--output", tmp_path / "loose", "--schema", ddl], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "loose" / "_report.json").read_text())
    assert report["unknown_fields"] == {"lines": 3, "names": ["arr[].c", "m{}.z", "o.deep", "x"]}
    assert "3 lines carry fields the schema lacks (arr[].c, m{}.z, o.deep, x)" in err

    code, _, err = run_job("convert", ["--input", src, "--output", strict, "--schema", ddl, "--strict-schema",
                                       "--max-bad-fraction", "1"], capsys)
    assert code == 0, err
    assert sorted(r.prompt for r in spark.read.parquet(str(strict)).collect()) == ["a"]
    rejects = sorted((r.raw[:14], r.reason, r.detail) for r in spark.read.parquet(str(strict / "_rejects")).collect())
    assert rejects == [('{"prompt": "b"', "unknown_field", "o.deep"),
                       ('{"prompt": "c"', "unknown_field", "arr[].c, x"),
                       ('{"prompt": "d"', "unknown_field", "m{}.z")]


def test_keys_that_differ_only_in_case_never_sink_a_run(spark, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    write_lines(src / "a.jsonl", ['{"prompt": "a1", "Lang": "en"}', '{"prompt": "a2", "lang": "zh"}'])
    write_lines(src / "b.jsonl", ['{"Prompt": "b1", "prompt": "b2"}', '{"prompt": "b3", "LANG": "ja"}'])
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--max-bad-fraction", "1"], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["schema"] == "prompt string, Lang string"  # the first spelling seen; the others are unknown
    got = spark.read.parquet(str(out))
    expected = spark.createDataFrame([("a1", "en"), ("a2", None), ("b3", None)], "prompt string, Lang string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    rejects = [(r.raw, r.reason, r.detail) for r in spark.read.parquet(str(out / "_rejects")).collect()]
    assert rejects == [('{"Prompt": "b1", "prompt": "b2"}', "duplicate_key", "prompt and Prompt differ only in case")]
    assert report["unknown_fields"] == {"lines": 2, "names": ["LANG", "lang"]}

    code, stdout, err = run_job("convert", ["--input", src, "--output", tmp_path / "o2", "--schema",
                                            "prompt string, PROMPT string"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert "'prompt' and 'PROMPT' differ only in case" in lines[0]
    assert not (tmp_path / "o2").exists()


def test_inferred_wide_integers_keep_every_digit(spark, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    wide, huge = 10**24 + 7, 12345678901234567890123456789012345678901234567890
    write_lines(src / "f.jsonl", [
        f'{{"prompt": "a", "wide": {wide}, "huge": {huge}}}',
        '{"prompt": "b", "wide": 5, "huge": 1.5}',
        '{"prompt": "skipped by the sample", "x": NaN}',
        '{"prompt": "c", "wide": 1, "wide": 2}',
    ])
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--max-bad-fraction", "1"], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["schema"] == "prompt string, wide decimal(25,0), huge string"
    assert report["schema_sample"]["unusable_lines"] == 2
    got = spark.read.parquet(str(out))
    expected = spark.createDataFrame([("a", Decimal(wide), str(huge)), ("b", Decimal(5), "1.5")],
                                     "prompt string, wide decimal(25,0), huge string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    assert report["reject_reasons"] == {"not_json_object": 1, "duplicate_key": 1}


@pytest.mark.parametrize("ddl, message", [
    ("prompt string, t timestamp", "t: type timestamp is not supported"),
    ("prompt string, d date", "d: type date is not supported"),
    ("prompt string, b binary", "b: type binary is not supported"),
    ("prompt string, m map<int,string>", "m: map keys must be string"),
    ("prompt string, o struct<a:string,A:string>", "'a' and 'A' differ only in case"),
])
def test_a_schema_the_parser_cannot_fill_exactly_is_refused(tmp_path, capsys, ddl, message):
    write_lines(tmp_path / "in" / "f.jsonl", ['{"prompt": "p"}'])
    code, stdout, err = run_job("convert", ["--input", tmp_path / "in", "--output", tmp_path / "o", "--schema", ddl],
                                capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith("convert: error: --schema: ") and message in lines[0]
    assert not (tmp_path / "o").exists()


def test_without_the_parser_the_job_exits_2_saying_how_to_fix_it(spark, tmp_path, capsys, monkeypatch):
    write_lines(tmp_path / "in" / "f.jsonl", ['{"prompt": "p"}'])
    monkeypatch.setattr(reader, "load", lambda _spark: False)
    code, stdout, err = run_job("convert", ["--input", tmp_path / "in", "--output", tmp_path / "o"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and stdout == "" and len(lines) == 1, err
    assert "the JSONL parser (promptscore-readahead.jar) cannot be loaded" in lines[0]
    assert "python -m promptscore.convert.reader build" in lines[0]
    assert not (tmp_path / "o").exists()


def test_the_reasons_are_one_list(spark):
    java = spark.sparkContext._jvm.promptscore.readahead.JsonLineParser.reasons()
    assert tuple(java.split(",")) == jsonl.REASONS
