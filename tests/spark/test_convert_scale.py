"""The convert job at the mission's scale: --plan, --input-list (plain and OSS inventory), and
--only-new for daily partitions."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import fake_oss
import pyarrow.dataset as ds
import pytest
from conftest import records, run_job, write_lines


def prompts(path: Path) -> list[str]:
    return sorted(ds.dataset(str(path), format="parquet", partitioning="hive",
                             ignore_prefixes=["_", "."]).to_table().column("prompt").to_pylist())


def test_plan_lists_samples_and_estimates_without_writing(spark, tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(30):
        write_lines(src / f"d{i % 3}" / f"f{i:02d}.jsonl", records(*(f"p{i}-{j}" for j in range(40)), id="x"))
    write_lines(src / "notes.txt", ["x"])
    report_path = tmp_path / "plan.json"
    before = sorted(p.name for p in tmp_path.iterdir())
    spark.conf.set("spark.promptscore.plan.measureBytes", "1m")  # a quick measurement in tests
    try:
        code, stdout, err = run_job("convert", ["--plan", "--input", src, "--report", report_path, "--cores", "64",
                                                "--tasks-per-core", "4", "--request-latency-ms", "30"], capsys)
    finally:
        spark.conf.unset("spark.promptscore.plan.measureBytes")
    assert code == 0, err
    plan = json.loads(report_path.read_text())
    assert stdout.strip() == plan["summary"] and stdout.startswith("convert plan: 30 files")
    assert plan["input_files"] == 30 and plan["input_bytes"] == sum(p.stat().st_size for p in src.rglob("*.jsonl"))
    assert plan["skipped_files"]["files"] == 1
    assert plan["schema"] == "prompt string, id string"
    assert plan["tasks"] >= 1 and plan["expected_output_files"] == plan["tasks"]
    assert plan["parse_mb_s_per_core"] > 0 and plan["phase_s"]["list"] >= 0 and plan["parse_rate_includes_parquet"]
    est = plan["estimate"]
    assert est["cores"] == 64 and est["tasks_per_core"] == 4 and est["request_latency_ms"] == 30
    # 30 small files on 64 cores: the wall time may round to 0.0 s on a fast machine; the rate may not.
    assert est["files_per_s_per_core"] > 0 and est["bound"] in ("cpu", "latency", "request_rate")
    assert abs(est["wall_s"] - (est["list_s"] + est["read_s"] + est["publish_s"])) < 0.11  # each rounded
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["plan.json"])  # nothing else written


def test_input_list_converts_exactly_the_named_files(spark, tmp_path, capsys):
    src = tmp_path / "in"
    for name in ("a", "b", "c", "d"):
        write_lines(src / f"{name}.jsonl", records(f"from {name}"))
    write_lines(src / "e.txt", ["not input"])
    listing = tmp_path / "list.txt"
    listing.write_text(f"# picked by hand\n{src / 'a.jsonl'}\n\nfile:{src / 'c.jsonl'}\n{src / 'e.txt'}\n")
    out = tmp_path / "out"
    code, _, err = run_job("convert", ["--input-list", listing, "--output", out], capsys)
    assert code == 0, err
    assert prompts(out) == ["from a", "from c"]
    report = json.loads((out / "_report.json").read_text())
    assert report["input_files"] == 2 and report["skipped_files"]["files"] == 1


def _inventory(bucket, objects: dict[str, bytes]) -> str:
    """Write ``objects`` into the bucket and an OSS inventory report of them; return the manifest URI."""
    rows = []
    for key, data in objects.items():
        path = bucket.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))
        quoted = key.replace(" ", "%20")
        rows.append(f'"{bucket.name}","{quoted}","{len(data)}","Standard","{mtime}","\\"etag\\"","false","false"')
    inv = "inventory/src/rule1"
    data_key = f"{inv}/data/0b0c.csv.gz"
    bucket.path(data_key).parent.mkdir(parents=True, exist_ok=True)
    bucket.path(data_key).write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    manifest = {"creationTimestamp": "1732500000", "destinationBucket": bucket.name, "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, StorageClass, LastModifiedDate, ETag, IsMultipartUploaded, "
                              "EncryptionStatus",
                "files": [{"key": data_key, "size": 100, "MD5checksum": "x"}], "sourceBucket": bucket.name,
                "version": "2019-09-01"}
    bucket.path(f"{inv}/2026-11-25T00-00Z").mkdir(parents=True, exist_ok=True)
    bucket.path(f"{inv}/2026-11-25T00-00Z/manifest.json").write_text(json.dumps(manifest))
    return bucket / f"{inv}/2026-11-25T00-00Z/manifest.json"


def test_an_oss_inventory_replaces_listing_and_per_file_requests(spark, oss_bucket, capsys):
    objects = {f"raw/2026/11/f{i:03d}.jsonl": ("\n".join(records(*(f"p{i}-{j}" for j in range(5)))) + "\n").encode()
               for i in range(30)}
    objects["raw/odd name.jsonl"] = ("\n".join(records("spaced")) + "\n").encode()
    manifest = _inventory(oss_bucket, objects)
    write_lines(oss_bucket.path("raw/2026/11/not-in-inventory.jsonl"), records("must not be read"))
    code, _, err = run_job("convert", ["--input-list", manifest, "--output", oss_bucket / "out"], capsys)
    assert code == 0, err
    assert prompts(oss_bucket.path("out")) == sorted([f"p{i}-{j}" for i in range(30) for j in range(5)] + ["spaced"])

    # Reading the listed objects asks nothing per object but to open it: sizes and times come
    # from the report, and no folder is listed.
    from promptscore.io import files as listing
    from promptscore.io import lists

    files = lists.read_inventory(spark, manifest).files
    assert len(files) == 31 and files[0].mtime_ms > 0
    fake_oss.reset_counts(spark)
    assert listing.lines_of(spark, files).count() == 151
    counts = fake_oss.counts(spark)
    assert counts["head"] == 0 and counts["list"] == 0 and counts["open"] == 31, counts


def test_only_new_writes_each_day_only_what_appeared_since(spark, tmp_path, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    write_lines(src / "a.jsonl", records("a1", "a2"))
    write_lines(src / "b.jsonl", records("b1"))

    def day(n: int, *extra: str):
        return run_job("convert", ["--input", src, "--output", out, "--only-new", "--partition-col", "dt",
                                   "--partition-value", str(n), *extra], capsys)

    assert day(1)[0] == 0
    write_lines(src / "c.jsonl", records("c1"))
    write_lines(src / "b.jsonl", records("b1", "b2"))  # changed: a new version of the file
    os.utime(src / "b.jsonl", (time.time() + 5, time.time() + 5))

    code, _, err = day(2)  # by default a changed file stops the run: its old lines are in dt=1
    assert code == 3 and "b.jsonl" in err and not (out / "dt=2").exists()

    monkeypatch.setenv("PROMPTSCORE_TEST_FAIL_AT", "staged")  # a run that dies records nothing
    assert day(2, "--changed-files", "reingest")[0] == 1
    monkeypatch.delenv("PROMPTSCORE_TEST_FAIL_AT")
    assert not (out / "dt=2").exists()

    assert day(2, "--changed-files", "reingest")[0] == 0
    assert day(2, "--changed-files", "reingest")[0] == 0  # a rerun replaces the partition, rows and ledger together
    assert prompts(out / "dt=1") == ["a1", "a2", "b1"]
    assert prompts(out / "dt=2") == ["b1", "b2", "c1"]
    ledger = {Path(r["path"]).name for r in ds.dataset(str(out / "dt=2" / "_ingested")).to_table().to_pylist()}
    assert ledger == {"b.jsonl", "c.jsonl"}

    code, _, err = day(3)
    assert code == 0 and "nothing new" in err
    assert (out / "dt=3" / "_SUCCESS").exists() and prompts(out / "dt=3") == []
    every = spark.read.parquet(str(out)).groupBy("dt").count().collect()
    assert sorted((r.dt, r["count"]) for r in every) == [(1, 3), (2, 3)]


@pytest.mark.parametrize("argv, message", [
    (["--input", "{tmp}/in", "--output", "{tmp}/o", "--only-new"], "--only-new needs --partition-col"),
    (["--input", "{tmp}/in", "--input-list", "{tmp}/l.txt", "--output", "{tmp}/o"], "not both"),
    (["--input-list", "{tmp}/missing.txt", "--output", "{tmp}/o"], "does not exist"),
    (["--input", "{tmp}/in"], "required: --output"),
])
def test_scale_flags_misused_exit_2(tmp_path, capsys, argv, message):
    write_lines(tmp_path / "in" / "f.jsonl", records("p"))
    (tmp_path / "l.txt").write_text(str(tmp_path / "in" / "f.jsonl"))
    code, _, err = run_job("convert", [a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
