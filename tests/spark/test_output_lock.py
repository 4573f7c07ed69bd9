"""One run per output: the lease in the target's work directory (``promptscore.io.lock``).

First the lease itself, on local disk and on the fake ``oss://``: a second run is refused naming
the holder, a stale or dead holder is taken over, a holder that was taken over notices, the
heartbeat costs one thread and no files. Then real jobs: two convert runs into one output (one
under spark-submit paused before its publish, the other in this process), a stale lease, and a
holder killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pyarrow.dataset as ds
import pytest
from conftest import records, run_job, write_lines

from promptscore import errors
from promptscore.io import lock
from promptscore.io.leases import identity
from promptscore.io.publish import Publisher, new_run_id, work_dir


@pytest.fixture()
def conf(spark):
    """Set session settings for one test."""
    keys = []

    def set_(key: str, value: str) -> None:
        keys.append(key)
        spark.conf.set(key, value)
    yield set_
    for key in keys:
        spark.conf.unset(key)


def new_lock(spark, work: str, job: str = "convert") -> lock.OutputLock:
    return lock.OutputLock(spark, work, new_run_id(), job, work.replace("/.promptscore.", "/"))


def leases(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob("lock.*.json"))]


def write_lease(work: Path, gen: int = 1, age_s: float = 0.0, **fields) -> dict:
    """A lease as another run would have written it (by default: on another node, fresh)."""
    beat = time.time() - age_s
    info = {"run_id": "20260101T000000-0ther", "job": "convert", "owner": "someone", "host": "node-7",
            "pid": 4242, "pid_start": 1, "boot_id": "another-boot", "pidns": "pid:[1]", "heartbeat": beat,
            "seq": 1, "stale_s": 300.0, **fields}
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"lock.{gen:06d}.json"
    path.write_text(json.dumps(info))
    os.utime(path, (beat, beat))
    return info


# ---------------------------------------------------------------------------------------------
# The lease


def test_a_second_run_is_refused_naming_the_holder_until_the_first_gives_the_lock_back(spark, tmp_path):
    work = f"file:{tmp_path}/.promptscore.out"
    first, second = new_lock(spark, work), new_lock(spark, work, "score")
    assert first.acquire() is None
    with pytest.raises(lock.OutputLocked) as refused:
        second.acquire()
    me = identity()
    text = str(refused.value)
    assert f"run {first.run_id} (convert job, pid {os.getpid()} on host {me['host']}, user {me['owner']})" in text
    assert "last heartbeat 0 s ago" in text and "spark.promptscore.lock.staleSeconds=300" in text
    assert isinstance(refused.value, errors.UsageError)  # exit 2
    (held,) = leases(tmp_path / ".promptscore.out")
    assert held["run_id"] == first.run_id and held["pid"] == os.getpid() and held["job"] == "convert"
    first.release()
    assert leases(tmp_path / ".promptscore.out") == []
    assert second.acquire() is None
    second.release()


def test_a_stale_lease_is_taken_over_and_one_on_another_node_waits_until_it_is_stale(spark, tmp_path, conf):
    work = tmp_path / ".promptscore.out"
    write_lease(work, age_s=30)
    conf(lock.STALE_CONF, "60")
    with pytest.raises(lock.OutputLocked, match=r"run 20260101T000000-0ther \(convert job, pid 4242 on host node-7, "
                       r"user someone\), last heartbeat 30 s ago.* in 270 s"):
        new_lock(spark, f"file:{work}").acquire()  # the holder's own 300 s count

    write_lease(work, age_s=400)
    taker = new_lock(spark, f"file:{work}")
    took = taker.acquire()
    assert took["run_id"] == "20260101T000000-0ther" and took["host"] == "node-7" and took["pid"] == 4242
    assert took["heartbeat_age_s"] >= 400 and took["reason"].startswith("no heartbeat for 400 s")
    assert [p.name for p in work.glob("lock.*.json")] == ["lock.000002.json"]  # the next generation
    assert leases(work)[0]["run_id"] == taker.run_id
    taker.release()


def test_the_lease_of_a_process_that_is_gone_is_taken_over_at_once(spark, tmp_path):
    work = tmp_path / ".promptscore.out"
    me = identity()
    ended = subprocess.Popen(["true"])
    ended.wait()
    write_lease(work, age_s=1, host=me["host"], boot_id=me["boot_id"], pidns=me["pidns"], pid=ended.pid,
                pid_start=None)
    taker = new_lock(spark, f"file:{work}")
    took = taker.acquire()
    assert took["reason"] == "its process is gone" and took["pid"] == ended.pid
    taker.release()
    # A live process of the same node is not taken over, whatever its lease says otherwise.
    write_lease(work, gen=9, age_s=1, **identity())
    with pytest.raises(lock.OutputLocked, match="pid 4242|pid " + str(os.getpid())):
        new_lock(spark, f"file:{work}").acquire()


def test_a_holder_that_was_taken_over_notices_and_stops(spark, tmp_path, conf):
    conf(lock.STALE_CONF, "1")
    work = f"file:{tmp_path}/.promptscore.out"
    lost = []
    frozen = lock.OutputLock(spark, work, new_run_id(), "score", "x", on_lost=lost.append)
    frozen.acquire()
    frozen._stop.set()  # its heartbeat stops, as in a process frozen for longer than staleSeconds
    frozen._thread.join()
    time.sleep(1.3)
    taker = new_lock(spark, work)
    assert taker.acquire()["run_id"] == frozen.run_id
    with pytest.raises(lock.LockLost, match=f"taken over.*run {taker.run_id}"):
        frozen.verify()
    frozen.release()  # leaves the taker's lease alone
    assert leases(tmp_path / ".promptscore.out")[0]["run_id"] == taker.run_id

    # The heartbeat itself notices too, and says so through on_lost.
    beating = lock.OutputLock(spark, f"file:{tmp_path}/.promptscore.b", new_run_id(), "score", "b",
                              on_lost=lost.append)
    beating.acquire()
    (tmp_path / ".promptscore.b" / "lock.000002.json").write_text(json.dumps({"run_id": "other", "heartbeat": 0}))
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost and "taken over" in lost[0] and not beating.held
    with pytest.raises(lock.LockLost):
        beating.verify()
    beating.release()
    taker.release()


def test_the_heartbeat_renews_the_lease_with_one_thread_and_no_open_files(spark, tmp_path, conf, oss_bucket):
    conf(lock.STALE_CONF, "0.2")  # a beat every 0.05 s
    conf(lock.SETTLE_CONF, "0")
    me = psutil.Process()
    for work in (f"file:{tmp_path}/.promptscore.out", oss_bucket / ".promptscore.out"):
        held = new_lock(spark, work)
        held.acquire()
        time.sleep(0.3)  # the connection of the heartbeat's thread to the JVM is open by now
        threads, files = threading.active_count(), me.num_fds()
        seq = held._seq
        time.sleep(2)
        assert held._seq >= seq + 10 and held.held
        assert threading.active_count() == threads and abs(me.num_fds() - files) <= 2
        held.release()
        for _ in range(20):  # acquire and release again and again: nothing piles up
            again = new_lock(spark, work)
            again.acquire()
            again.release()
        assert threading.active_count() <= threads - 1


def test_on_an_object_store_a_lease_written_over_at_the_same_moment_is_given_up(spark, oss_bucket, conf):
    conf(lock.SETTLE_CONF, "1")
    work = oss_bucket / ".promptscore.out"
    first = new_lock(spark, work)
    errors = []

    def take():
        try:
            first.acquire()
        except lock.OutputLocked as e:
            errors.append(str(e))

    t = threading.Thread(target=take)
    t.start()
    path = oss_bucket.path(".promptscore.out/lock.000001.json")
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    # Another run's write of the same name lands during the first's settle time.
    other = write_lease(path.parent, host="node-9", run_id="20260101T000000-late")
    t.join()
    assert errors and "run 20260101T000000-late" in errors[0] and not first.held
    assert leases(path.parent) == [other]
    # Without a race, the lease holds.
    path.unlink()
    second = new_lock(spark, work)
    assert second.acquire() is None and leases(path.parent)[0]["run_id"] == second.run_id
    with pytest.raises(lock.OutputLocked, match=second.run_id):
        new_lock(spark, work).acquire()
    second.release()
    assert not path.exists()


def test_recovery_leaves_leases_and_young_plan_scratch_alone(spark, tmp_path):
    target = tmp_path / "out"
    work = Path(work_dir(str(target)))
    young, old = f"plan-{new_run_id()}", "plan-20200101T000000-00000000"
    for name in (young, old, "staging-20200101T000000-deadbeef"):
        (work / name).mkdir(parents=True)
    pub = Publisher(spark, f"file:{target}")
    with pytest.raises(lock.LockLost):
        pub.recover()  # never without the lock
    pub.hold("convert")
    notes = pub.recover()
    assert sorted(p.name for p in work.iterdir()) == sorted([young, "lock.000001.json"])
    assert "removed 2 leftover(s)" in notes[0]
    pub.discard()
    assert sorted(p.name for p in work.iterdir()) == [young]


# ---------------------------------------------------------------------------------------------
# Real jobs


@pytest.fixture()
def jsonl(tmp_path) -> Path:
    src = tmp_path / "in"
    for i in range(6):
        write_lines(src / f"f{i}.jsonl", records(*(f"p {i}-{j}" for j in range(500))))
    return src


def rows(out: Path) -> list[str]:
    return sorted(ds.dataset(str(out), format="parquet", ignore_prefixes=["_", "."]).to_table()
                  .column("prompt").to_pylist())


ALL = sorted(f"p {i}-{j}" for i in range(6) for j in range(500))


def test_a_stale_lease_is_taken_over_and_reported(spark, jsonl, tmp_path, capsys):
    import re

    out = tmp_path / "out"
    work = Path(work_dir(str(out)))
    write_lease(work, age_s=600)
    (work / "staging-20260101T000000-0ther").mkdir()  # what the silent run had staged
    code, _, err = run_job("convert", ["--input", jsonl, "--output", out], capsys)
    assert code == 0, err
    # 600 s, and what the run took to get there on a busy machine
    assert re.search(r"convert: note: took over the lock on .* from run 20260101T000000-0ther \(pid 4242 on host "
                     r"node-7\): no heartbeat for 6[0-2]\d s \(stale after 300 s\)", err), err
    report = json.loads((out / "_report.json").read_text())
    assert report["lock_takeover"]["run_id"] == "20260101T000000-0ther"
    assert re.match(r"no heartbeat for 6[0-2]\d s", report["lock_takeover"]["reason"])
    assert any("staging-20260101T000000-0ther" in note for note in report["recovered"])
    assert rows(out) == ALL and not work.exists()


def test_a_killed_holder_s_lease_goes_stale_and_the_same_command_then_completes(spark, jsonl, tmp_path, capsys, conf):
    """A holder SIGKILLed on this node is seen to be gone at once; one on another node only goes
    silent, and is taken over once its lease is stale. (A spark-submit run SIGKILLed mid-write and
    taken over: test_publish; the stale time a spark-submit run writes in its lease: the test above.)"""
    import re
    import signal

    out = tmp_path / "out"
    work = Path(work_dir(str(out)))
    args = ["--input", jsonl, "--output", out]
    me = lock.identity()
    holder = subprocess.Popen(["sleep", "300"])
    write_lease(work, **{**me, "pid": holder.pid, "pid_start": None, "stale_s": 3.0, "age_s": 0})
    (work / "staging-20260101T000000-0ther").mkdir()  # what it had staged
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()

    code, _, err = run_job("convert", args, capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    took = report["lock_takeover"]
    assert took["run_id"] == "20260101T000000-0ther" and took["reason"] == "its process is gone"
    assert any("staging-20260101T000000-0ther" in note for note in report["recovered"])
    assert rows(out) == ALL and not work.exists()

    # Had it run on another node, its death shows only as silence: its own stale time counts.
    write_lease(work, pid=holder.pid, stale_s=3.0, age_s=0)
    conf(lock.STALE_CONF, "3")
    code, _, err = run_job("convert", [*args, "--mode", "overwrite"], capsys)
    assert code == 2 and "run 20260101T000000-0ther" in err
    assert re.search(r"once its lease is stale, in [0-3] s", err), err  # 3 s less what the run took to get there
    time.sleep(3.5)
    code, _, err = run_job("convert", [*args, "--mode", "overwrite"], capsys)
    assert code == 0, err
    report = json.loads((out / "_report.json").read_text())
    assert report["lock_takeover"]["run_id"] == "20260101T000000-0ther"
    assert "no heartbeat" in report["lock_takeover"]["reason"]
    assert rows(out) == ALL and not work.exists()
