"""The fake ``oss://`` behaves as an object store, and the jobs run on it end to end."""

from __future__ import annotations

import time

import fake_oss
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import records, run_job, write_lines
from py4j.protocol import Py4JJavaError

FAKE_ID = "LTAI5tFAKEkeyIDforOSSemu01"
FAKE_SECRET = "FAKEsecretVALUEforOSSemuOnly0123456789"


def jpath(spark, uri: str):
    return spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)


def jfs(spark, uri: str, **emu):
    """The session's filesystem for ``uri``; with ``emu`` settings, a new instance that has them."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    if not emu:
        return jpath(spark, uri).getFileSystem(conf)
    conf = jvm.org.apache.hadoop.conf.Configuration(conf)
    for key, value in fake_oss.hadoop_conf(**emu).items():
        conf.set(key, value)
    return jvm.org.apache.hadoop.fs.FileSystem.newInstance(jvm.java.net.URI(uri), conf)


def rows(local_dir) -> int:
    return ds.dataset(str(local_dir), format="parquet", ignore_prefixes=["_", "."]).count_rows()


def local_files(directory) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def test_parquet_and_jsonl_written_and_read_through_oss(spark, oss_bucket):
    df = spark.createDataFrame([(i, f"prompt {i}") for i in range(100)], "id int, prompt string")
    fake_oss.reset_counts(spark)
    df.repartition(3).write.parquet(oss_bucket / "pq")
    written = fake_oss.counts(spark)
    assert written["create"] >= 3 and written["rename"] >= 3  # the committer's copies
    assert spark.read.parquet(oss_bucket / "pq").count() == 100
    files = local_files(oss_bucket.path("pq"))
    assert "_SUCCESS" in files and len([f for f in files if f.endswith(".parquet")]) == 3
    assert not [f for f in files if "_temporary" in f]
    assert rows(oss_bucket.path("pq")) == 100

    df.selectExpr("to_json(struct(*)) AS value").write.text(oss_bucket / "jsonl")
    assert spark.read.json(oss_bucket / "jsonl").count() == 100
    write_lines(oss_bucket.path("raw/a.jsonl"), records("x", "y"))
    assert [r.prompt for r in spark.read.json(oss_bucket / "raw").collect()] == ["x", "y"]


def test_listings_come_in_pages_of_1000_keys(spark, oss_bucket):
    many = oss_bucket.path("many")
    many.mkdir()
    for i in range(2500):
        (many / f"k{i:04d}.jsonl").write_bytes(b"")
    write_lines(many / "sub" / "deep.jsonl", records("deep"))
    fs = jfs(spark, oss_bucket.uri)

    fake_oss.reset_counts(spark)
    listed = fs.listStatus(jpath(spark, oss_bucket / "many"))
    assert len(listed) == 2501 and listed[2500].isDirectory() and listed[0].getPath().getName() == "k0000.jsonl"
    assert fake_oss.counts(spark)["list"] == 3  # 2,500 keys and 1 common prefix: 3 pages

    fake_oss.reset_counts(spark)
    it = fs.listFiles(jpath(spark, oss_bucket / "many"), True)
    assert it.hasNext() and fake_oss.counts(spark)["list"] == 1  # the next page only when needed
    names = []
    while it.hasNext():
        names.append(it.next().getPath().toString().removeprefix(oss_bucket / "many/"))
    assert len(names) == 2501 and names[-1] == "sub/deep.jsonl" and names == sorted(names)
    assert fake_oss.counts(spark) == {"head": 0, "list": 3, "open": 0, "create": 0, "rename": 0, "delete": 0}


def test_directories_are_only_key_prefixes(spark, oss_bucket):
    fs = jfs(spark, oss_bucket.uri)
    write_lines(oss_bucket.path("a/b/c.jsonl"), records("c"))
    assert fs.getFileStatus(jpath(spark, oss_bucket / "a")).isDirectory()
    with pytest.raises(Py4JJavaError, match="PathIsNotEmptyDirectoryException"):
        fs.delete(jpath(spark, oss_bucket / "a"), False)
    assert fs.delete(jpath(spark, oss_bucket / "a/b/c.jsonl"), False)
    assert not fs.exists(jpath(spark, oss_bucket / "a/b")) and not fs.exists(jpath(spark, oss_bucket / "a"))

    assert fs.mkdirs(jpath(spark, oss_bucket / "a/empty"))  # a marker object holds it
    assert [s.getPath().getName() for s in fs.listStatus(jpath(spark, oss_bucket / "a"))] == ["empty"]
    assert list(fs.listStatus(jpath(spark, oss_bucket / "a/empty"))) == []
    assert fs.delete(jpath(spark, oss_bucket / "a/empty"), False)
    assert not fs.exists(jpath(spark, oss_bucket / "a"))
    with pytest.raises(Py4JJavaError, match="FileNotFoundException"):
        fs.listStatus(jpath(spark, oss_bucket / "a"))


def test_directory_rename_is_a_copy_and_delete_per_object_and_not_atomic(spark, oss_bucket):
    for name in ("p0", "p1", "p2", "p3", "sub/p4"):
        write_lines(oss_bucket.path(f"src/{name}.jsonl"), records(name))
    fs = jfs(spark, oss_bucket.uri)
    fake_oss.reset_counts(spark)
    assert fs.rename(jpath(spark, oss_bucket / "src"), jpath(spark, oss_bucket / "dst"))
    done = fake_oss.counts(spark)
    assert (done["rename"], done["delete"]) == (5, 5)
    assert not oss_bucket.path("src").exists()
    assert local_files(oss_bucket.path("dst")) == ["p0.jsonl", "p1.jsonl", "p2.jsonl", "p3.jsonl", "sub/p4.jsonl"]

    dying = jfs(spark, oss_bucket.uri, fail_rename_after=2)  # as if the process died after 2 copies
    try:
        with pytest.raises(Py4JJavaError, match="simulated failure after 2 of 5"):
            dying.rename(jpath(spark, oss_bucket / "dst"), jpath(spark, oss_bucket / "moved"))
    finally:
        dying.close()
    assert local_files(oss_bucket.path("moved")) == ["p0.jsonl", "p1.jsonl"]
    assert local_files(oss_bucket.path("dst")) == ["p2.jsonl", "p3.jsonl", "sub/p4.jsonl"]


def test_each_request_waits_its_delay(spark, oss_bucket):
    for i in range(3):
        write_lines(oss_bucket.path(f"d/f{i}.jsonl"), records(str(i)))
    slow = jfs(spark, oss_bucket.uri, delay_open_ms=150, delay_list_ms=60, delay_head_ms=0,
               delay_rename_ms=40, delay_delete_ms=0, list_page_size=2)
    try:
        def timed(call):
            start = time.monotonic()
            call()
            return time.monotonic() - start

        assert timed(lambda: slow.open(jpath(spark, oss_bucket / "d/f0.jsonl")).close()) >= 0.15
        assert timed(lambda: slow.listStatus(jpath(spark, oss_bucket / "d"))) >= 0.12  # 2 pages
        # two probes (list 60 ms each: src is a prefix, dst is missing), 2 pages, 3 copies
        assert timed(lambda: slow.rename(jpath(spark, oss_bucket / "d"), jpath(spark, oss_bucket / "e"))) >= 0.36
    finally:
        slow.close()
    assert timed(lambda: jfs(spark, oss_bucket.uri).listStatus(jpath(spark, oss_bucket / "e"))) < 0.12


def test_bucket_names_keys_and_credentials_are_checked(spark, oss_bucket):
    with pytest.raises(Py4JJavaError, match="invalid bucket name 'ab'"):
        jfs(spark, "oss://ab/x")
    with pytest.raises(Py4JJavaError, match="invalid bucket name"):
        spark.read.text("oss://Upper_Case/x").count()
    fs = jfs(spark, oss_bucket.uri)
    with pytest.raises(Py4JJavaError, match="longer than 1023 bytes"):
        fs.create(jpath(spark, oss_bucket / ("k" * 200 + "/") * 6))

    with pytest.raises(Py4JJavaError, match="no AccessKey"):
        jfs(spark, oss_bucket.uri, require_credentials=True)
    with_key = jfs(spark, f"oss://{FAKE_ID}:{FAKE_SECRET}@{oss_bucket.name}", require_credentials=True)
    assert with_key.exists(jpath(spark, f"oss://{FAKE_ID}:{FAKE_SECRET}@{oss_bucket.name}/"))
    with_key.close()


def test_convert_job_in_process_on_oss(spark, oss_bucket, capsys):
    for i in range(30):
        write_lines(oss_bucket.path(f"in/d{i % 3}/f{i:02d}.jsonl"), records(*(f"p{i}-{j}" for j in range(10))))
    fake_oss.reset_counts(spark)
    code, out, err = run_job("convert", ["--input", oss_bucket / "in", "--output", oss_bucket / "out"], capsys)
    assert code == 0, err
    assert rows(oss_bucket.path("out")) == 300 and oss_bucket.path("out/_SUCCESS").exists()
    assert spark.read.parquet(oss_bucket / "out").count() == 300
    assert fake_oss.counts(spark)["open"] >= 30


def test_score_job_in_process_on_oss(spark, oss_bucket, tiny_model, capsys):
    oss_bucket.path("prompts").mkdir()
    pq.write_table(pa.table({"id": list(range(12)), "prompt": [f"prompt {i}" for i in range(12)]}),
                   oss_bucket.path("prompts/part-0.parquet"))
    code, out, err = run_job("score", ["--input", oss_bucket / "prompts", "--output", oss_bucket / "scored",
                                       "--model", tiny_model, "--backend", "transformers"], capsys)
    assert code == 0, err
    assert rows(oss_bucket.path("scored")) == 12 and oss_bucket.path("scored/_SUCCESS").exists()
