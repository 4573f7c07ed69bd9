"""Two runs into one output: a spark-submit run holds it, the second exits 2 naming it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import test_output_lock
from conftest import run_job, submit
from test_output_lock import ALL, leases, rows

from promptscore.io import lock
from promptscore.io.publish import work_dir

jsonl = test_output_lock.jsonl  # the fixture of test_output_lock


def wait_for(flag: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before its pause point:\n{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the pause point was never reached"
        time.sleep(0.05)


def test_two_runs_into_one_output_the_second_exits_2_naming_the_first_which_completes(jsonl, tmp_path, capsys):
    out, flag = tmp_path / "out", tmp_path / "paused"
    work = Path(work_dir(str(out)))
    first = submit(["--conf", f"{lock.STALE_CONF}=3", "jobs/convert.py", "--input", jsonl, "--output", out,
                    "--mode", "overwrite"], {}, "staged", flag)
    try:
        wait_for(flag, first)
        (holder,) = leases(work)
        assert holder["stale_s"] == 3  # the run's own stale time, from its Spark properties
        staged = sorted(p.name for p in work.iterdir())
        for mode in ("overwrite", "error"):
            code, stdout, err = run_job("convert", ["--input", jsonl, "--output", out, "--mode", mode], capsys)
            assert code == 2, err
            assert (f"is being written by another run: run {holder['run_id']} (convert job, pid {holder['pid']} "
                    f"on host {holder['host']}") in err and "last heartbeat" in err
            assert sorted(p.name for p in work.iterdir()) == staged  # its staging untouched
        assert not out.exists()
    finally:
        flag.unlink(missing_ok=True)  # the first run goes on
    stdout, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert rows(out) == ALL and (out / "_SUCCESS").exists() and not work.exists()
    report = json.loads((out / "_report.json").read_text())
    assert report["run_id"] == holder["run_id"] and report["lock_takeover"] is None

    # Now --mode error refuses the complete output, and leaves it as it is.
    code, _, err = run_job("convert", ["--input", jsonl, "--output", out, "--mode", "error"], capsys)
    assert code == 2 and "output exists" in err
    assert json.loads((out / "_report.json").read_text())["run_id"] == holder["run_id"] and rows(out) == ALL
