"""The read-ahead reader's jar rebuilt by javac, and found by a spark-submit run without --jars."""

from __future__ import annotations

import json
from pathlib import Path

from promptscore.convert import reader


def test_the_jar_is_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    java = tmp_path / "java"
    java.mkdir()
    for source in reader.sources():
        (java / source.name).write_bytes(source.read_bytes())
    monkeypatch.setattr(reader, "JAVA_DIR", java)
    monkeypatch.setattr(reader, "JAR", tmp_path / "jars" / "r.jar")
    reader.build()
    assert reader.is_current(reader.JAR)
    first = reader.JAR.read_bytes()
    reader.build(force=True)
    assert reader.JAR.read_bytes() == first  # the same sources build the same bytes
    parser = java / "JsonLineParser.java"
    parser.write_text(parser.read_text() + "\n// changed\n")
    assert not reader.is_current(reader.JAR)
    reader.build()
    assert reader.is_current(reader.JAR)


def test_spark_submit_without_jars_reads_ahead_and_sets_a_broken_file_aside(make_submit_convert):
    """As on a cluster: no --jars, the job adds the reader itself, and a file it cannot read still
    reaches the driver named (the driver decodes the task's error without the reader's jar). The
    run is `make submit ... EXECUTE=1` (test_package): 4 files of 30 lines and a truncated .gz."""
    proc, src, out = make_submit_convert
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "_report.json").read_text())
    assert report["reader"] == {"name": "read-ahead", "files_in_flight": 16}
    assert report["rows_written"] == 120 and report["write_attempts"] == 2
    assert [(Path(f["file"]).name, f["reason"]) for f in report["files_rejected"]] == [
        ("truncated.jsonl.gz", "corrupt_file")]
