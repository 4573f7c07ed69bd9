"""The node bootstrap installing the package from an offline wheel directory into a prefix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_bootstrap import fake_nvidia_smi, fake_oss_tools, run


@pytest.fixture(scope="module")
def wheelhouse(offline_wheels) -> Path:
    """This package's wheel (built once per run) and the wheels of its locked dependencies, as an
    offline directory: the versions installed here, repacked (conftest.offline_wheels)."""
    return offline_wheels


def test_install_into_a_prefix_from_a_wheel_directory(tmp_path, wheelhouse):
    prefix = tmp_path / "opt"
    spark_env = tmp_path / "spark-env.sh"
    cmd = [ROOT / "bootstrap" / "install-python-env.sh", "--prefix", prefix, "--wheels", wheelhouse, "--cpu",
           "--extras", "locked", "--python", sys.executable, "--spark-env", spark_env]
    first = run(cmd)
    assert first.returncode == 0, first.stderr
    py = prefix / "venv" / "bin" / "python"
    check = run([py, "-c", "import promptscore, udfs, pyarrow, pandas; print(pyarrow.__version__, pandas.__version__)"])
    assert check.stdout.split() == ["21.0.0", "2.3.3"]  # the pinned versions of the locked extra
    assert (prefix / "app" / "jobs" / "convert.py").is_file()
    assert (prefix / "app" / "conf" / "emr-score-gpu.conf").is_file()
    found = run([prefix / "bin" / "gpu-discovery.sh"],
                env={**fake_nvidia_smi(tmp_path, 2), "PROMPTSCORE_GPU_AMOUNT": "2"})
    assert json.loads(found.stdout)["addresses"] == ["0", "1"], found.stderr
    assert (prefix / "spark-python.conf").read_text() == f"spark.pyspark.python {py}\n"
    line = f"export PYSPARK_PYTHON={py}"
    assert spark_env.read_text().splitlines() == [line]
    assert "installing promptscore[locked]" in first.stderr

    again = run(cmd)  # idempotent: nothing to do, nothing added twice
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert spark_env.read_text().splitlines() == [line]

    staged = run([ROOT / "bootstrap" / "stage-model.sh", ROOT / "conf", tmp_path / "model", "--python", py])
    assert staged.returncode == 0, staged.stderr
    assert sorted(p.name for p in (tmp_path / "model").iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in (ROOT / "conf").iterdir())



def test_an_unconfigured_ossutil_falls_back_to_hadoop_fs(tmp_path, wheelhouse):
    env = fake_oss_tools(tmp_path, wheelhouse.parent, ossutil="fail", hadoop="copy")
    prefix = tmp_path / "opt"
    proc = run([ROOT / "bootstrap" / "install-python-env.sh", "--prefix", prefix, "--wheels",
                f"oss://bucket/{wheelhouse.name}/", "--cpu", "--extras", "locked", "--python", sys.executable], env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ossutil failed (not configured on this node?); trying hadoop fs" in proc.stderr
    assert (tmp_path / "hadoop-calls").read_text().split() == \
        ["fs", "-copyToLocal", "-f", f"oss://bucket/{wheelhouse.name}/*", f"{prefix}/wheels/"]
    assert sorted(p.name for p in (prefix / "wheels").iterdir()) == sorted(p.name for p in wheelhouse.iterdir())
    check = run([prefix / "venv" / "bin" / "python", "-c", "import promptscore, pyarrow; print(pyarrow.__version__)"])
    assert check.stdout.strip() == "21.0.0", check.stderr
