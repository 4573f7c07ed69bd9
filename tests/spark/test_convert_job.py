"""The convert job end to end: real JSONL files on disk in, real Parquet read back."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from conftest import records, run_job, write_lines

LONG = "x" * 2_000_000  # a 2 MB prompt on one line


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """A prefix with nesting, gzip, CRLF, Unicode, an empty file, blank and bad lines, and files
    that are not input."""
    root = tmp_path / "in"
    write_lines(root / "2026" / "11" / "22" / "a.jsonl", records("a1", "a2", id="a"))
    write_lines(root / "2026" / "11" / "b.jsonl", records("b1", "b2", id="b"), newline="\r\n")
    write_lines(root / "c.jsonl.gz", records("c1", "c2", id="c"), gz=True)
    write_lines(root / "deep" / "er" / "and" / "deeper" / "u.jsonl",
                records("日本語のプロンプト", "emoji 🙂 and \u2028 separator", id="u"))
    write_lines(root / "empty.jsonl", [])
    write_lines(root / "blank.jsonl", ["", *records("k1", id="k"), "   ", "", *records("k2", id="k")])
    write_lines(root / "long.jsonl", records(LONG, id="l"))
    write_lines(root / "bad.jsonl", [
        *records("ok1", id="x"),
        '{"prompt": "truncated',
        "plain text",
        '[{"prompt": "array"}]',
        '"bare string"',
        '{"id": "x"}',
        *records("ok2", id="x"),
    ])
    # Not input: other extensions and hidden names.
    write_lines(root / "notes.txt", ["not json"])
    write_lines(root / "x.json", records("wrong extension"))
    write_lines(root / "_tmp.jsonl", records("hidden"))
    write_lines(root / ".x.jsonl", records("hidden"))
    return root


GOOD = {("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2"), ("c", "c1"), ("c", "c2"),
        ("u", "日本語のプロンプト"), ("u", "emoji 🙂 and \u2028 separator"), ("k", "k1"), ("k", "k2"),
        ("l", LONG), ("x", "ok1"), ("x", "ok2")}


def test_every_good_line_lands_once_and_bad_ones_are_set_aside(spark, mixed, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_job("convert", ["--input", mixed, "--output", out, "--max-bad-fraction", "0.5"],
                                capsys)
    assert code == 0, err
    got = spark.read.parquet(str(out)).select("id", "prompt")
    expected = spark.createDataFrame(sorted(GOOD), "id string, prompt string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)

    rejects = spark.read.parquet(str(out / "_rejects"))
    assert rejects.columns == ["source_file", "raw", "raw_bytes", "reason", "detail"]
    assert sorted((Path(r.source_file).name, r.raw, r.reason) for r in rejects.collect()) == sorted([
        ("bad.jsonl", '"bare string"', "not_json_object"),
        ("bad.jsonl", '[{"prompt": "array"}]', "not_json_object"),
        ("bad.jsonl", '{"id": "x"}', "missing_required_field"),
        ("bad.jsonl", '{"prompt": "truncated', "not_json_object"),
        ("bad.jsonl", "plain text", "not_json_object"),
    ])

    report = json.loads((out / "_report.json").read_text())
    assert report["status"] == "ok"
    assert report["input_files"] == 7  # not the .txt, .json and hidden files; not the empty one
    assert report["empty_files"] == 1
    assert report["skipped_files"]["files"] == 2 and report["skipped_files"]["by_rule"] == {"other_name": 2}
    assert [Path(p).name for p in report["skipped_files"]["examples"]] == ["notes.txt", "x.json"]
    assert report["input_bytes"] == sum(p.stat().st_size for p in mixed.rglob("*")
                                        if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz"))
                                        and not p.name.startswith(("_", ".")))
    assert report["rows_written"] == len(GOOD) == got.count()
    assert report["rows_rejected"] == 5
    assert report["blank_lines"] == 3
    assert report["lines_read"] == len(GOOD) + 5 + 3
    assert report["reject_reasons"] == {"not_json_object": 4, "missing_required_field": 1}
    assert report["files_with_rejects"] == 1
    assert report["output_files"] == len(list(out.glob("part-*.parquet")))
    assert report["output_bytes"] == sum(p.stat().st_size for p in out.glob("part-*.parquet"))
    for key in ("tasks", "elapsed_s", "schema", "max_split_bytes", "phase_s"):
        assert key in report
    assert (out / "_SUCCESS").exists()
    assert stdout.strip() == report["summary"]
    assert stdout.startswith("convert: 7 files")


def test_report_copy_and_source_file_column(spark, mixed, tmp_path, capsys):
    out, copy = tmp_path / "out", tmp_path / "reports" / "convert.json"
    code, _, err = run_job("convert", ["--input", mixed, "--output", out, "--with-source-file",
                                       "--max-bad-fraction", "1", "--report", copy], capsys)
    assert code == 0, err
    assert json.loads(copy.read_text()) == json.loads((out / "_report.json").read_text())
    rows = spark.read.parquet(str(out)).select("prompt", "source_file").collect()
    by_prompt = {r.prompt: r.source_file for r in rows}
    assert by_prompt["c1"].endswith("/in/c.jsonl.gz")
    assert by_prompt["a1"].endswith("/in/2026/11/22/a.jsonl")
    assert by_prompt["a1"].startswith("file:")


def test_explicit_schema_picks_and_types_the_columns(spark, tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", ['{"prompt": "p", "n": 7, "extra": [1, 2]}'])
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--schema", "prompt string, n int"],
                           capsys)
    assert code == 0, err
    got = spark.read.parquet(str(out))
    expected = spark.createDataFrame([("p", 7)], "prompt string, n int")
    assert_df_equality(got, expected, ignore_nullable=True)
    assert json.loads((out / "_report.json").read_text())["schema_source"] == "explicit"


def test_sampled_schema_misses_fields_only_unsampled_files_have(spark, tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "a.jsonl", ['{"prompt": "a", "only_in_a": 1}'])
    write_lines(src / "b.jsonl", ['{"prompt": "b", "only_in_b": true}'])
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--sample-files", "1"], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["schema"] in ("prompt string, only_in_a bigint", "prompt string, only_in_b boolean")
    assert report["schema_source"] == "sample of 1 files"
    got = spark.read.parquet(str(out))
    # The unsampled file's extra field is not a column; its row is still written.
    assert len(got.columns) == 2
    assert sorted(r.prompt for r in got.collect()) == ["a", "b"]

    out2 = tmp_path / "out2"
    code, _, err = run_job("convert", ["--input", src, "--output", out2], capsys)
    assert code == 0, err
    assert sorted(spark.read.parquet(str(out2)).columns) == ["only_in_a", "only_in_b", "prompt"]


def test_many_small_files_are_packed_into_few_tasks_and_files(spark, tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(300):
        write_lines(src / f"d{i % 7}" / f"f{i:03d}.jsonl", records(*(f"p{i}-{j}" for j in range(20))))
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input", src, "--output", out], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    files = list(out.glob("part-*.parquet"))
    assert report["tasks"] == 2 == report["task_slots"]  # one per core of local[2], not one per file
    assert report["output_files"] == len(files) == 2
    assert sum(pq.read_metadata(f).num_rows for f in files) == 6000

    small = tmp_path / "small"
    code, _, err = run_job("convert", ["--input", src, "--output", small, "--target-file-size", "4k"], capsys)
    assert code == 0, err
    report = json.loads((small / "_report.json").read_text())
    files = list(small.glob("part-*.parquet"))
    assert report["output_files"] == len(files) > 2
    assert report["output_files"] % 2 == 0  # whole waves of the two task slots
    assert sum(pq.read_metadata(f).num_rows for f in files) == 6000


def test_the_ratio_comes_from_the_sample_or_from_a_read_of_it_when_pyarrow_cannot_type_it(spark, tmp_path, capsys):
    from promptscore.convert.plan import ratio_of_records

    assert ratio_of_records([], 100, "zstd") is None
    assert ratio_of_records([{"a": 1}, {"a": "x"}], 100, "zstd") is None  # a number here, a string there
    assert 0.02 <= ratio_of_records([{"prompt": f"p{i}"} for i in range(100)], 1500, "zstd") <= 1.0
    src = tmp_path / "in"
    for i in range(40):  # "n" a number in some files and a string in others: Spark's schema says string
        write_lines(src / f"f{i:02d}.jsonl", records(*(f"p{i}-{j}" for j in range(20)), n=i if i % 2 else f"s{i}"))
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--target-file-size", "1k"], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["estimated_compression_ratio"] is not None and report["output_files"] > 2
    assert report["rows_written"] == 800 and report["rows_rejected"] == 0


def test_too_many_bad_lines_exit_3_after_writing_everything(spark, tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", [*records(*(f"p{i}" for i in range(98))), "oops", "{bad"])
    out = tmp_path / "out"
    code, stdout, err = run_job("convert", ["--input", src, "--output", out, "--max-bad-fraction", "0.01"],
                                capsys)
    assert code == 3
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "2 rejected of 100 lines" in err and "--max-bad-fraction" in err
    assert spark.read.parquet(str(out)).count() == 98
    assert sorted(r.raw for r in spark.read.parquet(str(out / "_rejects")).collect()) == ["oops", "{bad"]
    report = json.loads((out / "_report.json").read_text())
    assert report["status"] == "too_many_rejects" and report["rows_rejected"] == 2
    assert not (out / "_SUCCESS").exists()
    assert stdout.startswith("convert: 1 files")

    # At the threshold exactly, it passes.
    out2 = tmp_path / "out2"
    code, _, err = run_job("convert", ["--input", src, "--output", out2, "--max-bad-fraction", "0.02"], capsys)
    assert code == 0, err
    assert (out2 / "_SUCCESS").exists()


def test_existing_output_is_refused_then_overwritten_on_request(spark, tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", records("first"))
    out = tmp_path / "out"
    assert run_job("convert", ["--input", src, "--output", out], capsys)[0] == 0

    write_lines(src / "f.jsonl", records("second"))
    code, stdout, err = run_job("convert", ["--input", src, "--output", out], capsys)
    assert code == 2 and stdout == ""
    assert err.startswith("convert: error: output exists:") and "--mode overwrite" in err
    assert err.strip().count("\n") == 0
    assert [r.prompt for r in spark.read.parquet(str(out)).collect()] == ["first"]

    code, _, err = run_job("convert", ["--input", src, "--output", out, "--mode", "overwrite"], capsys)
    assert code == 0, err
    assert [r.prompt for r in spark.read.parquet(str(out)).collect()] == ["second"]


def test_partition_rerun_overwrites_only_its_partition(spark, tmp_path, capsys):
    src = tmp_path / "in"
    out = tmp_path / "out"
    for day, prompt in (("20261121", "day one"), ("20261122", "day two")):
        write_lines(src / "f.jsonl", records(prompt))
        code, _, err = run_job("convert", ["--input", src, "--output", out, "--partition-col", "dt",
                                           "--partition-value", day], capsys)
        assert code == 0, err
    write_lines(src / "f.jsonl", records("day two, again", "and more"))
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--partition-col", "dt",
                                       "--partition-value", "20261122"], capsys)
    assert code == 0, err
    got = spark.read.parquet(str(out)).select("dt", "prompt")
    expected = spark.createDataFrame(
        [(20261121, "day one"), (20261122, "day two, again"), (20261122, "and more")], "dt int, prompt string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    assert (out / "dt=20261122" / "_SUCCESS").exists() and (out / "dt=20261122" / "_report.json").exists()

    # --mode error still refuses an existing partition.
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--partition-col", "dt",
                                       "--partition-value", "20261122", "--mode", "error"], capsys)
    assert code == 2 and "output exists" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--output", "{tmp}/o"], "give --input (one or more prefixes) or --input-list"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--target-file-size", "big"], "not a positive size"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--max-bad-fraction", "2"], "between 0 and 1"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--mode", "append"], "invalid choice"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--partition-col", "dt"], "go together"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--partition-col", "dt", "--partition-value", "a/b"],
         "must not be empty or contain"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--sample-files", "0"], "needs --schema"),
        (["--input", "{tmp}/missing", "--output", "{tmp}/o"], "input not found"),
        (["--input", "{tmp}/empty", "--output", "{tmp}/o"], "no *.jsonl, *.jsonl.gz files in"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--schema", "prompt strng"], "--schema is not valid"),
        (["--input", "{tmp}/in", "--output", "{tmp}/o", "--schema", "id string"], "lacks required field(s) prompt"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    write_lines(tmp_path / "in" / "f.jsonl", records("p"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    write_lines(tmp_path / "empty" / "sub" / "notes.txt", ["x"])
    code, stdout, err = run_job("convert", [a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2
    assert stdout == ""
    assert err.startswith("convert: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_help_exits_0(capsys):
    from conftest import load_job

    with pytest.raises(SystemExit) as e:
        load_job("convert").main(["--help"])
    assert e.value.code == 0
    assert "--target-file-size" in capsys.readouterr().out


def test_progress_lines_while_writing(spark, tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(120):
        write_lines(src / f"d{i % 10}" / f"f{i:03d}.jsonl", records(*(f"prompt {i}-{j}" for j in range(400))))
    spark.conf.set("spark.promptscore.progress.interval", "0.05")
    try:
        code, _, err = run_job("convert", ["--input", src, "--output", tmp_path / "out"], capsys)
    finally:
        spark.conf.set("spark.promptscore.progress.interval", "0")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("convert: ")]
    assert lines and all(" of 120 files (" in line or " of 120 files read (" in line for line in lines), err
