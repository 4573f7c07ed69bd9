"""The convert job's read-ahead reader (``promptscore/convert/reader.py``, ``promptscore/convert/java``): the
same lines, bytes and file names as Spark's text source, whatever the line ends, marks,
compression and splits; each object opened once on an object store; a file it cannot read named
as Spark names it; and the job's output the same with it and without it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import fake_oss
import pytest
from chispa import assert_df_equality
from conftest import records, run_job, write_lines
from pyspark.sql import functions as F

from promptscore.convert import badfiles, inputs, reader

BOM = b"\xef\xbb\xbf"


@pytest.fixture(autouse=True)
def needs_the_jar(readahead_jar):
    if readahead_jar is None:
        pytest.skip("no javac to build the read-ahead reader (install a JDK, e.g. openjdk-17-jdk-headless)")


def awkward_files(root: Path) -> None:
    """Files whose lines are easy to get wrong: every line end, byte-order marks, bytes that are
    not UTF-8, a line longer than Hadoop's 64 KB buffer, gzip with two members, empty files, a
    folder name that needs percent-encoding, and a file the job does not read."""
    files = {
        "a b=1/crlf.jsonl": b'{"prompt":"a"}\r\n{"prompt":"b"}\r\n\r\nno end',
        "cr.jsonl": b"a\rb\r\rc\r",
        "mixed.jsonl": b"1\n2\r3\r\n\n\r\n4",
        "bom.jsonl": BOM + b'{"prompt":"bom"}\n\n',
        "bom-only.jsonl": BOM,
        "bom-newline.jsonl": BOM + b"\n",
        "bom-late.jsonl": b"x\n" + BOM + b"y\n",
        "latin1.jsonl": b'{"prompt":"caf\xe9"}\n\xff\xfe\n',
        "long/line.jsonl": b"s" * 70_000 + b"\r" + b"\n" + b"t" * 65_535 + b"\rz",
        "two-members.jsonl.gz": gzip.compress(BOM + b"g1\r\ng2\n") + gzip.compress(b"g3\n"),
        "empty.jsonl": b"",
        "just-newline.jsonl": b"\n",
        "notes.txt": b"never read\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def both_readers(spark, where: str, in_flight: int = 4):
    """(Spark's text source, the read-ahead reader) over the job's input files under ``where``:
    each line's bytes and its file's metadata."""
    lines = inputs.input_lines(inputs.list_lines(spark, [where]))
    ahead, used = reader.read_lines(spark, lines, in_flight)
    assert used == {"name": "read-ahead", "files_in_flight": in_flight}
    cols = [F.col("value").cast("binary").alias("bytes"), F.col("_metadata.file_path").alias("file_path"),
            F.col("_metadata.file_name").alias("file_name"), F.col("_metadata.file_size").alias("file_size")]
    return lines.select(*cols), ahead.select(*cols)


# 1000: the long file in 136 splits, one starting at its first "\r" (byte 70,000); the other files
# are shorter than any split.
@pytest.mark.parametrize("split", ["128m", "20000", "1000"])
def test_the_lines_are_exactly_those_of_sparks_text_source(spark, tmp_path, split):
    awkward_files(tmp_path)
    before = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", split)  # small: files split over tasks
    try:
        expected, got = both_readers(spark, str(tmp_path))
        assert_df_equality(got, expected, ignore_row_order=True)
        assert got.count() == 28
        assert got.where(F.col("file_name") == "notes.txt").count() == 0
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", before)


def test_line_ends_at_every_place_in_an_eight_byte_word_are_found(spark, tmp_path):
    """A file held whole is searched for line ends eight bytes at a time: lines of every length
    from 0 to 19, each end (LF, CR, CR LF, and a CR at a word's last byte before its LF), in one
    file and in files shorter than a word."""
    ends = [b"\n", b"\r", b"\r\n"]
    body = b"".join(b"x" * n + ends[n % 3] for n in range(20)) + b"".join(b"y" * 7 + e for e in ends) + b"tail"
    (tmp_path / "words.jsonl").write_bytes(body)
    for n in range(1, 8):
        (tmp_path / f"short{n}.jsonl").write_bytes(b"z" * (n - 1) + ends[n % 3])
    expected, got = both_readers(spark, str(tmp_path))
    assert_df_equality(got, expected, ignore_row_order=True)
    assert got.where(F.col("file_name") == "words.jsonl").count() == 24


def test_on_an_object_store_each_object_is_opened_once(spark, oss_bucket):
    for i in range(30):
        write_lines(oss_bucket.path(f"in/d{i % 3}/f{i:02d}.jsonl"), records(*(f"p{i}-{j}" for j in range(20))))
    awkward_files(oss_bucket.path("in/awkward"))
    expected, got = both_readers(spark, oss_bucket / "in", in_flight=8)
    assert_df_equality(got, expected, ignore_row_order=True)
    fake_oss.reset_counts(spark)
    assert got.count() == 30 * 20 + 28
    # Every file the job reads, once; not notes.txt, and not empty.jsonl (Spark plans no read of it).
    assert fake_oss.counts(spark)["open"] == 30 + 11


def test_a_file_that_cannot_be_read_is_named_as_spark_names_it(spark, tmp_path):
    write_lines(tmp_path / "ok.jsonl", records("a"))
    full = gzip.compress(("\n".join(records(*map(str, range(3000)))) + "\n").encode())
    (tmp_path / "cut short.jsonl.gz").write_bytes(full[: len(full) // 2])
    _, got = both_readers(spark, str(tmp_path))
    with pytest.raises(Exception) as failed:
        got.count()
    named = badfiles.named_file(failed.value)
    assert named == (tmp_path / "cut short.jsonl.gz").resolve().as_uri().replace("file:///", "file:/")
    assert badfiles.is_read_failure(failed.value)


def test_the_job_writes_the_same_rows_and_rejects_with_either_reader(spark, tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(12):
        write_lines(src / f"d{i % 2}/f{i}.jsonl{'.gz' if i % 4 == 0 else ''}",
                    [*records(*(f"p{i}-{j}" for j in range(40))), "not json", ""],
                    newline="\r\n" if i % 3 else "\n", gz=i % 4 == 0)
    full = gzip.compress(("\n".join(records(*map(str, range(2000)))) + "\n").encode())
    (src / "truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    results = {}
    for in_flight in (0, 16):
        out = tmp_path / f"out-{in_flight}"
        spark.conf.set(reader.KEY, str(in_flight))
        try:
            code, _, err = run_job("convert", ["--input", src, "--output", out, "--with-source-file",
                                               "--max-bad-fraction", "0.9"], capsys)
        finally:
            spark.conf.unset(reader.KEY)
        assert code == 0, err
        report = json.loads((out / "_report.json").read_text())
        results[in_flight] = (spark.read.parquet(str(out)), spark.read.parquet(str(out / "_rejects")), report)
    (rows0, rejects0, report0), (rows16, rejects16, report16) = results[0], results[16]
    assert report0["reader"] == {"name": "spark", "why": f"{reader.KEY}=0"}
    assert report16["reader"] == {"name": "read-ahead", "files_in_flight": 16}
    assert_df_equality(rows16, rows0, ignore_row_order=True)
    assert_df_equality(rejects16, rejects0, ignore_row_order=True)
    assert rows16.count() == 12 * 40 and report16["rows_rejected"] == 12
    assert [Path(f["file"]).name for f in report16["files_rejected"]] == ["truncated.jsonl.gz"]
    same = ("lines_read", "blank_lines", "rows_written", "rows_rejected", "reject_reasons", "files_with_rejects",
            "input_files", "input_bytes")
    assert {k: report16[k] for k in same} == {k: report0[k] for k in same}


def test_a_bad_read_ahead_setting_is_one_line_and_exit_2(spark, tmp_path, capsys):
    write_lines(tmp_path / "in" / "a.jsonl", records("a"))
    spark.conf.set(reader.KEY, "many")
    try:
        code, _, err = run_job("convert", ["--input", tmp_path / "in", "--output", tmp_path / "out"], capsys)
    finally:
        spark.conf.unset(reader.KEY)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"convert: error: {reader.KEY}='many': expected a whole number of files from 0 to 64")
    assert not (tmp_path / "out").exists()


def test_without_the_jar_the_job_says_it_reads_with_sparks_text_source(spark, tmp_path, monkeypatch):
    lines = inputs.input_lines(inputs.list_lines(spark, [str(tmp_path)]))  # an empty folder is fine here
    monkeypatch.setattr(reader, "load", lambda _spark: False)
    same, used = reader.read_lines(spark, lines, 16)
    assert same is lines and used["name"] == "spark" and "python -m promptscore.convert.reader build" in used["why"]


def test_the_committed_jar_was_built_from_the_committed_sources():
    """The jar travels in the repository (and so in the wheel and the zip): a commit that changes
    a Java source must carry the jar rebuilt from it (python -m promptscore.convert.reader build)."""
    import subprocess

    from conftest import ROOT

    def at_head(path: str) -> bytes | None:
        proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True)
        return proc.stdout if proc.returncode == 0 else None

    if at_head("setup.py") is None:
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-tree", "--name-only", "HEAD", "promptscore/convert/java/"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    texts = {Path(p).name: at_head(p) for p in listed if p.endswith(".java")}
    jar = at_head("promptscore/convert/jars/" + reader.JAR.name)
    assert jar is not None, "the jar is not committed"
    assert reader.jar_digest(jar) == reader.digest_of(texts)


def test_from_a_py_files_zip_the_jar_is_copied_out_and_loads(tmp_path):
    """As spark-submit --py-files promptscore.zip gives the package: the jar inside the zip."""
    import subprocess
    import sys
    import zipfile

    from conftest import ROOT

    zipped = tmp_path / "promptscore.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        for p in sorted((ROOT / "promptscore").rglob("*")):
            if p.suffix in (".py", ".java", ".jar"):
                z.write(p, p.relative_to(ROOT).as_posix())
    code = ("import promptscore.convert.reader as r; p = r.jar_path(); "
            "print(p, p.read_bytes() == r.pkgutil.get_data('promptscore.convert', 'jars/' + r.JAR.name))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(zipped), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    path, same = proc.stdout.split()
    assert same == "True" and not path.startswith(str(zipped)) and path.endswith(reader.JAR.name)
