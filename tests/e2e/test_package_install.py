"""The package as it is shipped: the wheel and the --py-files zip in a fresh virtualenv, and
`make submit EXECUTE=1` running the convert job by spark-submit."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT
from test_package import MODULES

from promptscore.tools.submit import conf_args


@pytest.fixture(scope="module")
def dist(package_dist) -> Path:
    """What `make package` builds, built once per run into a directory of the run's own (the
    checkout's dist/ is left as it is)."""
    return package_dist


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new virtualenv with nothing of this project (and no Spark) in it."""
    path = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    return path / "bin" / "python"


def test_the_wheel_installs_and_imports_in_a_fresh_venv(dist, fresh_venv):
    wheel = next(dist.glob("promptscore-*-py3-none-any.whl"))
    proc = subprocess.run([fresh_venv, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([fresh_venv, "-c", f"{MODULES}; import sys; print(promptscore.__file__); print(sys.prefix)"],
                         capture_output=True, text=True, cwd=fresh_venv.parent)  # not the checkout
    assert out.returncode == 0, out.stderr
    module_file, prefix = out.stdout.split()
    assert "site-packages" in module_file
    share = Path(prefix) / "share" / "promptscore"
    assert (share / "jobs" / "convert.py").is_file() and (share / "jobs" / "score.py").is_file()
    assert (share / "conf" / "emr-convert.conf").is_file()
    assert (share / "bootstrap" / "install-python-env.sh").is_file()


def test_the_installed_package_builds_a_submission_anywhere(dist, fresh_venv, tmp_path):
    """On a cluster node: the wheel's own conf/ and jobs/ (<venv>/share/promptscore), from any directory."""
    wheel = next(dist.glob("promptscore-*-py3-none-any.whl"))
    proc = subprocess.run([fresh_venv, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([fresh_venv, "-m", "promptscore.tools.submit", "score", "--", "--input", "x"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    share = Path(subprocess.run([fresh_venv, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                text=True).stdout.strip()) / "share" / "promptscore"
    assert words[-3:] == [str(share / "jobs" / "score.py"), "--input", "x"]
    assert "spark.executor.resource.gpu.amount=1" in words


def test_the_py_files_zip_imports_in_a_fresh_venv(dist, fresh_venv):
    zf = zipfile.ZipFile(dist / "promptscore.zip")
    names = set(zf.namelist())
    assert {"promptscore/__init__.py", "promptscore/convert/run.py", "udfs/reward.py", "udfs/engine_host.py"} <= names
    sources = (ROOT / "promptscore" / "convert" / "java").glob("*.java")
    carried = {"promptscore/convert/jars/promptscore-readahead.jar"} | {f"promptscore/convert/java/{p.name}"
                                                                          for p in sources}
    assert carried <= names  # the convert job's parser, and the sources it was built from
    assert not [n for n in names if "__pycache__" in n or not n.endswith(".py") and n not in carried]
    out = subprocess.run([fresh_venv, "-c", f"{MODULES}; print(promptscore.__file__)"], capture_output=True,
                         text=True, env={"PYTHONPATH": str(dist / "promptscore.zip"), "PATH": "/usr/bin:/bin"},
                         cwd=fresh_venv.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(dist / "promptscore.zip"))


def test_make_submit_runs_it_when_asked(make_submit_convert):
    """The run is shared with test_readahead, which checks what the job did without --jars."""
    proc, src, out = make_submit_convert
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, *rest = proc.stdout.splitlines()
    assert shlex.split(first) == ["spark-submit", *conf_args("conf/local.conf"), "jobs/convert.py",
                                  "--input", str(src), "--output", str(out), "--max-bad-fraction", "0.99"]
    assert json.loads((out / "_report.json").read_text())["rows_written"] == 120
