"""The engine host: one engine per device key, shared by workers, gone with its executor; how it
stops, crashes, fails to start, and what it leaves behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from udfs import engine_cache, engine_client, host_files
from udfs.engine_client import EngineClient
from udfs.engines import EngineError, EngineSpec
from udfs.host_files import RowError, paths_for


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch):
    """A runtime directory of this test's own (short: socket paths are limited to 107 bytes)."""
    path = tempfile.mkdtemp(prefix="ps-rt-")
    monkeypatch.setenv("PROMPTSCORE_RUNTIME_DIR", path)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture()
def owner():
    """A stand-in for the executor JVM that owns an engine host."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def start_host(spec: EngineSpec, key: str, owner: int) -> subprocess.Popen:
    """An engine host started as a worker starts one (its output goes to its log)."""
    return engine_client._spawn(spec, key, owner, {"CUDA_VISIBLE_DEVICES": ""}, paths_for(key))


def wait_for_socket(key: str, timeout: float = 60) -> EngineClient:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = engine_client._try_connect(paths_for(key).sock)
        if conn is not None:
            return EngineClient(conn, key)
        time.sleep(0.1)
    raise AssertionError(f"engine host did not come up; its log:\n{log_of(key)}")


def log_of(key: str) -> str:
    return Path(paths_for(key).log).read_text()


def files_of(runtime: Path, key: str) -> list[str]:
    return sorted(p.name for p in runtime.iterdir() if p.name.startswith(key) or key in p.name)


def test_one_engine_per_key_and_it_leaves_with_its_owner_leaving_only_its_log(tiny_model, owner, runtime_dir):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-{owner.pid}"
    first = start_host(spec, key, owner.pid)
    client = wait_for_socket(key)
    assert client.hello(host_files.fingerprint(spec), owner.pid)
    assert client.info["pid"] == first.pid

    # A second host for the same key refuses to start: never two engines on one device.
    second = start_host(spec, key, owner.pid)
    assert second.wait(timeout=60) == 3
    assert "another engine holds" in log_of(key)

    # Two clients share the one engine; replies are matched to requests.
    other = wait_for_socket(key)
    a = client.submit([[1, 2, 3]])
    b = other.submit([[4, 5], [6]])
    assert len(other.result(b)) == 2 and len(client.result(a)) == 1
    with pytest.raises(RowError, match="out of vocabulary"):
        client.score([[10**6]])
    assert client.stats()["rows"] == 3

    owner.kill()
    owner.wait()
    assert first.wait(timeout=30) == 0
    assert f"owner process {owner.pid} exited" in log_of(key)
    # Keyed by an executor that is gone for good: socket, locks, spec and starts go too.
    assert files_of(runtime_dir, key) == [f"promptscore-engine-{key}.log"]


def test_a_worker_that_stops_reading_does_not_block_the_engine(tiny_model, owner):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-{owner.pid}"
    host = start_host(spec, key, owner.pid)
    stale = wait_for_socket(key)
    # Like a worker left behind by limit(): requests sent, replies never read, more replies than
    # the socket's buffers hold (refusals: quick to compute, ~100 bytes each).
    for _ in range(4000):
        stale.submit([[10**6]])
    fresh = wait_for_socket(key)
    assert len(fresh.score([[1, 2, 3]])) == 1
    fresh.shutdown()
    assert host.wait(timeout=30) == 0


def test_sigterm_stops_the_host_and_fails_what_it_had_not_scored(tiny_model, owner, runtime_dir):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-{owner.pid}"
    host = start_host(spec, key, owner.pid)
    client = wait_for_socket(key)
    rids = [client.submit([[1] * 500] * 8) for _ in range(100)]
    host.send_signal(signal.SIGTERM)
    assert host.wait(timeout=30) == 0
    outcomes: list[int | str] = []
    for rid in rids:
        try:
            outcomes.append(len(client.result(rid)))
        except EngineError as e:  # fatal, never RowError: the task fails and Spark retries it
            outcomes.append(str(e))
    errors = outcomes[next(i for i, o in enumerate(outcomes) if isinstance(o, str)):]
    assert all(isinstance(e, str) for e in errors)
    assert "engine host stopped: signal 15" in errors[0] or "went away" in errors[0]  # the reply or the EOF
    assert client.conn.closed  # the worker's next connect() starts over
    assert f"shutting down (signal {int(signal.SIGTERM)})" in log_of(key)
    # The owner lives on: its locks and start log stay for the next host; socket and spec go.
    assert files_of(runtime_dir, key) == sorted([f"{key}.lock", f"{key}.starts",
                                                 f"promptscore-engine-{key}.log"])


WORKER = """
import json, os, signal, sys
from pathlib import Path
import pandas as pd
from udfs import engine_client, host_files
from udfs.engines import EngineError, EngineSpec
from udfs.reward import ScoreSpec, TaskStats, score_batches

spec = ScoreSpec(engine=EngineSpec(model_dir=sys.argv[1], device="cpu"), inflight=1, engine_restarts=1)
out = {"pids": []}
stats = TaskStats()

def batches(kills, st):
    yield pd.Series(["the first prompt"])
    for _ in range(kills):
        out["pids"].append(st.host["pid"])
        os.kill(st.host["pid"], signal.SIGKILL)  # the engine dies, as the kernel's OOM killer kills it
        out["stale_socket"] = Path(host_files.paths_for(st.host["key"]).sock).exists()
        yield pd.Series(["the second prompt"])

out["scored"] = [float(df["score"][0]) for df in score_batches(spec, batches(1, stats), stats)]
out["restarts"] = stats.restarts
out["new_pid"] = stats.host["pid"]
twice = TaskStats()
try:
    list(score_batches(spec, batches(2, twice), twice))
except EngineError as e:
    out["error"] = str(e)
again = TaskStats()  # the next task of this worker
frames = list(score_batches(spec, iter([pd.Series(["the third prompt"])]), again))
out.update(next_pid=again.host["pid"], next_error=frames[0]["score_error"][0])
engine_client.stop_all()
print(json.dumps(out))
"""


def test_a_task_outlives_one_engine_crash_and_fails_on_the_next(tiny_model):
    """An engine host killed under a task: the task starts it again and sends the rows it had not
    answered (every row scored once, as before); a second loss in the same task fails it (Spark
    retries it), and the worker's next task gets a new engine."""
    from conftest import direct_scores

    proc = subprocess.run([sys.executable, "-c", WORKER, str(tiny_model)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    want = direct_scores(tiny_model, ["the first prompt", "the second prompt"])
    assert len(out["scored"]) == 2 and max(abs(a - b) for a, b in zip(out["scored"], want)) < 1e-4
    assert out["restarts"] == 1 and out["new_pid"] != out["pids"][0]
    assert out["stale_socket"]  # left by the killed host; the next host replaces it
    assert out["error"].startswith("engine host cpu-") and "went away" in out["error"]
    assert out["next_pid"] not in out["pids"] and out["next_error"] is None


def test_a_connection_never_has_more_rows_in_the_host_than_its_limit(tiny_model, owner):
    """A worker that sends far more than it may (no bound of its own): the host reads no more of
    its rows while it holds ``limit`` of them; the rest wait in the worker's socket."""
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-{owner.pid}"
    host = start_host(spec, key, owner.pid)
    client = wait_for_socket(key)
    assert client.hello(host_files.fingerprint(spec), owner.pid, 256)
    rids = [client.submit([[1, 2, 3, 4] * 8] * 50) for _ in range(60)]  # 3,000 rows at once
    assert [len(client.result(r)) for r in rids] == [50] * 60
    stats = client.stats()
    assert stats["link_limit"] == 256 and stats["rows"] == 3000
    assert 50 <= stats["link_peak_rows"] <= 256 and stats["peak_link_rows"] <= 256
    assert stats["rows_in_flight"] == 0
    big = client.submit([[5, 6]] * 300)  # one request over the limit is taken alone
    assert len(client.result(big)) == 300 and client.stats()["link_peak_rows"] == 300
    client.shutdown()
    assert host.wait(timeout=30) == 0


def test_the_host_says_when_it_is_starting_and_when_ready(tiny_model, owner):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-{owner.pid}"
    host = start_host(spec, key, owner.pid)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1]["state"] != "ready"):
        state = host_files.host_state(key)
        if state is not None and (not seen or state != seen[-1]):
            seen.append(state)
        time.sleep(0.02)
    assert seen[-1]["state"] == "ready" and seen[-1]["pid"] == host.pid and seen[-1]["start_s"] > 0
    if len(seen) > 1:  # caught while the engine loaded (it may be quicker than this loop)
        assert seen[0]["state"] == "starting" and seen[0]["since"] <= seen[-1]["since"] + seen[-1]["start_s"]
    wait_for_socket(key).shutdown()
    assert host.wait(timeout=30) == 0
    assert host_files.host_state(key) is None and not Path(paths_for(key).state).exists()


def test_a_host_that_dies_while_starting_is_reported_with_the_end_of_its_log(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    code = ("from udfs import engine_client; from udfs.engines import EngineSpec; "
            f"engine_client.connect(EngineSpec(model_dir={str(broken)!r}, device='cpu'), start_timeout_s=120)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()
    assert any("exited with code 1 while starting; its log" in line for line in error), proc.stderr[-3000:]
    assert "no-such-architecture" in proc.stderr  # the log's last lines say why


def worker(model: Path, max_model_len: int = 4096) -> dict:
    """A stand-in for a Spark Python worker (a child of this process, as workers are children of
    their executor): connects, scores a row, exits."""
    code = ("import json; from udfs import engine_client; from udfs.engines import EngineSpec; "
            f"c = engine_client.connect(EngineSpec(model_dir={str(model)!r}, device='cpu', "
            f"max_model_len={max_model_len})); c.score([[1, 2]]); print(json.dumps(c.stats()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_another_spec_for_the_device_replaces_the_host(tiny_model):
    first = worker(tiny_model)
    assert first["owner"] == os.getpid()
    second = worker(tiny_model, max_model_len=512)
    assert second["pid"] != first["pid"]
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(first["pid"], 0)
            time.sleep(0.1)
    assert len(Path(paths_for(second["key"]).starts).read_text().splitlines()) == 2
    wait_for_socket(second["key"]).shutdown()


def test_a_host_keeps_its_caches_in_the_cache_dir_and_says_when_they_are_warm(tiny_model, owner, tmp_path,
                                                                                  monkeypatch):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-{owner.pid}"
    env = {"CUDA_VISIBLE_DEVICES": "", **engine_cache.engine_env(str(tmp_path))}
    mine = tmp_path / "engine-cache" / str(os.getuid())
    # An engine of this spec started with this cache before (a cold start: test_score_job's URI test).
    monkeypatch.setenv(engine_cache.ROOT_ENV, str(mine))
    engine_cache.record_start(host_files.fingerprint(spec), 1.0)
    host = engine_client._spawn(spec, key, owner.pid, env, paths_for(key))
    client = wait_for_socket(key)
    assert client.hello(host_files.fingerprint(spec), owner.pid)
    assert client.info["cache_dir"] == str(mine) and client.info["cache_warm"] is True
    assert client.info["cache_env"] == {name: str(mine / sub) for name, sub in engine_cache.ENV_DIRS.items()}
    client.shutdown()
    assert host.wait(timeout=30) == 0
    assert json.loads(Path(paths_for(key).starts).read_text().splitlines()[-1])["cache_warm"] is True

    # Compiled code is executed: a cache that others may write is refused.
    os.chmod(mine, 0o777)
    with pytest.raises(EngineError, match="is not this user's own"):
        engine_cache.engine_env(str(tmp_path))


def test_a_vllm_without_the_public_api_fails_the_start_in_one_line(tiny_model):
    with pytest.raises(EngineError) as e:
        engine_client.connect(EngineSpec(model_dir=str(tiny_model), backend="vllm"), ["0"], start_timeout_s=120)
    message = str(e.value)
    assert "\n" not in message and message.startswith("the engine host for gpu0 could not start: vLLM ")
    assert "vLLM 0.25.0" in message


PRESTART = ("import json; from udfs import engine_client; from udfs.engines import EngineSpec; "
            "print(json.dumps(engine_client.prestart(EngineSpec(model_dir={model!r}, device='cpu'))))")


def prestart(model: Path) -> dict:
    """``engine_client.prestart`` in a stand-in for a Spark Python worker (a child of this process)."""
    out = subprocess.run([sys.executable, "-c", PRESTART.format(model=str(model))], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_prestarted_host_is_joined_by_the_first_task_and_says_where_its_start_went(tiny_model):
    from udfs.start_parts import PART_KEYS

    first = prestart(tiny_model)
    assert first["started"] is True and first["reason"] is None
    # Starting or ready: a second prestart leaves it be (and never waits for it).
    again = prestart(tiny_model)
    assert again["started"] is False and again["pid"] == first["pid"] and again["reason"].startswith("host ")
    info = worker(tiny_model)  # a task: joins the host that is starting, starts none of its own
    assert info["pid"] == first["pid"] and info["started_by"] == "prestart"
    key = info["key"]
    starts = [json.loads(line) for line in Path(paths_for(key).starts).read_text().splitlines()]
    assert len(starts) == 1 and starts[0]["started_by"] == "prestart"
    parts = info["engine_start_parts"]
    assert starts[0]["start_parts"] == parts and set(PART_KEYS) <= set(parts)
    assert parts["torch_import_s"] > 0 and parts["weights_s"] > 0 and parts["first_request_s"] > 0
    assert parts["vllm_import_s"] is None and parts["compile_s"] is None  # no vLLM here
    assert abs(parts["total_s"] - info["engine_start_s"] - parts["python_s"]) < 1.0
    state = host_files.host_state(key)
    assert state["state"] == "ready" and state["start_parts"] == parts and state["started_by"] == "prestart"
    assert info["process_started_at"] <= info["started_at"]
    wait_for_socket(key).shutdown()


def test_a_prestart_starts_nothing_on_a_device_another_process_holds(tiny_model):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = engine_client.key_for(spec)
    from udfs.locks import file_lock

    with file_lock(paths_for(key).lock):
        done = engine_client.prestart(spec)
    assert done == {"key": key, "started": False, "pid": None, "reason": "device held"}
    assert host_files.host_state(key) is None and not Path(paths_for(key).log).exists()


def test_a_host_whose_owner_exits_while_it_starts_stops_at_once_leaving_only_its_log(tiny_model, owner, runtime_dir):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-{owner.pid}"
    host = start_host(spec, key, owner.pid)
    assert host_files.host_state(key)["state"] == "starting"  # said by the spawner at once
    owner.kill()
    owner.wait()
    assert host.wait(timeout=30) != 0
    log = log_of(key)
    assert f"owner process {owner.pid} exited while the engine was starting" in log and "ready in" not in log
    assert files_of(runtime_dir, key) == [f"promptscore-engine-{key}.log"]
