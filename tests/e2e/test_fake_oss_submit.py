"""The convert job by spark-submit over the fake oss://."""

from __future__ import annotations

import json

import fake_oss
import pyarrow.dataset as ds
from conftest import records, run_job, write_lines
from test_fake_oss import FAKE_ID, FAKE_SECRET, rows
from test_spark_submit import spark_submit

from promptscore.tools.submit import conf_args


def test_convert_by_spark_submit_on_two_executors_over_oss_with_keys_only_from_the_environment(
        spark, fake_oss_store, oss_bucket, tmp_path, capsys):
    for i in range(40):
        write_lines(oss_bucket.path(f"in/d{i % 4}/f{i:02d}.jsonl"), records(*(f"p{i}-{j}" for j in range(25))))
    write_lines(oss_bucket.path("in/bad.jsonl"), ["not json", *records("last")])
    counters = tmp_path / "counts.jsonl"
    common = [
        *conf_args("conf/local.conf"), "--master", "local-cluster[2,1,1024]",
        "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.driver.memory=1g",
        *fake_oss_store.submit_args(counters_file=counters, require_credentials=True),
    ]
    keys = {"OSS_ACCESS_KEY_ID": FAKE_ID, "OSS_ACCESS_KEY_SECRET": FAKE_SECRET}
    # A key in a URI is refused before Spark sees it: one line, shown redacted, nothing written (on
    # the shared session: the check comes before any Spark call).
    code, refused_out, refused_err = run_job(
        "convert", ["--input", f"oss://{FAKE_ID}:{FAKE_SECRET}@{oss_bucket.name}/in", "--output", oss_bucket / "out"],
        capsys)
    assert code == 2 and refused_out == "" and "Traceback" not in refused_err
    errors = [line for line in refused_err.splitlines() if line.startswith("convert:")]
    assert len(errors) == 1 and errors[0].startswith("convert: error: --input oss://***@")
    assert not oss_bucket.path("out").exists()
    # Keys from the environment, as the connector's provider chain takes them; two executor JVMs.
    proc = spark_submit([*common, "jobs/convert.py", "--input", oss_bucket / "in", "--output", oss_bucket / "out",
                         "--max-bad-fraction", "0.01"], env_extra=keys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = oss_bucket.path("out")
    report = json.loads((out / "_report.json").read_text())
    assert report["rows_written"] == 1001 and report["rows_rejected"] == 1
    assert report["task_slots"] == 2 and report["spark_master"] == "local-cluster[2,1,1024]"
    # The job added its read-ahead reader to the session itself; the executor JVMs got it from the driver.
    assert report["reader"] == {"name": "read-ahead", "files_in_flight": 16}
    assert proc.stdout.strip() == report["summary"]
    assert rows(out) == 1001 and (out / "_SUCCESS").exists()
    assert ds.dataset(str(out / "_rejects")).to_table().column("raw").to_pylist() == ["not json"]
    counts = fake_oss.read_counts(counters)
    assert counts["jvms"] >= 3 and counts["open"] >= 40, counts  # the driver and two executors
    texts = [proc.stdout, proc.stderr, refused_out, refused_err] + [
        p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()]
    assert not [t for t in texts if FAKE_ID in t or FAKE_SECRET in t]
