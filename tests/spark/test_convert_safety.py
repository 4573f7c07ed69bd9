"""The convert job never loses, changes or exposes data: the input guard, retries, bad lines and
bad files, keys in URIs, unsubstituted parameters, and failures that say what happened."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from chispa import assert_df_equality
from conftest import records, run_job, write_lines

FAKE_ID, FAKE_SECRET = "LTAI5tFAKEidFORtests99", "FAKEsecretVALUEforTESTSonly42"


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def parquet_rows(path: Path, col: str = "prompt") -> list:
    table = ds.dataset(str(path), format="parquet", ignore_prefixes=["_", "."]).to_table()
    return sorted(table.column(col).to_pylist())


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# The input guard


@pytest.mark.parametrize("case", ["partition-of-output", "same", "output-above-input", "output-inside-input", "glob"])
def test_an_output_overlapping_an_input_is_refused_before_anything_is_touched(spark, tmp_path, capsys, case):
    src = tmp_path / "in"
    write_lines(src / "a" / "x.jsonl", records("one", "two"))
    out = tmp_path / "out"
    assert run_job("convert", ["--input", src, "--output", out, "--partition-col", "dt",
                               "--partition-value", "1"], capsys)[0] == 0
    argv = {
        "partition-of-output": ["--input", out / "dt=1", "--output", out, "--partition-col", "dt",
                                "--partition-value", "1"],
        "same": ["--input", src, "--output", src, "--mode", "overwrite"],
        "output-above-input": ["--input", out / "dt=1", "--output", out, "--mode", "overwrite"],
        "output-inside-input": ["--input", src, "--output", src / "a" / "converted"],
        "glob": ["--input", f"{src}/*/x.jsonl", "--output", src / "a", "--mode", "overwrite"],
    }[case]
    before = tree(tmp_path)
    code, stdout, err = run_job("convert", argv, capsys)
    assert code == 2 and stdout == ""
    line = one_error_line(err)
    assert line.startswith("convert: error: the output ") and "choose an output outside every input" in line
    assert tree(tmp_path) == before


def test_score_refuses_to_write_the_partition_it_reads(tmp_path, capsys):
    out = tmp_path / "scores"
    (out / "dt=1").mkdir(parents=True)
    (out / "dt=1" / "part-0.parquet").write_bytes(b"PAR1")
    before = tree(tmp_path)
    code, _, err = run_job("score", ["--input", out / "dt=1", "--output", out, "--partition-col", "dt",
                                     "--partition-value", "1", "--model", tmp_path / "no-model"], capsys)
    assert code == 2 and "is the input" in one_error_line(err)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# Reruns


def test_a_failed_run_keeps_the_old_output_and_the_same_command_then_succeeds(spark, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", records("first"))
    out = tmp_path / "out"
    assert run_job("convert", ["--input", src, "--output", out], capsys)[0] == 0
    old = tree(out)
    write_lines(src / "f.jsonl", records("second"))
    argv = ["--input", src, "--output", out, "--mode", "overwrite"]

    monkeypatch.setenv("PROMPTSCORE_TEST_FAIL_AT", "staged")
    code, stdout, err = run_job("convert", argv, capsys)
    assert code == 1 and stdout == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("convert: failed after ") and "RuntimeError: failure injected at staged" in last
    assert "Exit 1" in last and "same command" in last
    assert len(err.strip().splitlines()) < 40
    assert tree(out) == old
    assert not (tmp_path / ".promptscore.out").exists()

    monkeypatch.delenv("PROMPTSCORE_TEST_FAIL_AT")
    code, _, err = run_job("convert", argv, capsys)
    assert code == 0, err
    assert parquet_rows(out) == ["second"]


def test_output_exists_only_for_a_complete_output_and_a_data_quality_failure_is_replaced(spark, tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", [*records("a", "b"), "not json"])
    out = tmp_path / "out"
    argv = ["--input", src, "--output", out, "--max-bad-fraction", "0.1"]
    code, stdout, err = run_job("convert", argv, capsys)
    assert code == 3 and "exit 3: output published without _SUCCESS" in err
    assert parquet_rows(out) == ["a", "b"] and not (out / "_SUCCESS").exists()
    assert json.loads((out / "_report.json").read_text())["status"] == "too_many_rejects"

    # The same command replaces an output that a data-quality failure left (no _SUCCESS) ...
    write_lines(src / "f.jsonl", records("a", "b", "c"))
    assert run_job("convert", argv, capsys)[0] == 0
    assert parquet_rows(out) == ["a", "b", "c"] and (out / "_SUCCESS").exists()
    # ... and refuses a complete one.
    code, _, err = run_job("convert", argv, capsys)
    assert code == 2 and "output exists" in one_error_line(err) and "--mode overwrite" in err


def test_a_directory_the_job_did_not_write_is_never_replaced(spark, tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", records("p"))
    out = tmp_path / "precious"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "data.csv").write_text("1,2\n")
    before = tree(out)
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--mode", "overwrite"], capsys)
    assert code == 2 and "did not write" in one_error_line(err)
    assert tree(out) == before


# ---------------------------------------------------------------------------------------------
# Lines that cannot be rows


def test_every_line_is_a_row_or_a_reject_with_its_reason_and_exact_bytes(spark, tmp_path, capsys):
    src = tmp_path / "in"
    long_ok = "y" * 21_000_000
    latin1 = '{"prompt": "caf\xe9"}'.encode("latin-1")
    lines = [
        json.dumps({"id": "t0", "prompt": "plain"}).encode(),
        b'{"id":"t1","prompt":"a"}{"id":"t2","prompt":"b"}',
        b'{"id":"t3","prompt":"c"} trailing words',
        b'{"id":"t4","prompt":"d"},{"id":"t5"}',
        latin1,
        json.dumps({"id": "big", "prompt": long_ok}).encode(),
        ('{"id": "deep", "prompt": "p", "x": ' + "[" * 3000 + "]" * 3000 + "}").encode(),
        json.dumps({"id": "long", "prompt": "z" * 5000}).encode(),
        json.dumps({"id": "ok\ufffd", "prompt": "a real U+FFFD stays"}).encode(),
        b"\xef\xbb\xbf" + json.dumps({"id": "bom", "prompt": "after a BOM"}).encode(),
        b"   ",
    ]
    (src).mkdir()
    (src / "f.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--max-bad-fraction", "1",
                                       "--schema", "id string, prompt string", "--max-line-bytes", "30m"], capsys)
    assert code == 0, err
    got = spark.read.parquet(str(out)).select("id").collect()
    assert sorted(r.id for r in got) == ["big", "bom", "long", "ok\ufffd", "t0"]
    assert spark.read.parquet(str(out)).where("id = 'big'").first().prompt == long_ok

    rejects = {bytes(r.raw_bytes) if r.raw_bytes else r.raw.encode(): r.reason
               for r in spark.read.parquet(str(out / "_rejects")).collect()}
    assert rejects == {
        lines[1]: "trailing_data",
        lines[2]: "trailing_data",
        lines[3]: "trailing_data",
        latin1: "invalid_utf8",
        lines[6]: "too_deep",
    }
    report = json.loads((out / "_report.json").read_text())
    assert report["lines_read"] == len(lines) and report["blank_lines"] == 1
    assert report["rows_written"] + report["rows_rejected"] + report["blank_lines"] == len(lines)

    # A smaller line limit rejects the long lines, and only them.
    out2 = tmp_path / "out2"
    code, _, err = run_job("convert", ["--input", src, "--output", out2, "--max-bad-fraction", "1",
                                       "--schema", "id string, prompt string", "--max-line-bytes", "4k"], capsys)
    assert code == 0, err
    too_long = [r.raw[:12] for r in
                spark.read.parquet(str(out2 / "_rejects")).where("reason = 'line_too_long'").collect()]
    assert sorted(too_long) == ['{"id": "big"', '{"id": "deep', '{"id": "long']


def test_fields_outside_the_sample_are_reported_and_strict_schema_rejects_them(spark, tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "a.jsonl", records("a1", "a2", id="a"))
    write_lines(src / "b.jsonl", records("b1", id="b", extra=1, more="x"))
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input", src, "--output", out, "--schema", "id string, prompt string"],
                           capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["unknown_fields"] == {"lines": 1, "names": ["extra", "more"]}
    assert "1 lines carry fields the schema lacks (extra, more)" in err and "--strict-schema" in err
    assert parquet_rows(out) == ["a1", "a2", "b1"]

    strict = tmp_path / "strict"
    code, _, err = run_job("convert", ["--input", src, "--output", strict, "--schema", "id string, prompt string",
                                       "--strict-schema", "--max-bad-fraction", "0.5"], capsys)
    assert code == 0, err
    assert parquet_rows(strict) == ["a1", "a2"]
    rejects = spark.read.parquet(str(strict / "_rejects")).select("raw", "reason")
    expected = spark.createDataFrame([(records("b1", id="b", extra=1, more="x")[0], "unknown_field")],
                                     "raw string, reason string")
    assert_df_equality(rejects, expected, ignore_nullable=True)


# ---------------------------------------------------------------------------------------------
# Files that cannot be read


def test_broken_compressed_files_are_set_aside_whole_and_every_other_file_is_converted(spark, tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(6):
        write_lines(src / f"good{i}.jsonl.gz", records(*(f"g{i}-{j}" for j in range(50))), gz=True)
    full = gzip.compress(("\n".join(records(*(f"t{j}" for j in range(2000)))) + "\n").encode())
    (src / "truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    (src / "not-gzip.jsonl.gz").write_text("\n".join(records("plain text under a .gz name")) + "\n")
    write_lines(src / "plain.jsonl", records("p1", "p2"))
    out = tmp_path / "out"
    code, stdout, err = run_job("convert", ["--input", src, "--output", out, "--max-bad-fraction", "0.01"], capsys)
    assert code == 3, err  # the two files count as more than 1% of the lines
    assert parquet_rows(out) == sorted([f"g{i}-{j}" for i in range(6) for j in range(50)] + ["p1", "p2"])
    files = {Path(r.source_file).name: (r.reason, r.raw, r.detail)
             for r in spark.read.parquet(str(out / "_rejects")).collect()}
    assert set(files) == {"truncated.jsonl.gz", "not-gzip.jsonl.gz"}
    assert {v[0] for v in files.values()} == {"corrupt_file"} and all(v[1] is None and v[2] for v in files.values())
    report = json.loads((out / "_report.json").read_text())
    assert [Path(f["file"]).name for f in report["files_rejected"]] == ["not-gzip.jsonl.gz", "truncated.jsonl.gz"]
    assert report["files_rejected_counted_as_lines"] >= 2
    assert report["reject_reasons"] == {"corrupt_file": 2}
    assert report["write_attempts"] >= 2
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize("flag", ["--input", "--output", "--report"])
def test_a_uri_with_keys_is_refused_and_the_key_is_never_shown(tmp_path, capsys, flag):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", records("p"))
    argv = {"--input": ["--input", f"oss://{FAKE_ID}:{FAKE_SECRET}@bucket/raw/", "--output", tmp_path / "o"],
            "--output": ["--input", src, "--output", f"oss://{FAKE_ID}:{FAKE_SECRET}@bucket/out/"],
            "--report": ["--input", src, "--output", tmp_path / "o", f"--report=oss://{FAKE_ID}:{FAKE_SECRET}@b/r.json"]}[flag]
    code, stdout, err = run_job("convert", argv, capsys)
    assert code == 2 and stdout == ""
    line = one_error_line(err)
    assert "credentials in the URI" in line and "oss://***@" in line
    assert FAKE_SECRET not in err and FAKE_ID not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["${bizdate}", "$[yyyymmdd]"])
def test_an_unsubstituted_scheduling_parameter_is_refused(tmp_path, capsys, value):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", records("p"))
    code, _, err = run_job("convert", ["--input", src, "--output", tmp_path / "o", "--partition-col", "dt",
                                       "--partition-value", value], capsys)
    assert code == 2
    assert value in one_error_line(err) and "not substituted" in err and "scheduling parameters" in err
    assert not (tmp_path / "o").exists()


def test_a_scheme_without_a_file_system_ends_with_one_line_and_exit_2(tmp_path, capsys):
    src = tmp_path / "in"
    write_lines(src / "f.jsonl", records("p"))
    code, _, err = run_job("convert", ["--input", src, "--output", "nosuchfs://x/out"], capsys)
    assert code == 2  # a retry cannot fix it: fix the URI or install the connector
    assert len(err.strip().splitlines()) == 1
    assert "No FileSystem for scheme" in err and "'nosuchfs'" in err and "Exit 2" in err


def test_help_lists_the_exit_codes(capsys):
    from conftest import load_job

    for name in ("convert", "score"):
        with pytest.raises(SystemExit) as e:
            load_job(name).main(["--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "exit codes:" in text and "3  data quality" in text


@pytest.fixture(autouse=True)
def _no_leftover_env():
    yield
    for key in ("PROMPTSCORE_TEST_FAIL_AT", "PROMPTSCORE_TEST_PAUSE_AT"):
        os.environ.pop(key, None)


def test_on_an_object_store_a_publish_cut_short_is_finished_by_the_same_command(spark, oss_bucket, capsys, monkeypatch):
    write_lines(oss_bucket.path("raw/a.jsonl"), records(*(f"old {i}" for i in range(50))))
    argv = ["--input", oss_bucket / "raw", "--output", oss_bucket / "out", "--mode", "overwrite",
            "--target-file-size", "1k"]
    assert run_job("convert", argv, capsys)[0] == 0
    assert parquet_rows(oss_bucket.path("out")) == sorted(f"old {i}" for i in range(50))
    write_lines(oss_bucket.path("raw/a.jsonl"), records(*(f"new {i}" for i in range(50))))

    monkeypatch.setenv("PROMPTSCORE_TEST_FAIL_AT", "publish-moving")  # after the first object moved
    code, _, err = run_job("convert", argv, capsys)
    assert code == 1
    out = oss_bucket.path("out")
    assert not (out / "_SUCCESS").exists()  # half-published: nothing claims to be complete
    assert (oss_bucket.path(".promptscore.out") / "_publish.json").exists()

    monkeypatch.delenv("PROMPTSCORE_TEST_FAIL_AT")
    code, _, err = run_job("convert", argv, capsys)
    assert code == 0, err
    assert parquet_rows(out) == sorted(f"new {i}" for i in range(50)) and (out / "_SUCCESS").exists()
    report = json.loads((out / "_report.json").read_text())
    assert report["recovered"] and "completed the publish" in report["recovered"][0]
    assert not oss_bucket.path(".promptscore.out").exists()
