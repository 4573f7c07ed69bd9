"""The engine host: one engine per device key, shared by workers, gone with its executor."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from udfs import engine_host
from udfs.engine_host import EngineClient, RowError, paths_for
from udfs.engines import EngineSpec


def start_host(spec: EngineSpec, key: str, owner: int) -> subprocess.Popen:
    paths = paths_for(key)
    spec_file = Path(paths.sock).with_suffix(".spec.json")
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "udfs.engine_host", "--spec", str(spec_file), "--key", key,
                             "--owner", str(owner)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_socket(key: str, timeout: float = 60) -> EngineClient:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = engine_host._try_connect(paths_for(key).sock)
        if conn is not None:
            return EngineClient(conn, key)
        time.sleep(0.1)
    raise AssertionError("engine host did not come up")


@pytest.fixture()
def owner():
    """A stand-in for the executor JVM that owns an engine host."""
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_one_engine_per_key_and_it_leaves_with_its_owner(tiny_model, owner):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-test-{owner.pid}"
    first = start_host(spec, key, owner.pid)
    client = wait_for_socket(key)
    assert client.hello(engine_host.fingerprint(spec), owner.pid)
    assert client.info["pid"] == first.pid

    # A second host for the same key refuses to start: never two engines on one device.
    second = start_host(spec, key, owner.pid)
    assert second.wait(timeout=60) == 3
    assert "another engine holds" in second.stdout.read()

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
    log = first.stdout.read()
    assert f"owner process {owner.pid} exited" in log
    assert not os.path.exists(paths_for(key).sock)


def test_a_worker_that_stops_reading_does_not_block_the_engine(tiny_model, owner):
    spec = EngineSpec(model_dir=str(tiny_model), device="cpu")
    key = f"cpu-test-{owner.pid}"
    host = start_host(spec, key, owner.pid)
    stale = wait_for_socket(key)
    for _ in range(200):  # like a worker left behind by limit(): requests sent, replies never read
        stale.submit([[1] * 300] * 8)
    fresh = wait_for_socket(key)
    assert len(fresh.score([[1, 2, 3]])) == 1
    fresh.shutdown()
    assert host.wait(timeout=30) == 0


def worker(model: Path, max_model_len: int = 4096) -> dict:
    """A stand-in for a Spark Python worker (a child of this process, as workers are children of
    their executor): connects, scores a row, exits."""
    code = ("import json; from udfs import engine_host; from udfs.engines import EngineSpec; "
            f"c = engine_host.connect(EngineSpec(model_dir={str(model)!r}, device='cpu', "
            f"max_model_len={max_model_len})); c.score([[1, 2]]); print(json.dumps(c.stats()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_workers_come_and_go_the_engine_stays(tiny_model):
    first = worker(tiny_model)
    assert first["owner"] == os.getpid()
    second = worker(tiny_model)  # the first worker is gone; its engine is not
    assert second["pid"] == first["pid"] and second["started_at"] == first["started_at"]
    assert second["requests"] == 2

    # Another spec for the same device replaces the host instead of adding a second engine.
    third = worker(tiny_model, max_model_len=512)
    assert third["pid"] != first["pid"]
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(first["pid"], 0)
            time.sleep(0.1)
    starts = Path(paths_for(third["key"]).starts).read_text().splitlines()
    assert len(starts) == 2
    client = wait_for_socket(third["key"])
    client.shutdown()
