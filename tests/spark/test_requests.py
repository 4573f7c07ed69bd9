"""Requests the jobs make beyond reading their input, counted on the fake ``oss://``: the rejects,
the skipped files' examples, the bad-file search, ``--plan``'s sample, publishing and resume ask
the store only what the listing has not told already (``bench/leftovers_bench.py`` measures the
same things by whole ``spark-submit`` runs)."""

from __future__ import annotations

import gzip
import json

import fake_oss
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import records, run_job, write_lines

from promptscore.frames import session_conf
from promptscore.io import hadoop
from promptscore.io.publish import Publisher
from promptscore.score import pieces

FILES = 8


def _input(bucket, name: str, bad: int = 0, skipped: int = 0, truncated: bool = False) -> str:
    """``FILES`` JSONL files in 4 folders (one gzipped); ``bad`` of them with a malformed line,
    ``skipped`` 64 KB files named ``.txt`` beside them, and one ``.jsonl.gz`` cut short."""
    for i in range(FILES):
        lines = records(*(f"p{i}-{j}" for j in range(20)))
        if i < bad:
            lines.insert(5, '{"prompt": "cut off')
        write_lines(bucket.path(f"{name}/d{i % 4}/f{i:02d}.jsonl" + (".gz" if i == 1 else "")), lines, gz=i == 1)
    for i in range(skipped):
        bucket.path(f"{name}/d{i % 4}/notes-{i}.txt").write_bytes(b"x" * (64 << 10))
    if truncated:
        data = gzip.compress("\n".join(records(*(f"cut-{j}" for j in range(200)))).encode())
        bucket.path(f"{name}/d0/cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    return bucket / name


def _convert(spark, capsys, inp: str, out: str, *extra: str) -> tuple[dict, dict]:
    """Run the convert job in this process; the requests it made and its report."""
    fake_oss.reset_counts(spark)
    code, _, err = run_job("convert", ["--input", inp, "--output", out, "--max-bad-fraction", "1", *extra], capsys)
    assert code == 0, err
    counts = fake_oss.counts(spark)
    report = {} if "--plan" in extra else json.loads(hadoop.read_text(spark, f"{out}/_report.json"))
    return counts, report


def _diff(a: dict, b: dict) -> dict:
    return {k: a[k] - b[k] for k in ("head", "list", "open")}


@pytest.fixture(scope="module")
def base(spark, oss_bucket_module, capsys_module):
    return _convert(spark, capsys_module, _input(oss_bucket_module, "in-base"), oss_bucket_module / "out-base")


@pytest.fixture(scope="module")
def oss_bucket_module(fake_oss_store):
    if fake_oss_store.jar is None:
        pytest.skip("no javac to build the fake oss:// filesystem")
    return fake_oss_store.bucket("req")


@pytest.fixture(scope="module")
def capsys_module():
    class _Quiet:  # run_job reads stdout and stderr through this
        def readouterr(self):
            class _Out:
                out = err = ""
            return _Out()
    return _Quiet()


def _plan(spark, inp: str, out: str):
    from promptscore.convert.options import ConvertOptions
    from promptscore.convert.plan import plan_convert
    from promptscore.io.output import OutputSpec

    return plan_convert(spark, ConvertOptions(inputs=[inp], out=OutputSpec(out)), None)


def test_the_rejects_are_read_again_without_listing_or_asking_about_each_file(spark, oss_bucket_module):
    from promptscore.convert.write import lines_of_files

    inp = _input(oss_bucket_module, "in-rej", bad=3)
    plan = _plan(spark, inp, oss_bucket_module / "out-rej")
    held = [f"{inp}/d{i % 4}/f{i:02d}.jsonl" + (".gz" if i == 1 else "") for i in range(3)]
    fake_oss.reset_counts(spark)
    lines = lines_of_files(plan, held).select("_metadata.file_path", "value").collect()
    c = fake_oss.counts(spark)
    assert sorted({r.file_path for r in lines}) == sorted(held) and len(lines) == 3 * 21
    # Before: Spark was handed the files by name: 4.5 HEAD and 3.5 LIST per file besides its GET.
    assert (c["head"], c["list"], c["open"]) == (0, 0, 3), c


def test_the_job_s_rejects_cost_fewer_requests(spark, oss_bucket_module, capsys_module, base):
    counts, report = _convert(spark, capsys_module, _input(oss_bucket_module, "in-rej-job", bad=6),
                              oss_bucket_module / "out-rej-job")
    assert report["rows_rejected"] == 6 and report["files_with_rejects"] == 6
    d = _diff(counts, base[0])
    # The rest is the write of _rejects (committer and publish). Before: +48 HEAD, +40 LIST here.
    assert d["open"] == 6 and d["head"] <= 40 and d["list"] <= 36, d


def test_examples_of_skipped_files_open_none_of_them(spark, oss_bucket_module, capsys_module, base):
    counts, report = _convert(spark, capsys_module, _input(oss_bucket_module, "in-skip", skipped=6),
                              oss_bucket_module / "out-skip")
    skipped = report["skipped_files"]
    assert skipped["files"] == 6 and len(skipped["examples"]) == 5
    assert all(e.endswith(".txt") for e in skipped["examples"])
    d = _diff(counts, base[0])
    # Before: 1.5 GET per skipped file (all of them read whole for five names).
    assert d["open"] == 0, d


def test_skipped_files_on_local_disk_are_never_read(spark, tmp_path, capsys):
    """Nothing of a run (the driver, its tasks, Python or the JVM) reads a skipped file: reading
    one would move its access time, set here before its modification time (relatime updates it
    then, and on every file system that records access times at all)."""
    import os

    src = tmp_path / "in"
    for i in range(FILES):
        write_lines(src / f"d{i % 4}" / f"f{i:02d}.jsonl", records(*(f"p{i}-{j}" for j in range(20))))
    skipped = [src / f"d{i % 4}" / f"notes-{i}.txt" for i in range(6)]
    for p in [*skipped, src / "d0" / "control.txt"]:
        p.write_bytes(b"x" * (64 << 10))
        os.utime(p, (p.stat().st_mtime - 3600, p.stat().st_mtime))
    control = src / "d0" / "control.txt"
    control.read_bytes()
    if control.stat().st_atime < control.stat().st_mtime:
        pytest.skip("this file system does not record access times")
    control.unlink()
    code, _, err = run_job("convert", ["--input", src, "--output", tmp_path / "out"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "_report.json").read_text())["skipped_files"]["files"] == 6
    assert [p.name for p in skipped if p.stat().st_atime >= p.stat().st_mtime] == []


def test_the_bad_file_search_takes_the_compressed_files_from_the_listing(spark, oss_bucket_module):
    from promptscore.convert.badfiles import find_bad_files
    from promptscore.convert.write import CompressedInputs

    inp = _input(oss_bucket_module, "in-cut", truncated=True)
    plan = _plan(spark, inp, oss_bucket_module / "out-cut")
    fake_oss.reset_counts(spark)
    # A broken stream that Spark reports without the file's name: every .jsonl.gz is checked.
    found = find_bad_files(spark, CompressedInputs(spark, plan), [inp], RuntimeError("java.io.EOFException"))
    c = fake_oss.counts(spark)
    assert [(b.uri, b.reason) for b in found] == [(f"{inp}/d0/cut.jsonl.gz", "corrupt_file")]
    # The two .gz files read on the executors, the broken one confirmed on the driver; nothing
    # listed. Before: the roots listed again (a LIST per folder, more per file) and each file named.
    assert c["list"] == 0 and c["open"] == 3, c


def test_plan_reads_its_sample_once_in_spark_and_asks_nothing_per_file(spark, oss_bucket_module, capsys_module):
    inp = _input(oss_bucket_module, "in-plan")
    with session_conf(spark, {"spark.promptscore.plan.measureBytes": "1m"}):  # a quick rate measurement
        few, _ = _convert(spark, capsys_module, inp, oss_bucket_module / "out-plan-2", "--plan", "--sample-files", "2")
        many, _ = _convert(spark, capsys_module, inp, oss_bucket_module / "out-plan-8", "--plan", "--sample-files", "8")
    d = _diff(many, few)
    # Before, per sampled file: 7 HEAD, 2 LIST, 3 GET. Now: the schema sample's head on the
    # driver and one read by Spark, held in memory for the ratio and the rate.
    assert d["head"] == 0 and d["list"] == 0, d
    assert d["open"] == 2 * 6, d


def test_publishing_asks_once_about_each_object(spark, oss_bucket_module):
    per = {}
    for n in (2, 6):
        target = oss_bucket_module / f"pub-{n}"
        pub = Publisher(spark, target)
        assert pub.strategy == "copy"
        pub.hold("convert")
        pub.prepare_staging()
        staged = pub.staging.split(f"{oss_bucket_module.name}/", 1)[1]
        oss_bucket_module.path(staged).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            oss_bucket_module.path(f"{staged}/part-{i:05d}.parquet").write_bytes(b"x" * 100)
        oss_bucket_module.path(f"{staged}/_SUCCESS").write_bytes(b"")
        fake_oss.reset_counts(spark)
        pub.publish()
        per[n] = fake_oss.counts(spark)
        assert sorted(p.name for p in oss_bucket_module.path(f"pub-{n}").glob("part-*")) == \
            [f"part-{i:05d}.parquet" for i in range(n)]
    d = {k: (per[6][k] - per[2][k]) / 4 for k in ("head", "list", "rename")}
    # Per object: one status of its place (HEAD and, for a missing object, LIST), then the
    # connector's rename (its own two status calls, a copy and a delete). Before: 3 more HEADs
    # and 3 more LISTs (exists, then the rename's exists and its folder's exists).
    assert d["rename"] == 1, d
    assert d["head"] <= 3 and d["list"] <= 2, d


def test_resume_counts_only_the_rows_of_the_files_left_to_score(spark, oss_bucket_module):
    oss_bucket_module.path("scored-in").mkdir()
    for i in range(3):
        pq.write_table(pa.table({"prompt": [f"p{i}-{j}" for j in range(5 + i)]}),
                       oss_bucket_module.path(f"scored-in/part-{i}.parquet"))
    df = spark.read.parquet(oss_bucket_module / "scored-in")
    fake_oss.reset_counts(spark)
    files = pieces.list_input_files(spark, df)
    assert [f.size > 0 for f in files] == [True] * 3
    assert fake_oss.counts(spark)["list"] == 0 and fake_oss.counts(spark)["head"] == 0  # from Spark's index

    def marker(f, rows):
        return pieces.Marker(f"c-{f.name}", "r", [f.key()], [], {"rows": rows})

    all_reused = pieces.ResumePlan([marker(f, 5 + i) for i, f in enumerate(files)], [], 1)
    fake_oss.reset_counts(spark)
    assert pieces.input_rows(spark, df, all_reused) == 18
    assert fake_oss.counts(spark)["open"] == 0  # no footer of a reused chunk is read

    partly = pieces.ResumePlan([marker(files[0], 5)], [pieces.Chunk((files[1],)), pieces.Chunk((files[2],))], 1)
    fake_oss.reset_counts(spark)
    assert pieces.input_rows(spark, df, partly) == 18
    c = fake_oss.counts(spark)
    assert c["list"] == 0 and c["open"] <= 2 * 2, c  # the two files left only (all three: 6 opens)


def test_the_compression_ratio_costs_no_read_of_its_own(spark, oss_bucket_module, capsys_module, base):
    """Small files, many output files wanted: the ratio that sizes them comes from the records the
    schema sample read whole (before: every sampled file was read again, in a Spark job of its
    own), and it is the ratio that read gave."""
    from promptscore.convert.plan import estimate_ratio, sample_bytes, sample_lines

    inp = _input(oss_bucket_module, "in-ratio")
    counts, report = _convert(spark, capsys_module, inp, oss_bucket_module / "out-ratio", "--target-file-size", "1k")
    # Measured (2.8 KB of input against 1 KB files wanted on 2 slots), not assumed.
    assert report["estimated_compression_ratio"] is not None and report["rows_written"] == FILES * 20
    assert _diff(counts, base[0])["open"] == 0, _diff(counts, base[0])
    plan = _plan(spark, inp, oss_bucket_module / "out-ratio-2")
    read = estimate_ratio(spark, sample_lines(spark, plan.index), sample_bytes(spark, plan.index), plan.schema, "zstd")
    # The footers weigh on 2.8 KB (their schemas differ: pyarrow's types, Spark's): 3% apart here;
    # on the 3.3 MB sample of the 16,000-file bench both gave 0.2702.
    assert report["estimated_compression_ratio"] == pytest.approx(read, rel=0.05)
