"""promptscore.tools.submit, the one place that builds a submission, and the DataWorks nodes built with it."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from promptscore.tools.submit import SubmitError, conf_args, read_profile, spark_submit_args

NODES = ROOT / "docs" / "dataworks"


def submit_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptscore.tools.submit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


# -- profiles ---------------------------------------------------------------------------------------

def test_profiles_are_read_as_java_properties(tmp_path):
    f = tmp_path / "p.conf"
    f.write_text("# comment\n! also a comment\n\n"
                 "spark.a  1\n"
                 "spark.b=2\n"
                 "spark.c : three words \n"
                 "   spark.d\t4\n"
                 "spark.e = long \\\n    value\n"
                 "spark.f = C:\\\\tmp\n"
                 "spark.g\n"
                 "spark.a  last wins\n")
    assert read_profile(f) == {"spark.a": "last wins", "spark.b": "2", "spark.c": "three words", "spark.d": "4",
                               "spark.e": "long value", "spark.f": "C:\\tmp", "spark.g": ""}
    assert conf_args(f, {"spark.b": "x=y"}) == [
        "--conf", "spark.a=last wins", "--conf", "spark.b=x=y", "--conf", "spark.c=three words",
        "--conf", "spark.d=4", "--conf", "spark.e=long value", "--conf", "spark.f=C:\\tmp", "--conf", "spark.g="]


@pytest.mark.parametrize("text, error", [
    ("spark.a 1\nsparkk.b 2\n", "p.conf:2: 'sparkk.b' is not a Spark property"),
    ("# nothing\n", "sets no Spark property"),
])
def test_bad_profiles_are_refused(tmp_path, text, error):
    f = tmp_path / "p.conf"
    f.write_text(text)
    with pytest.raises(SubmitError, match=re.escape(error)):
        read_profile(f)
    proc = submit_cli("convert", "--profile", str(f))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("submit: error: ") and error in proc.stderr


def test_a_missing_profile_is_one_line(tmp_path):
    proc = submit_cli("--conf-args", str(tmp_path / "nope.conf"))
    assert proc.returncode == 2 and proc.stderr.startswith("submit: error: cannot read profile")
    assert proc.stderr.count("\n") == 1


def test_conf_args_prints_shell_words():
    proc = submit_cli("--conf-args", "conf/local.conf")
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == conf_args("conf/local.conf")
    assert "--properties-file" not in proc.stdout


# -- EMR on ECS -------------------------------------------------------------------------------------

def props_of(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, word in enumerate(cmd) if word == "--conf")


def test_cluster_mode_keeps_the_profile_and_changes_only_the_mode():
    client = spark_submit_args("convert", ["--input", "x"])
    cluster = spark_submit_args("convert", ["--input", "x"], deploy_mode="cluster")
    assert props_of(client) == read_profile("conf/emr-convert.conf")
    assert props_of(cluster) == {**props_of(client), "spark.submit.deployMode": "cluster"}
    assert cluster[-3:] == ["jobs/convert.py", "--input", "x"]


def test_env_archive_runs_driver_and_executors_in_the_archive_in_cluster_mode():
    cmd = spark_submit_args("score", [], deploy_mode="cluster", env_archive="oss://b/env.tgz", jobs_uri="oss://b/jobs/")
    props = props_of(cmd)
    assert props["spark.pyspark.python"] == props["spark.pyspark.driver.python"] == "./environment/bin/python"
    assert cmd[-3:] == ["--archives", "oss://b/env.tgz#environment", "oss://b/jobs/score.py"]


def test_env_archive_in_client_mode_uses_the_python_given_for_the_driver():
    with pytest.raises(SubmitError, match="needs --driver-python"):
        spark_submit_args("convert", [], env_archive="oss://b/env.tgz")
    props = props_of(spark_submit_args("convert", [], env_archive="oss://b/env.tgz", driver_python="/usr/bin/python3"))
    assert props["spark.pyspark.python"] == "./environment/bin/python"
    assert props["spark.pyspark.driver.python"] == "/usr/bin/python3"


def test_the_discovery_script_claims_as_many_gpus_as_each_executor_gets():
    assert props_of(spark_submit_args("score", []))["spark.executorEnv.PROMPTSCORE_GPU_AMOUNT"] == "1"
    props = props_of(spark_submit_args("score", [], conf={"spark.executor.resource.gpu.amount": "2",
                                                          "spark.task.resource.gpu.amount": "2"}))
    assert props["spark.executorEnv.PROMPTSCORE_GPU_AMOUNT"] == "2"
    assert "spark.executorEnv.PROMPTSCORE_GPU_AMOUNT" not in props_of(spark_submit_args("convert", []))


def test_gpu_profile_starts_with_the_gpus_asked_for():
    props = read_profile("conf/emr-score-gpu.conf")
    assert props["spark.dynamicAllocation.initialExecutors"] == props["spark.dynamicAllocation.maxExecutors"]
    assert props["spark.executor.resource.gpu.amount"] == props["spark.executorEnv.PROMPTSCORE_GPU_AMOUNT"]


@pytest.mark.parametrize("args, error", [
    (["convert", "--conf", "foo=bar"], "--conf 'foo': expected spark.KEY=VALUE (the value is not shown)"),
    (["convert", "--conf", "spark.x"], "expected spark.KEY=VALUE"),
    (["convert", "--deploy-mode", "yarn"], "invalid choice: 'yarn'"),
    (["convert", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ([], "a job is required"),
    (["convert", "--target", "serverless"], "needs --jobs-uri"),
    (["score", "--target", "serverless", "--jobs-uri", "oss://b/j"], "takes the convert job only"),
    (["convert", "--target", "serverless", "--jobs-uri", "oss://b/j", "--environment-id", "ev-1", "--run"],
     "--run needs --workspace-id and --region"),
    (["convert", "--environment-id", "ev-1"], "--environment-id is for --target serverless"),
    (["convert", "--format", "plain", "--profile", "conf/local.conf"], "--format plain cannot hold"),
])
def test_bad_calls_are_one_line_and_exit_2(args, error):
    proc = submit_cli(*args, "--", "--input", "x")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("submit: error: ") and error in proc.stderr


def test_printed_formats_are_the_same_words():
    args = ["convert", "--deploy-mode", "cluster", "--jobs-uri", "oss://b/jobs", "--",
            "--input", "oss://b/raw/${bizdate}/", "--partition-value", "${bizdate}"]
    words = shlex.split(submit_cli(*args).stdout)
    assert words[0] == "spark-submit" and words[-4:] == ["--input", "oss://b/raw/${bizdate}/", "--partition-value",
                                                         "${bizdate}"]
    for fmt in ("lines", "plain"):
        text = submit_cli(*args[:-5], "--format", fmt, *args[-5:]).stdout
        assert shlex.split(text.replace("\\\n", " ")) == words
    assert "'" not in submit_cli(*args[:-5], "--format", "plain", *args[-5:]).stdout


# -- EMR Serverless Spark ---------------------------------------------------------------------------

def test_serverless_body_carries_the_serverless_profile():
    body = json.loads(submit_cli("convert", "--target", "serverless", "--jobs-uri", "oss://b/jobs", "--environment-id",
                                 "ev-1", "--conf", "spark.executor.cores=4", "--", "--input", "oss://b/in/").stdout)
    driver = body["jobDriver"]["sparkSubmit"]
    assert driver["entryPoint"] == "oss://b/jobs/convert.py" and driver["entryPointArguments"] == ["--input", "oss://b/in/"]
    props = props_of(shlex.split(driver["sparkSubmitParameters"]))
    assert props == {**read_profile("conf/serverless-convert.conf"), "spark.executor.cores": "4",
                     "spark.emr.serverless.environmentId": "ev-1"}
    assert not [k for k in props if k in ("spark.master", "spark.submit.deployMode") or k.startswith("spark.yarn")]
    assert body["codeType"] == "PYTHON" and body["name"] == "promptscore-convert"


# -- secrets: refused before anything is printed --------------------------------------------------

FAKE_SECRET = "FAKEsecretVALUEforTESTSonly0123456789"


@pytest.mark.parametrize("target", ["emr", "serverless"])
@pytest.mark.parametrize("conf", [
    f"spark.hadoop.fs.oss.accessKeySecret={FAKE_SECRET}",
    f"spark.hadoop.fs.oss.accessKeyId={FAKE_SECRET}",
    f"spark.hadoop.fs.oss.security.token={FAKE_SECRET}",
    f"spark.executorEnv.OSS_ACCESS_KEY_ID={FAKE_SECRET}",
    f"spark.yarn.appMasterEnv.ALIBABA_CLOUD_ACCESS_KEY_SECRET={FAKE_SECRET}",
    f"spark.ssl.keyPassword={FAKE_SECRET}",
    f"fs.oss.accessKeySecret={FAKE_SECRET}",  # not even a Spark key: still never echoed
    f"spark.hadoop.fs.defaultFS=oss://LTAI5tFAKE:{FAKE_SECRET}@bucket/",
])
def test_credentials_in_conf_are_refused_and_never_printed(target, conf):
    key = conf.split("=", 1)[0]
    proc = submit_cli("convert", "--target", target, "--jobs-uri", "oss://b/jobs", "--environment-id", "ev-1",
                      "--conf", conf, "--", "--input", "x")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and key in proc.stderr and FAKE_SECRET not in proc.stderr, proc.stderr
    assert "RAM role" in proc.stderr or "expected spark.KEY=VALUE" in proc.stderr


def test_a_profile_with_a_credential_is_refused(tmp_path):
    f = tmp_path / "p.conf"
    f.write_text(f"spark.app.name x\nspark.hadoop.fs.oss.accessKeySecret {FAKE_SECRET}\n")
    for args in (["--conf-args", str(f)], ["convert", "--profile", str(f)]):
        proc = submit_cli(*args)
        assert proc.returncode == 2 and proc.stdout == "" and FAKE_SECRET not in proc.stderr
        assert "p.conf:2: spark.hadoop.fs.oss.accessKeySecret: credentials are not taken" in proc.stderr


@pytest.mark.parametrize("args", [
    ["--", "--input", f"oss://LTAI5tFAKE:{FAKE_SECRET}@bucket/raw/"],
    ["--", f"--input=oss://LTAI5tFAKE:{FAKE_SECRET}@bucket/raw/"],
    ["--py-files", f"oss://LTAI5tFAKE:{FAKE_SECRET}@bucket/p.zip", "--"],
])
def test_uris_with_keys_are_refused_and_never_printed(args):
    proc = submit_cli("convert", *args)
    assert proc.returncode == 2 and proc.stdout == "" and FAKE_SECRET not in proc.stderr
    assert "a URI with keys in it" in proc.stderr


def test_switches_named_like_tokens_are_not_credentials():
    props = props_of(spark_submit_args("convert", [], conf={"spark.yarn.security.tokens.hbase.enabled": "false"}))
    assert props["spark.yarn.security.tokens.hbase.enabled"] == "false"


# -- running: the job's exit code, also in cluster mode ---------------------------------------------

@pytest.fixture
def fake_spark_submit(tmp_path):
    """A spark-submit on PATH that fails the way YARN cluster mode does: exit 1, the job's code in the
    application diagnostics on stderr (FAKE_STATUS); FAKE_STATUS=0 succeeds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "spark-submit"
    script.write_text('#!/bin/sh\necho "spark-submit $*" > "$FAKE_ARGS"\n'
                      'echo "INFO Client: Application report for application_1_0001 (state: RUNNING)" >&2\n'
                      '[ "$FAKE_STATUS" = 0 ] && exit 0\n'
                      '[ "$FAKE_STATUS" = none ] && { echo "ERROR something broke" >&2; exit 1; }\n'
                      'echo "ERROR Client: Application diagnostics message: User application exited with status '
                      '$FAKE_STATUS" >&2\n'
                      'echo "Exception in thread main org.apache.spark.SparkException: Application '
                      'application_1_0001 finished with failed status" >&2\nexit 1\n')
    script.chmod(0o755)

    def env(status: str) -> dict:
        return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_STATUS": status,
                "FAKE_ARGS": str(tmp_path / "args.txt")}

    return env


@pytest.mark.parametrize("status, code", [("0", 0), ("2", 2), ("3", 3), ("4", 4), ("1", 1), ("none", 1)])
def test_run_returns_the_jobs_exit_code_in_cluster_mode(fake_spark_submit, status, code):
    proc = submit_cli("convert", "--deploy-mode", "cluster", "--run", "--", "--input", "x",
                      env=fake_spark_submit(status))
    assert proc.returncode == code, proc.stderr
    assert "Application report" in proc.stderr  # spark-submit's output is passed through


# -- DataWorks nodes --------------------------------------------------------------------------------

def node_command(path: Path) -> tuple[list[str], list[str]]:
    """(the promptscore.tools.submit arguments in the node's header, the spark-submit words in its code)."""
    text = path.read_text()
    gen = re.search(r"^#\s+python -m promptscore\.tools\.submit (.+)$", text, re.M)
    assert gen, f"{path.name} does not say how it was generated"
    lines, code = text.splitlines(), []
    start = next(i for i, line in enumerate(lines) if line.startswith("spark-submit"))
    for line in lines[start:]:
        code.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    words = shlex.split(" ".join(code))
    if "2>&1" in words:
        words = words[:words.index("2>&1")]
    return shlex.split(gen.group(1)), words


NODE_FILES = sorted(NODES.glob("*-emr-s*-node.*"))


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: p.name)
def test_dataworks_nodes_hold_what_promptscore_submit_builds(path):
    gen_args, words = node_command(path)
    proc = submit_cli(*gen_args)
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout.replace("\\\n", " ")) == words, f"{path.name} is stale: regenerate it"
    props = props_of(words)
    # Run from a DataWorks resource group: the driver must run in YARN, on a node with the environment.
    assert props["spark.submit.deployMode"] == "cluster"
    assert "--properties-file" not in words and "${bizdate}" in " ".join(words)


def test_the_four_dataworks_nodes_are_there():
    assert [p.name for p in NODE_FILES] == ["convert-emr-shell-node.sh", "convert-emr-spark-node.txt",
                                            "score-emr-shell-node.sh", "score-emr-spark-node.txt"]


@pytest.mark.parametrize("job", ["convert", "score"])
@pytest.mark.parametrize("status, code, says", [
    ("0", 0, "done: oss://my-bucket/warehouse/"), ("2", 2, "the call is wrong"),
    ("3", 3, "_SUCCESS is not"), ("4", 4, "out of resources"), ("none", 1, "a rerun of the same command is safe")])
def test_shell_node_exits_with_the_jobs_code(tmp_path, fake_spark_submit, job, status, code, says):
    # What DataWorks does before running the node: substitute the scheduling parameter.
    node = tmp_path / "node.sh"
    node.write_text((NODES / f"{job}-emr-shell-node.sh").read_text().replace("${bizdate}", "20261122"))
    env = fake_spark_submit(status)
    proc = subprocess.run(["bash", str(node)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert says in proc.stdout.splitlines()[-1]
    assert "dt=20261122/" in proc.stdout.splitlines()[-1] or status in ("2", "4", "none")
    args = shlex.split(Path(env["FAKE_ARGS"]).read_text())
    assert "spark.submit.deployMode=cluster" in args and "20261122" in args
