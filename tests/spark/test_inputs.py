"""What the convert job reads, and the true answer for each input problem: --only-new with files
that changed since they were ingested, --input-list entries that are missing or repeated, the
OSS inventory of a versioned bucket, and symbolic link loops in a local input."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

from chispa import assert_df_equality
from conftest import records, run_job, write_lines


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def rows(spark, path, *cols: str):
    """The rows of a Parquet output (partitions included), as a DataFrame sorted for chispa."""
    return spark.read.parquet(str(path)).select(*cols).orderBy(*cols)


def expected(spark, data: list[tuple], ddl: str):
    cols = [c.split()[0] for c in ddl.split(",")]
    return spark.createDataFrame(data, ddl).orderBy(*cols)


def report(path: Path) -> dict:
    return json.loads((path / "_report.json").read_text())


def bump_mtime(path: Path, seconds: float = 5) -> None:
    t = time.time() + seconds
    os.utime(path, (t, t))


# ---------------------------------------------------------------------------------------------
# --only-new: files that changed since a partition ingested them


def test_only_new_never_duplicates_the_lines_of_a_file_appended_to(spark, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(20):
        write_lines(src / f"f{i:02d}.jsonl", [json.dumps({"id": f"{i}-0", "prompt": f"p{i}-0"})])

    def day(n: int, *extra: str):
        return run_job("convert", ["--input", src, "--output", out, "--only-new", "--partition-col", "dt",
                                   "--partition-value", str(n), "--schema", "id string, prompt string", *extra],
                       capsys)

    assert day(1)[0] == 0
    for i in range(10):  # ten files get a second line appended
        path = src / f"f{i:02d}.jsonl"
        path.write_text(path.read_text() + json.dumps({"id": f"{i}-1", "prompt": f"p{i}-1"}) + "\n")
        bump_mtime(path)
    write_lines(src / "new.jsonl", [json.dumps({"id": "n-0", "prompt": "new"})])

    # Default: stop, naming the changed files, and write nothing.
    code, stdout, err = day(2)
    line = one_error_line(err)
    assert code == 3 and stdout == ""
    assert "10 input files changed since another partition" in line and "f00.jsonl (in dt=1:" in line
    assert "--changed-files reingest" in line and "nothing was written" in line and "(exit 3)" in line
    assert not (out / "dt=2").exists()

    # --plan says the same, and exits 0.
    spark.conf.set("spark.promptscore.plan.measureBytes", "1m")
    try:
        code, _, err = day(2, "--plan", "--report", tmp_path / "plan.json")
    finally:
        spark.conf.unset("spark.promptscore.plan.measureBytes")
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert code == 0 and plan["input_files"] == 1 and plan["only_new"]["changed_files"] == 10, err
    assert plan["only_new"]["already_ingested_files"] == 10 and not (out / "dt=2").exists()

    # skip: only the new file is converted; the changed files stay as dt=1 holds them.
    code, _, err = day(2, "--changed-files", "skip")
    assert code == 0, err
    assert "10 input files changed since another partition ingested them, left out" in err
    r = report(out / "dt=2")
    assert r["input_files"] == 1 and r["rows_written"] == 1
    facts = r["only_new"]
    assert facts["already_ingested_files"] == 10 and facts["new_files"] == 1 and facts["changed_files"] == 10
    assert facts["changed_files_policy"] == "skip" and facts["compared"] == "path, size, modification time (s)"
    example = facts["changed_files_examples"][0]
    assert example["file"].endswith("f00.jsonl") and example["partition"] == "dt=1"
    assert example["was"]["size"] < example["now"]["size"]
    everything = rows(spark, out, "id")
    assert everything.count() == everything.distinct().count() == 21  # no id twice
    assert "10 already ingested, 10 changed (skip)" in r["summary"]

    # reingest: converted again whole, counted and said; the earlier lines are then there twice.
    code, _, err = day(3, "--changed-files", "reingest")
    assert code == 0, err
    assert "converted again whole" in err and "still in those partitions" in err
    r = report(out / "dt=3")
    assert r["input_files"] == 10 and r["rows_written"] == 20 and r["only_new"]["changed_files"] == 10
    assert_df_equality(rows(spark, out / "dt=3", "id"),
                       expected(spark, [(f"{i}-{j}",) for i in range(10) for j in range(2)], "id string"))

    # The new versions are now held by dt=3: nothing has changed since.
    code, _, err = day(4)
    assert code == 0 and "nothing new: 21 input files are in other partitions" in err


def test_a_rewrite_that_keeps_size_and_time_is_found_by_the_object_stores_etag(spark, oss_bucket, capsys):
    raw = oss_bucket.path("raw")
    write_lines(raw / "a.jsonl", records("aaaa"))
    write_lines(raw / "b.jsonl", records("bbbb"))
    out = oss_bucket / "out"

    def day(n: int):
        return run_job("convert", ["--input", oss_bucket / "raw", "--output", out, "--only-new",
                                   "--partition-col", "dt", "--partition-value", str(n)], capsys)

    spark.conf.set("spark.promptscore.convert.fileChecksums", "true")
    try:
        assert day(1)[0] == 0
        held = spark.read.parquet(str(oss_bucket.path("out/dt=1/_ingested"))).collect()
        assert all(r.checksum and r.checksum.startswith("etag:") for r in held) and len(held) == 2

        before = (raw / "b.jsonl").stat()
        write_lines(raw / "b.jsonl", records("BBBB"))  # same size
        os.utime(raw / "b.jsonl", ns=(before.st_atime_ns, before.st_mtime_ns))  # same time
        code, _, err = day(2)
        assert code == 3 and "1 input files changed" in one_error_line(err) and "b.jsonl" in err
    finally:
        spark.conf.unset("spark.promptscore.convert.fileChecksums")

    # Without the checksums (the default), only path, size and time are compared, and the report
    # says so: the rewrite is taken for the file already ingested.
    code, _, err = day(2)
    assert code == 0 and "nothing new" in err
    assert report(oss_bucket.path("out/dt=2"))["only_new"]["compared"] == "path, size, modification time (s)"


def test_changed_files_goes_with_only_new(tmp_path, capsys):
    write_lines(tmp_path / "in" / "f.jsonl", records("p"))
    code, _, err = run_job("convert", ["--input", tmp_path / "in", "--output", tmp_path / "o",
                                       "--changed-files", "skip"], capsys)
    assert code == 2 and "--changed-files goes with --only-new" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# --input-list


def test_a_listed_file_that_does_not_exist_is_exit_2_naming_it(tmp_path, capsys):
    write_lines(tmp_path / "in" / "a.jsonl", records("a"))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'in' / 'a.jsonl'}\n{tmp_path / 'in' / 'gone [1].jsonl'}\n")
    code, stdout, err = run_job("convert", ["--input-list", listing, "--output", tmp_path / "out"], capsys)
    line = one_error_line(err)
    assert code == 2 and stdout == ""
    assert f"names file:{tmp_path / 'in' / 'gone [1].jsonl'}, which does not exist" in line
    assert not (tmp_path / "out").exists()


def test_a_file_listed_twice_is_read_once_and_counted_once(spark, tmp_path, capsys):
    src = tmp_path / "in"
    a = write_lines(src / "a.jsonl", records("a1", "a2"))
    b = write_lines(src / "b.jsonl", records("b1"))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{a}\n{b}\nfile:{a}\n{a}\n")
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input-list", listing, "--output", out], capsys)
    assert code == 0, err
    assert_df_equality(rows(spark, out, "prompt"), expected(spark, [("a1",), ("a2",), ("b1",)], "prompt string"))
    r = report(out)
    assert r["input_files"] == 2 and r["input_bytes"] == a.stat().st_size + b.stat().st_size
    assert r["lines_read"] == 3
    assert r["input_list_entries"] == {"entries": 4, "files": 2, "duplicate_entries": 2,
                                       "duplicate_examples": [f"file:{a}"]}
    assert "--input-list names 2 files more than once" in err and "read and counted once" in err


# ---------------------------------------------------------------------------------------------
# OSS inventory of a versioned bucket


def versioned_inventory(bucket, rows: list[dict], schema: str) -> str:
    """An OSS inventory report with ``rows`` (dicts of the ``schema`` columns) in one gzipped CSV;
    returns the manifest's URI."""
    columns = [c.strip() for c in schema.split(",")]
    lines = [",".join('"' + str(r.get(c, "")).replace('"', '\\"') + '"' for c in columns) for r in rows]
    data_key = "inventory/src/rule1/data/5f1e.csv.gz"
    bucket.path(data_key).parent.mkdir(parents=True, exist_ok=True)
    bucket.path(data_key).write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    manifest = {"creationTimestamp": "1764720000", "destinationBucket": bucket.name, "fileFormat": "CSV",
                "fileSchema": schema, "files": [{"key": data_key, "size": 100, "MD5checksum": "x"}],
                "sourceBucket": bucket.name, "version": "2019-09-01"}
    key = "inventory/src/rule1/2026-12-03T00-00Z/manifest.json"
    bucket.path(key).parent.mkdir(parents=True, exist_ok=True)
    bucket.path(key).write_text(json.dumps(manifest))
    return bucket / key


VERSIONED = ("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, StorageClass, LastModifiedDate, ETag, "
             "IsMultipartUploaded, EncryptionStatus")


def _object(bucket, key: str, lines: list[str], version: str, latest: bool = True) -> dict:
    data = ("\n".join(lines) + "\n").encode()
    if latest:
        write_lines(bucket.path(key), lines)
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(bucket.path(key).stat().st_mtime if latest else 1e9))
    return {"Bucket": bucket.name, "Key": key.replace(" ", "%20"), "VersionId": version,
            "IsLatest": str(latest).lower(), "IsDeleteMarker": "false", "Size": len(data), "StorageClass": "Standard",
            "LastModifiedDate": mtime,
            "ETag": '"ABC' + version + '"', "IsMultipartUploaded": "false", "EncryptionStatus": "false"}


def test_a_versioned_inventory_reads_the_latest_version_of_each_key_once(spark, oss_bucket, capsys):
    a_now = _object(oss_bucket, "raw/a.jsonl", records("a now 1", "a now 2"), "v2")
    a_before = _object(oss_bucket, "raw/a.jsonl", records("a before"), "v1", latest=False)
    b_before = _object(oss_bucket, "raw/b.jsonl", records("b, deleted since"), "v1", latest=False)
    b_marker = {**b_before, "VersionId": "v2", "IsLatest": "true", "IsDeleteMarker": "true", "Size": "",
                "ETag": ""}
    c_now = _object(oss_bucket, "raw/c d.jsonl", records("c"), "v1")
    manifest = versioned_inventory(oss_bucket, [a_before, a_now, b_before, b_marker, c_now, c_now], VERSIONED)

    out = oss_bucket / "out"
    code, _, err = run_job("convert", ["--input-list", manifest, "--output", out], capsys)
    assert code == 0, err
    assert_df_equality(rows(spark, out, "prompt"),
                       expected(spark, [("a now 1",), ("a now 2",), ("c",)], "prompt string"))
    r = report(oss_bucket.path("out"))
    assert r["input_files"] == 2 and r["lines_read"] == 3
    assert r["input_list_entries"] == {"entries": 6, "files": 2, "duplicate_entries": 1,
                                       "duplicate_examples": [f"oss://{oss_bucket.name}/raw/c d.jsonl"],
                                       "noncurrent_versions_skipped": 2, "delete_markers_skipped": 1}

    from promptscore.io import lists

    files = lists.read_inventory(spark, manifest).files
    assert [(Path(f.path).name, f.checksum) for f in files] == [("a.jsonl", "etag:abcv2"), ("c d.jsonl", "etag:abcv1")]


def test_a_versioned_inventory_without_is_latest_is_refused(oss_bucket, capsys):
    a = _object(oss_bucket, "raw/a.jsonl", records("a"), "v1")
    manifest = versioned_inventory(oss_bucket, [a], "Bucket, Key, VersionId, Size, LastModifiedDate")
    code, _, err = run_job("convert", ["--input-list", manifest, "--output", oss_bucket / "out"], capsys)
    assert code == 2 and "without IsLatest and IsDeleteMarker" in one_error_line(err)


def test_an_inventory_etag_finds_a_rewrite_that_kept_size_and_time(spark, oss_bucket, capsys):
    schema = "Bucket, Key, Size, LastModifiedDate, ETag"
    a = {k: v for k, v in _object(oss_bucket, "raw/a.jsonl", records("aaaa"), "1").items() if k in schema}
    out = oss_bucket / "out"

    def day(n: int, etag: str):
        manifest = versioned_inventory(oss_bucket, [{**a, "ETag": etag}], schema)
        return run_job("convert", ["--input-list", manifest, "--output", out, "--only-new", "--partition-col", "dt",
                                   "--partition-value", str(n)], capsys)

    assert day(1, '"0AF1"')[0] == 0
    code, _, err = day(2, '"0af1"')  # the same ETag (OSS spells it in capitals; case does not matter)
    assert code == 0 and "nothing new" in err
    code, _, err = day(2, '"77E2"')
    assert code == 3 and "raw/a.jsonl (in dt=1:" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# Symbolic link loops


def test_a_symlink_loop_in_a_local_input_is_exit_2_naming_the_link_within_seconds(tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(3):
        write_lines(src / f"d{i}" / "f.jsonl", records(f"p{i}"))
    (src / "d1" / "loop").symlink_to(".")
    (src / "d2" / "up").symlink_to("..")
    started = time.monotonic()
    code, stdout, err = run_job("convert", ["--input", src, "--output", tmp_path / "out"], capsys)
    assert time.monotonic() - started < 60  # it took 6 minutes, then ran out of memory
    line = one_error_line(err)
    assert code == 2 and stdout == ""
    assert "symbolic link loop" in line and ("d1/loop -> ." in line or "d2/up -> .." in line)
    assert not (tmp_path / "out").exists()


def test_find_symlink_loop_follows_links_as_hadoop_does(tmp_path):
    from promptscore.convert.inputs import find_symlink_loop

    root = tmp_path / "in"
    write_lines(root / "a" / "f.jsonl", records("a"))
    elsewhere = tmp_path / "elsewhere"
    write_lines(elsewhere / "g.jsonl", records("g"))
    (root / "b").symlink_to(elsewhere)  # a link to a folder outside: followed, no loop
    (root / "c").symlink_to(root / "a")  # a second way into a sibling: no loop
    (root / "dangling.jsonl").symlink_to(tmp_path / "nothing")  # Hadoop skips it
    (root / ".hidden").mkdir()
    (root / ".hidden" / "loop").symlink_to("..")  # Spark never lists hidden names
    assert find_symlink_loop(str(root)) is None

    (elsewhere / "back").symlink_to(root)  # a loop through the folder outside
    assert find_symlink_loop(str(root)) == (str(root / "b" / "back"), str(root))
    (elsewhere / "back").unlink()
    (root / "a" / "ring1").symlink_to("ring2")
    (root / "a" / "ring2").symlink_to("ring1")  # a ring of links
    link, _ = find_symlink_loop(str(root))
    assert Path(link).name in ("ring1", "ring2")
    assert find_symlink_loop(str(root / "a" / "f.jsonl")) is None  # a file


# ---------------------------------------------------------------------------------------------
# The listing's counts, examples and sample: one pass in the JVM, as the pruned scans count them


def _odd_names(root: Path) -> None:
    """Input files beside every kind of name the listing treats apart: empty files, Spark's own
    metadata names (listed, never read), a name with '=', spaces and '%', other suffixes, gzip."""
    for i in range(40):
        write_lines(root / f"d{i % 3}" / f"f{i:02d}.jsonl", records(f"p{i}"))
    write_lines(root / "d0" / "z.jsonl.gz", records("gz"), gz=True)
    write_lines(root / "d1" / "sp ace%20.jsonl", records("space"))
    write_lines(root / "d1" / "_x=1.jsonl", records("eq"))
    for name in ("_metadata", "_metadata.jsonl", "_common_metadata.jsonl"):
        write_lines(root / "d2" / name, records("meta"))
    for name in ("empty.jsonl", "empty.txt"):
        (root / "d2" / name).write_bytes(b"")
    for i in range(7):
        (root / f"d{i % 3}" / f"notes-{i}.txt").write_text("x" * (100 + i))
    (root / "d0" / ".hidden.jsonl").write_text("{}\n")


def test_the_listing_is_counted_in_one_pass_exactly_as_the_pruned_scans_count_it(spark, tmp_path):
    from promptscore.convert import inputs, reader

    reader.require(spark)
    _odd_names(tmp_path / "in")
    listed = inputs.list_lines(spark, [str(tmp_path / "in")])
    lines = inputs.input_lines(listed)
    assert inputs._listing_facts(spark, listed, 4) is not None  # the one-pass count is what runs here
    for sample in (0, 1, 4, 44, 100):
        one_pass = inputs.index_inputs(spark, listed, lines, sample)
        assert one_pass == inputs._index_by_scans(spark, listed, lines, sample), sample
    index = inputs.index_inputs(spark, listed, lines, 8)
    assert (index.files, index.skipped["files"], index.empty_files) == (43, 7, 5)
    assert index.bytes == sum(p.stat().st_size for p in (tmp_path / "in").rglob("*.jsonl*")
                              if p.stat().st_size and not p.name.startswith(("_m", "_c", ".")))
    assert len(index.sample) == 8
    # Which files are sampled follows Spark's order, a hash of each file's full URI (so it changes
    # with tmp_path from one pytest session to the next): never a metadata name the job does not
    # read; the sizes come with the sample exactly when no sampled file is empty.
    assert not {Path(p).name for p in index.sample} & {"_metadata.jsonl", "_common_metadata.jsonl"}
    all_read = all(Path(p.removeprefix("file:")).stat().st_size for p in index.sample)
    assert [f.path for f in index.sample_files] == (index.sample if all_read else [])
    assert len(index.skipped["examples"]) == 5 and all(e.endswith(".txt") for e in index.skipped["examples"])


def test_the_sample_never_takes_a_metadata_name_that_spark_lists_but_never_reads(spark, tmp_path):
    from promptscore.convert import inputs, reader

    reader.require(spark)
    write_lines(tmp_path / "in" / "a.jsonl", records("a"))
    for name in ("_metadata.jsonl", "_metadata.b.jsonl", "_common_metadata.jsonl"):
        write_lines(tmp_path / "in" / name, records("meta", extra=1))
    listed = inputs.list_lines(spark, [str(tmp_path / "in")])
    lines = inputs.input_lines(listed)
    index = inputs.index_inputs(spark, listed, lines, 8)
    a = f"file:{tmp_path / 'in' / 'a.jsonl'}"
    assert (index.files, index.empty_files, index.sample) == (1, 3, [a])
    assert [f.path for f in index.sample_files] == [a]
    assert index == inputs._index_by_scans(spark, listed, lines, 8)
