"""Schema inference from sampled lines: Spark's JSON typing rules, applied on the driver."""

from __future__ import annotations

import gzip
import json

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DecimalType,
    DoubleType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from promptscore.convert import schema as infer


def schema_of(*objs):
    acc = StructType([])
    for obj in objs:
        acc = infer.merge(acc, infer.type_of(obj))
    return infer.settle(acc)


def test_scalars():
    s = schema_of({"a": 1, "b": 1.5, "c": "x", "d": True, "e": None, "f": 10**30})
    assert s == StructType([
        StructField("a", LongType()), StructField("b", DoubleType()), StructField("c", StringType()),
        StructField("d", BooleanType()), StructField("e", StringType()),
        StructField("f", DecimalType(31, 0)),
    ])


def test_widening_and_conflicts():
    s = schema_of({"n": 1, "s": "x", "o": {"a": 1}}, {"n": 2.5, "s": 3, "o": {"b": "y"}})
    assert s == StructType([
        StructField("n", DoubleType()), StructField("s", StringType()),
        StructField("o", StructType([StructField("a", LongType()), StructField("b", StringType())])),
    ])


def test_arrays_and_field_order():
    s = schema_of({"z": [], "a": [1, 2]}, {"z": ["x"], "m": [{"k": 1}, {"k": None, "j": True}]})
    assert s.fieldNames() == ["z", "a", "m"]
    assert s["z"].dataType == ArrayType(StringType())
    assert s["a"].dataType == ArrayType(LongType())
    assert s["m"].dataType == ArrayType(StructType([StructField("k", LongType()), StructField("j", BooleanType())]))


def test_struct_against_scalar_becomes_string():
    assert schema_of({"x": {"a": 1}}, {"x": "text"})["x"].dataType == StringType()


def test_parse_sample_skips_blank_and_counts_bad_lines():
    data = '\ufeff{"a": 1}\r\n\r\n[1]\nnot json\n{"a": 2}\n'.encode()
    recs, bad = infer.parse_sample(data, compressed=False, complete=True)
    assert recs == [{"a": 1}, {"a": 2}] and bad == 2


def test_parse_sample_of_a_file_head_drops_the_cut_line():
    data = b'{"a": 1}\n{"a": 2}\n{"a": 3'
    recs, bad = infer.parse_sample(data, compressed=False, complete=False)
    assert recs == [{"a": 1}, {"a": 2}] and bad == 0


def test_parse_sample_gzip_head():
    full = gzip.compress(("\n".join(json.dumps({"i": i}) for i in range(5000)) + "\n").encode())
    recs, bad = infer.parse_sample(full[: len(full) // 2], compressed=True, complete=False)
    assert 0 < len(recs) < 5000 and bad == 0
    assert recs[:2] == [{"i": 0}, {"i": 1}]


CORPUS = [
    {"id": 1, "prompt": "p", "score": 0.5, "ok": True, "tags": ["a"], "meta": {"lang": "en"}},
    {"id": 2, "prompt": "q", "score": 1, "big": 10**25, "meta": {"lang": "zh", "n": 3}, "none": None},
    {"id": 3.5, "prompt": 7, "big": 10**30, "tags": [], "mixed": [1, "x"], "empty": {}},
    {"id": 4, "prompt": {"nested": True}, "big": 5, "huge": 10**40, "deep": [[{"k": 1}], [{"k": 2.5}]]},
]


def _canonical(t):
    """A type with struct fields sorted by name (Spark's inference sorts them; the sample keeps
    first-seen order)."""
    if isinstance(t, StructType):
        return StructType(sorted((StructField(f.name, _canonical(f.dataType), True) for f in t.fields),
                                 key=lambda f: f.name))
    if isinstance(t, ArrayType):
        return ArrayType(_canonical(t.elementType), True)
    return t


def test_the_sample_types_a_corpus_as_spark_read_json_does(spark, tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in CORPUS) + "\n")
    sample = infer.sample_schema(spark, [str(path)])
    expected = spark.read.json(str(path)).schema
    # Except an integer wider than 38 digits: Spark rounds it into a double, the sample keeps its
    # exact text as a string.
    assert expected["huge"].dataType == DoubleType()
    expected = StructType([StructField(f.name, StringType() if f.name == "huge" else f.dataType, True)
                           for f in expected.fields])
    assert _canonical(sample.schema) == _canonical(expected)
    assert sample.records == len(CORPUS) and sample.unusable_lines == 0


def test_wide_integers_become_decimals_then_strings():
    s = schema_of({"a": 10**37, "b": 10**38, "c": -(10**18)}, {"a": 1, "b": 2, "c": 10**19})
    assert s == StructType([StructField("a", DecimalType(38, 0)), StructField("b", StringType()),
                            StructField("c", DecimalType(20, 0))])


def test_the_sample_leaves_out_what_the_job_rejects():
    lines = [
        b'{"a": 1}',
        b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}',          # not JSON
        b'{"a": 1e400}', b'{"a": -1e999}', b'{"a": 1e-400}',                # out of a double's range
        b'{"a": 1, "a": 2}', b'{"o": {"k": 1, "k": 2}}',                   # duplicate keys
        b'{"a": 1, "A": 2}',                                                # keys that differ only in case
        b'{"s": "\\ud800"}', b'{"s": ["x\\udc00"]}', b'{"\\udfff": 1}',    # lone surrogates
        b'{"s": "\\ud83d\\ude00", "z": 0e-400, "u": "\\u00e9"}',          # a pair, an exact zero: fine
    ]
    records, bad = infer.parse_sample(b"\n".join(lines) + b"\n", compressed=False, complete=True)
    assert records == [{"a": 1}, {"s": "\U0001f600", "z": 0.0, "u": "\u00e9"}] and bad == len(lines) - 2


def test_names_that_differ_only_in_case_are_one_column_the_first_spelling():
    s = schema_of({"prompt": "a", "Meta": {"x": 1}}, {"Prompt": 5, "meta": {"y": 2}, "META": "z"}, {"prompt": "c"})
    assert s == StructType([StructField("prompt", StringType()),
                            StructField("Meta", StructType([StructField("x", LongType())]))])


def test_heads_read_several_at_once_are_taken_in_the_order_of_the_sample(spark, tmp_path):
    """Fields keep the order in which the sample first shows them, so the heads, read
    ``HEAD_READERS`` at a time, must be taken file by file in the sample's order; a file that
    cannot be read is named, and the files after it still count."""
    paths = []
    for i in range(3 * infer.HEAD_READERS):
        path = tmp_path / f"f{i:02d}.jsonl"
        path.write_text(json.dumps({f"k{i:02d}": i, "prompt": "p"}) + "\n")
        paths.append(str(path))
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    paths.insert(5, str(broken))
    sample = infer.sample_schema(spark, paths, sizes={str(broken): broken.stat().st_size})
    assert sample.schema.fieldNames() == ["k00", "prompt"] + [f"k{i:02d}" for i in range(1, 3 * infer.HEAD_READERS)]
    assert sample.unreadable_files == [str(broken)]
    assert (sample.files, sample.records) == (3 * infer.HEAD_READERS + 1, 3 * infer.HEAD_READERS)
