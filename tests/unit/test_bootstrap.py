"""The EMR bootstrap actions and DataWorks node scripts: lint, discovery, install, staging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BIN = Path(sys.executable).parent
SCRIPTS = sorted((ROOT / "bootstrap").glob("*.sh")) + sorted((ROOT / "docs" / "dataworks").glob("*.sh"))


def run(cmd, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=600, **kw)


def fake_nvidia_smi(tmp_path: Path, gpus: int) -> dict:
    """A PATH whose nvidia-smi answers like a machine with ``gpus`` GPUs, and a fresh claims folder."""
    bin_dir = tmp_path / f"bin-{gpus}"
    bin_dir.mkdir()
    rows = "\n".join(f"{i}, GPU-{i:08d}-aaaa-bbbb-cccc-dddddddddddd" for i in range(gpus))
    listing = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})" for i in range(gpus))
    script = bin_dir / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
if [ {gpus} -eq 0 ]; then echo "No devices were found"; exit 6; fi
case "$*" in
  *--query-gpu=index,uuid*) printf '%s\\n' "{rows}" ;;
  -L) printf '%s\\n' "{listing}" ;;
esac
""")
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PROMPTSCORE_GPU_CLAIMS": str(tmp_path / "claims")}


@pytest.fixture
def executors():
    """Start stand-ins for executor processes (the discovery script's owners); stop them after."""
    procs = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen(["sleep", "300"]))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def discover(env: dict, owner: subprocess.Popen | None = None,
             amount: int | None = None) -> subprocess.CompletedProcess:
    env = dict(env)
    if owner is not None:
        env["PROMPTSCORE_GPU_OWNER_PID"] = str(owner.pid)
    if amount is not None:
        env["PROMPTSCORE_GPU_AMOUNT"] = str(amount)
    return run([ROOT / "bootstrap" / "gpu-discovery.sh"], env=env)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    proc = run([BIN / "shellcheck", "--severity=style", script])
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", sorted((ROOT / "bootstrap").glob("*.sh")), ids=lambda p: p.name)
def test_help(script):
    proc = run([script, "--help"])
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) >= 3


@pytest.mark.parametrize("gpus, amount", [(1, 1), (8, 1), (8, 8)])
def test_gpu_discovery(tmp_path, gpus, amount):
    proc = discover(fake_nvidia_smi(tmp_path, gpus), amount=amount)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"name": "gpu", "addresses": [str(i) for i in range(amount)]}


def test_gpu_discovery_never_hands_one_gpu_to_two_executors(tmp_path, executors):
    env = fake_nvidia_smi(tmp_path, 2)
    first, second, third = executors(), executors(), executors()
    assert json.loads(discover(env, first).stdout)["addresses"] == ["0"]
    assert json.loads(discover(env, first).stdout)["addresses"] == ["0"]  # again: still its own
    assert json.loads(discover(env, second).stdout)["addresses"] == ["1"]
    proc = discover(env, third)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().startswith("gpu-discovery: 0 of 1 GPUs free on")
    first.kill()
    first.wait()
    # The first executor has exited: its GPU goes to the next one.
    assert json.loads(discover(env, third).stdout)["addresses"] == ["0"]


def test_gpu_discovery_under_concurrent_executors(tmp_path, executors):
    env = fake_nvidia_smi(tmp_path, 8)
    owners = [executors() for _ in range(8)]
    procs = [subprocess.Popen([str(ROOT / "bootstrap" / "gpu-discovery.sh")], stdout=subprocess.PIPE, text=True,
                              env={**env, "PROMPTSCORE_GPU_OWNER_PID": str(o.pid)}) for o in owners]
    addresses = [json.loads(p.communicate(timeout=120)[0])["addresses"] for p in procs]
    assert sorted(a for (a,) in addresses) == [str(i) for i in range(8)]


def test_gpu_discovery_gives_back_a_partial_claim(tmp_path, executors):
    env = fake_nvidia_smi(tmp_path, 2)
    taken = executors()
    assert json.loads(discover(env, taken).stdout)["addresses"] == ["0"]
    greedy = executors()
    proc = discover(env, greedy, amount=2)
    assert proc.returncode == 1 and "1 of 2 GPUs free" in proc.stderr
    assert json.loads(discover(env, executors()).stdout)["addresses"] == ["1"]  # GPU 1 was given back


@pytest.mark.parametrize("gpus, amount, error", [
    (0, None, "0 of 1 GPUs free"), (2, 0, "must be a positive integer"), (2, "x", "must be a positive integer")])
def test_gpu_discovery_refuses(tmp_path, gpus, amount, error):
    proc = discover(fake_nvidia_smi(tmp_path, gpus), amount=amount)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and error in proc.stderr


def test_gpu_discovery_without_nvidia_smi(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    if shutil.which("nvidia-smi", path=env["PATH"]):
        pytest.skip("this machine has nvidia-smi")
    proc = run([ROOT / "bootstrap" / "gpu-discovery.sh"], env=env)
    assert proc.returncode == 1 and "nvidia-smi not found" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("gpus, extras", [(0, "locked,score,oss"), (1, "locked,score,oss,gpu")])
def test_install_plan_follows_the_node_type(tmp_path, gpus, extras):
    env = fake_nvidia_smi(tmp_path, gpus)
    proc = run([ROOT / "bootstrap" / "install-python-env.sh", "--dry-run", "--prefix", tmp_path / "p",
                "--python", sys.executable], env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"mode={'gpu' if gpus else 'cpu'}" in proc.stdout
    assert f"spec=promptscore[{extras}]" in proc.stdout
    assert not (tmp_path / "p").exists()


def test_install_refuses_an_old_python_and_unknown_options(tmp_path):
    old = tmp_path / "python3.6"
    old.write_text('#!/bin/sh\ncase "$2" in *"<"*) exit 1 ;; *) echo 3.6 ;; esac\n')
    old.chmod(0o755)
    proc = run([ROOT / "bootstrap" / "install-python-env.sh", "--python", old, "--prefix", tmp_path / "p"])
    assert proc.returncode == 1 and "Python 3.6; the jobs need 3.10 or newer" in proc.stderr
    proc = run([ROOT / "bootstrap" / "install-python-env.sh", "--frobnicate"])
    assert proc.returncode == 1 and "unknown option --frobnicate" in proc.stderr


def test_install_fails_loudly_without_the_wheels(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run([ROOT / "bootstrap" / "install-python-env.sh", "--prefix", tmp_path / "p", "--wheels", empty,
                "--cpu", "--extras", "locked", "--python", sys.executable])
    assert proc.returncode == 1
    assert "ERROR: pip could not install promptscore[locked] from" in proc.stderr


def fake_oss_tools(tmp_path: Path, root: Path, ossutil: str, hadoop: str) -> dict:
    """A PATH with an ``ossutil`` and a ``hadoop`` that either work on ``root`` as bucket ``bucket``
    ("copy"), fail as an unconfigured ossutil does ("fail"), or are absent ("none")."""
    bin_dir = tmp_path / "oss-bin"
    bin_dir.mkdir()
    scripts = {
        ("ossutil", "fail"): 'echo "Read config file error: stat /root/.ossutilconfig: no such file or directory, '
                             'please try \\"help config\\" to set configuration or use '
                             '\\"--config-file\\" option" >&2\n'
                             'exit 1\n',
        ("hadoop", "copy"): 'echo "$*" >> "$FAKE_HADOOP_CALLS"\nsrc=${4#oss://bucket/}\n'
                            '# shellcheck disable=SC2086\ncp "$FAKE_OSS_ROOT"/$src "$5"\n',
        ("hadoop", "fail"): 'echo "$*" >> "$FAKE_HADOOP_CALLS"\necho "copyToLocal: Permission denied" >&2\nexit 1\n',
    }
    for tool, mode in (("ossutil", ossutil), ("hadoop", hadoop)):
        if mode != "none":
            (bin_dir / tool).write_text("#!/bin/sh\n" + scripts[(tool, mode)])
            (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_OSS_ROOT": str(root),
            "FAKE_HADOOP_CALLS": str(tmp_path / "hadoop-calls")}


@pytest.mark.parametrize("ossutil, hadoop, says", [
    ("fail", "fail", "could not copy it (ossutil failed (not configured on this node?), hadoop fs failed)"),
    ("fail", "none", "could not copy it (ossutil failed (not configured on this node?))"),
    ("none", "none", "could not copy it (no ossutil or hadoop on this node)"),
])
def test_install_stops_when_no_tool_can_copy_the_wheels(tmp_path, ossutil, hadoop, says):
    if shutil.which("hadoop") or shutil.which("ossutil"):
        pytest.skip("this machine has a real hadoop or ossutil")
    env = fake_oss_tools(tmp_path, tmp_path, ossutil=ossutil, hadoop=hadoop)
    proc = run([ROOT / "bootstrap" / "install-python-env.sh", "--prefix", tmp_path / "p", "--wheels",
                "oss://bucket/wheels/", "--cpu", "--python", sys.executable], env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and says in errors[0], proc.stderr
    assert not (tmp_path / "p" / "venv").exists()
