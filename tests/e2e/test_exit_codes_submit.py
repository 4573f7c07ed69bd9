"""spark-submit's exit code when the disk fills up."""

from __future__ import annotations

import base64
import json
import os

import test_exit_codes
from conftest import write_lines

full_disk = test_exit_codes.full_disk  # the fixture of test_exit_codes


def test_spark_submit_exits_4_when_the_disk_fills_up(tmp_path, full_disk):
    from conftest import submit

    src = tmp_path / "in"
    write_lines(src / "f.jsonl", [json.dumps({"prompt": base64.b64encode(os.urandom(3000)).decode()})
                                  for _ in range(1000)])
    proc = submit(["jobs/convert.py", "--input", src, "--output", full_disk / "out", "--compression", "none"],
                  {}, None, tmp_path / "unused")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("convert: error")]  # progress lines aside
    assert len(errors) == 1 and errors[0].startswith(f"convert: error: disk full at file:{full_disk}/")
    assert "Traceback" not in stderr and stdout == ""
