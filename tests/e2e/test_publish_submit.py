"""A convert run by spark-submit SIGKILLed while its tasks write; the same command finishes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import kill_when as _kill_when
from conftest import records, write_lines
from conftest import submit as _submit
from test_publish import _rows, _staging_writes

from promptscore.io.publish import work_dir


# A run is killed (SIGKILL to spark-submit's whole process group) while its tasks write, and the
# next run, the same command, starts by recovering from it. Every point of the publish itself is
# cut short in process above; the first and the last run go on the shared session.
def test_convert_killed_at_any_point_keeps_one_complete_output_and_the_same_command_finishes(spark, tmp_path, capsys):
    from conftest import run_job

    src = tmp_path / "in"
    for i in range(40):
        write_lines(src / f"f{i:02d}.jsonl", records(*(f"old {i}-{j}" for j in range(200))))
    out = tmp_path / "out"
    flag = tmp_path / "paused"
    args = ["--input", src, "--output", out, "--mode", "overwrite", "--target-file-size", "64k"]

    code, _, err = run_job("convert", args, capsys)
    assert code == 0, err
    old_rows = _rows(out)
    for i in range(40):
        write_lines(src / f"f{i:02d}.jsonl", records(*(f"new {i}-{j}" for j in range(200))))
    new_rows = sorted(f"new {i}-{j}" for i in range(40) for j in range(200))

    proc = _submit(["--conf", "spark.promptscore.publish=exchange", "jobs/convert.py", *args], {}, None, flag)
    _kill_when(proc, _staging_writes(out))
    assert _rows(out) == old_rows, "after a kill mid-write"

    code, _, err = run_job("convert", args, capsys)
    assert code == 0, err
    assert _rows(out) == new_rows
    report = json.loads((out / "_report.json").read_text())
    assert report["rows_written"] == len(new_rows)
    assert not Path(work_dir(str(out))).exists()
    assert report["lock_takeover"]["reason"] == "its process is gone"
    assert any("leftover" in note for note in report["recovered"]), report["recovered"]
