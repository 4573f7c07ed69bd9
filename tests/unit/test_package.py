"""What `make package` and `make submit` give a cluster: importable artifacts, exact command lines."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess

import pytest
from conftest import ROOT

from promptscore.tools.submit import conf_args


def make(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


MODULES = ("import promptscore, promptscore.cli, promptscore.tools.stage_model, promptscore.tools.submit, "
           "promptscore.tools.serverless, udfs, udfs.staging, "
           "promptscore.tools.oss_source")


@pytest.mark.parametrize("job, profile", [("convert", "conf/emr-convert.conf"), ("score", "conf/emr-score-gpu.conf")])
def test_make_submit_prints_the_full_line(job, profile):
    args = "--input oss://b/in/ --output oss://b/out/" + (" --model /mnt/models/rm" if job == "score" else "")
    proc = make("submit", f"JOB={job}", f"ARGS={args}")
    assert proc.returncode == 0, proc.stderr
    # The profile as --conf pairs on top of the cluster's spark-defaults.conf, never --properties-file.
    assert shlex.split(proc.stdout) == ["spark-submit", *conf_args(profile), f"jobs/{job}.py", *shlex.split(args)]

    # For a DataWorks node: cluster mode, a packed environment for the driver and the executors.
    proc = make("submit", f"JOB={job}", f"ARGS={args}", "DEPLOY_MODE=cluster", "PY_FILES=oss://b/jobs/promptscore.zip",
                "JOBS_URI=oss://b/jobs", "ENV_ARCHIVE=oss://b/envs/promptscore-env.tar.gz")
    assert proc.returncode == 0, proc.stderr
    overrides = {"spark.submit.deployMode": "cluster", "spark.pyspark.python": "./environment/bin/python",
                 "spark.pyspark.driver.python": "./environment/bin/python"}
    assert shlex.split(proc.stdout) == [
        "spark-submit", *conf_args(profile, overrides), "--py-files", "oss://b/jobs/promptscore.zip",
        "--archives", "oss://b/envs/promptscore-env.tar.gz#environment", f"oss://b/jobs/{job}.py", *shlex.split(args)]


def test_make_submit_env_archive_in_client_mode_needs_the_drivers_python():
    args = "ARGS=--input oss://b/in/ --output oss://b/out/"
    proc = make("submit", "JOB=convert", args, "ENV_ARCHIVE=oss://b/env.tar.gz")
    assert proc.returncode != 0 and proc.stdout == ""
    assert [line for line in proc.stderr.splitlines() if line.startswith("submit:")] == [
        "submit: error: --env-archive in client mode needs --driver-python PATH (the driver runs on this machine, "
        "where the archive is not unpacked), or use --deploy-mode cluster"]
    proc = make("submit", "JOB=convert", args, "ENV_ARCHIVE=oss://b/env.tar.gz", "DRIVER_PYTHON=/usr/bin/python3")
    assert proc.returncode == 0, proc.stderr
    words = shlex.split(proc.stdout)
    assert "spark.pyspark.python=./environment/bin/python" in words
    assert "spark.pyspark.driver.python=/usr/bin/python3" in words
    assert "spark.submit.deployMode=client" in words


def test_make_submit_for_serverless_spark():
    proc = make("submit", "JOB=convert", "TARGET=serverless", "JOBS_URI=oss://b/jobs", "ENVIRONMENT=ev-1",
                "CLIENT_TOKEN=day-1", "PY_FILES=oss://b/jobs/promptscore.zip",
                "ARGS=--input oss://b/in/ --output oss://b/out/")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["jobDriver"]["sparkSubmit"]["entryPoint"] == "oss://b/jobs/convert.py"
    assert body["jobDriver"]["sparkSubmit"]["entryPointArguments"] == ["--input", "oss://b/in/", "--output", "oss://b/out/"]
    params = shlex.split(body["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"])
    assert params == ["--py-files", "oss://b/jobs/promptscore.zip", *conf_args("conf/serverless-convert.conf"),
                      "--conf", "spark.emr.serverless.environmentId=ev-1"]
    assert body["clientToken"] == "day-1" and body["executionTimeoutSeconds"] == 21600
    assert body["releaseVersion"].startswith("esr-4.")

    proc = make("submit", "JOB=convert", "TARGET=serverless", "JOBS_URI=oss://b/jobs", "ARGS=--input x")
    assert proc.returncode != 0 and "needs --environment-id ID" in proc.stderr

    proc = make("submit", "JOB=score", "TARGET=serverless", "JOBS_URI=oss://b/jobs", "ARGS=--input x")
    assert proc.returncode != 0 and "takes the convert job only" in proc.stderr


def test_udfs_imports_nothing_from_promptscore():
    """udfs is the executor-side library: promptscore imports it, never the other way."""
    for path in sorted((ROOT / "udfs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not [m for m in modules if m.split(".")[0] == "promptscore"], f"{path.name}:{node.lineno}"
