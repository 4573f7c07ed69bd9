"""Every submission of the jobs, built in one place: ``make submit``, the DataWorks nodes, local runs.

    python -m promptscore.tools.submit convert -- --input oss://b/raw/ --output oss://b/prompts/
    python -m promptscore.tools.submit score --deploy-mode cluster --run -- --input ... --model /mnt/models/rm
    python -m promptscore.tools.submit convert --profile conf/local.conf --run -- --input data/ --output out/
    python -m promptscore.tools.submit convert --target serverless --jobs-uri oss://b/jobs --environment-id ev-1 -- ...
    python -m promptscore.tools.submit convert --target serverless ... --run --workspace-id w-1 \
        --region cn-hangzhou -- ...
    python -m promptscore.tools.submit --conf-args conf/local.conf

A profile (a Spark properties file in ``conf/``) becomes ``--conf key=value`` pairs on the command
line, never ``--properties-file``: in Spark 3.5 a properties file replaces the cluster's
``spark-defaults.conf`` entirely, and on EMR that file holds the Jindo OSS committer, the event log
and history server, the YARN jars and the shuffle and dynamic-allocation defaults. ``--conf`` pairs
are applied on top of it.

``--target emr`` (default) prints the ``spark-submit`` line for EMR on ECS (run on the master or a
gateway node, in an EMR Workflow Spark task, or in a DataWorks EMR Shell or EMR Spark node) and for
local runs (``--profile conf/local.conf``). ``--target serverless`` prints the request body of EMR
Serverless Spark's StartJobRun; it takes the convert job only (the score job needs YARN GPU
scheduling); with ``--run`` it starts the job run and follows it to its end (``promptscore.tools.serverless``).

Credentials are never part of either: a ``--conf`` or profile key that looks like a secret (Spark's
``spark.redaction.regex``: secret, password, token, access key) is refused, and so is a URI with
keys in it, before anything is printed. Nodes reach OSS with their RAM role (docs/emr.md).

With ``--run`` the line is run and its exit code returned. In YARN cluster mode ``spark-submit``
exits 1 for every failed application; the job's own code (2: fix the call, 3: data quality) is
recovered from the application's diagnostics ("User application exited with status N").
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from promptscore.tools.profiles import SubmitError, check_uri, conf_args, find_file, parse_conf, read_profile

PROFILES = {"convert": "conf/emr-convert.conf", "score": "conf/emr-score-gpu.conf"}
SERVERLESS_PROFILES = {"convert": "conf/serverless-convert.conf"}
# Where YARN unpacks an --env-archive in every container (driver in cluster mode, executors).
ENV_DIR = "./environment"
# What the YARN ApplicationMaster reports when the Python driver exits non-zero (cluster mode).
USER_EXIT = re.compile(r"User application exited with status (\d+)")
# -- EMR on ECS (YARN), local runs ------------------------------------------------------------------

def submission_conf(job: str, profile: str | Path | None = None, deploy_mode: str | None = None,
                    env_archive: str | None = None, driver_python: str | None = None,
                    conf: dict[str, str] | None = None) -> dict[str, str]:
    """The Spark properties of one submission: the profile, then what the options change."""
    props = read_profile(profile or PROFILES[job])
    if deploy_mode:
        props["spark.submit.deployMode"] = deploy_mode
    mode = props.get("spark.submit.deployMode", "client")
    if mode not in ("client", "cluster"):
        raise SubmitError(f"deploy mode {mode!r}: expected client or cluster")
    if env_archive:
        # YARN unpacks the archive in the executors' containers, and in cluster mode in the
        # driver's (the ApplicationMaster's) too. A client-mode driver runs here, where there is
        # no ./environment: it needs a Python of this machine.
        props["spark.pyspark.python"] = f"{ENV_DIR}/bin/python"
        if mode == "cluster":
            props["spark.pyspark.driver.python"] = f"{ENV_DIR}/bin/python"
        elif driver_python:
            props["spark.pyspark.driver.python"] = driver_python
        else:
            raise SubmitError("--env-archive in client mode needs --driver-python PATH (the driver runs on this "
                              "machine, where the archive is not unpacked), or use --deploy-mode cluster")
    elif driver_python:
        props["spark.pyspark.driver.python"] = driver_python
    props.update(conf or {})
    if "spark.executor.resource.gpu.amount" in props:
        # bootstrap/gpu-discovery.sh claims this many GPUs for each executor.
        props["spark.executorEnv.PROMPTSCORE_GPU_AMOUNT"] = props["spark.executor.resource.gpu.amount"]
    return props


def spark_submit_args(job: str, job_args: Sequence[str], profile: str | Path | None = None,
                      deploy_mode: str | None = None, py_files: str | None = None, jobs_uri: str | None = None,
                      env_archive: str | None = None, driver_python: str | None = None,
                      conf: dict[str, str] | None = None, spark_submit: str = "spark-submit") -> list[str]:
    """The ``spark-submit`` command line for ``job``: the profile as ``--conf`` pairs, then its files."""
    props = submission_conf(job, profile, deploy_mode, env_archive, driver_python, conf)
    cmd = [spark_submit, *conf_args(props)]
    if py_files:
        cmd += ["--py-files", py_files]
    if env_archive:
        cmd += ["--archives", f"{env_archive}#environment"]
    entry = f"{jobs_uri.rstrip('/')}/{job}.py" if jobs_uri else str(find_file(f"jobs/{job}.py"))
    return [*cmd, entry, *job_args]


# -- EMR Serverless Spark ---------------------------------------------------------------------------

def serverless_request(job: str, job_args: Sequence[str], jobs_uri: str, py_files: str | None = None,
                       name: str | None = None, queue: str = "root_queue", release: str | None = None,
                       env_archive: str | None = None, environment_id: str | None = None,
                       profile: str | Path | None = None, conf: dict[str, str] | None = None,
                       client_token: str | None = None, timeout_s: int = 6 * 3600) -> dict:
    """The StartJobRun body for EMR Serverless Spark (job driver: spark-submit).

    The run's Python comes from the workspace's runtime environment ``environment_id`` (set as
    ``spark.emr.serverless.environmentId``) or from a packed environment ``env_archive``; one of
    the two is required, since the job needs pyarrow and this package. ``client_token`` (default: a
    fresh one) makes a retried StartJobRun return the same run; ``timeout_s`` becomes
    ``executionTimeoutSeconds``.
    """
    from promptscore.tools import serverless

    if job not in SERVERLESS_PROFILES:
        raise SubmitError(f"--target serverless takes the convert job only: {job} needs GPU executors "
                          "scheduled by YARN (EMR on ECS)")
    if not environment_id and not env_archive:
        raise SubmitError("--target serverless needs --environment-id ID (the workspace's runtime environment with "
                          "the package's dependencies) or --env-archive URI: see docs/serverless.md")
    token = client_token or serverless.new_client_token()
    if not serverless.CLIENT_TOKEN.fullmatch(token):
        raise SubmitError("--client-token: 1 to 64 characters of A-Z a-z 0-9 . _ -")
    if timeout_s <= 0:
        raise SubmitError("--timeout-seconds must be positive")
    props = read_profile(profile or SERVERLESS_PROFILES[job])
    params = []
    if py_files:
        params += ["--py-files", py_files]
    if env_archive:
        params += ["--archives", f"{env_archive}#environment"]
        props["spark.pyspark.python"] = f"{ENV_DIR}/bin/python"
        props["spark.pyspark.driver.python"] = f"{ENV_DIR}/bin/python"
    if environment_id:
        props[serverless.ENVIRONMENT_CONF] = environment_id
    props.update(conf or {})
    params += conf_args(props)
    return {
        "clientToken": token,
        "name": name or f"promptscore-{job}",
        "releaseVersion": release or serverless.DEFAULT_RELEASE,
        "resourceQueueId": queue,
        "codeType": "PYTHON",
        "executionTimeoutSeconds": timeout_s,
        "jobDriver": {"sparkSubmit": {
            "entryPoint": f"{jobs_uri.rstrip('/')}/{job}.py",
            "entryPointArguments": list(job_args),
            "sparkSubmitParameters": shlex.join(params),
        }},
    }


# -- printing ---------------------------------------------------------------------------------------

def format_command(cmd: Sequence[str], style: str = "shell") -> str:
    """``cmd`` as text: ``shell`` (one quoted line), ``lines`` (quoted, one option per line, for
    scripts) or ``plain`` (tokens joined by spaces, for a DataWorks EMR Spark node's code, where
    ${bizdate} must stay unquoted; refuses tokens that would need quotes)."""
    if style == "plain":
        bad = [t for t in cmd if not t or re.search(r"[\s'\"\\;&|<>`*?\[\]]", t)]
        if bad:
            raise SubmitError(f"--format plain cannot hold {bad[0]!r}: use --format shell")
        return " ".join(cmd)
    if style == "lines":
        parts, i = [shlex.quote(cmd[0])], 1
        while i < len(cmd):
            if cmd[i].startswith("--") and i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
                parts.append(f"{cmd[i]} {shlex.quote(cmd[i + 1])}")
                i += 2
            else:
                parts.append(shlex.quote(cmd[i]))
                i += 1
        return " \\\n  ".join(parts)
    return shlex.join(cmd)


# -- running ----------------------------------------------------------------------------------------

def run(cmd: Sequence[str], cwd: Path | None = None) -> int:
    """Run ``cmd``, passing its output through; return the job's exit code.

    In YARN cluster mode a failed application makes ``spark-submit`` exit 1 whatever the job's
    code; the ApplicationMaster's diagnostics keep it, so it is read back from stderr.
    """
    proc = subprocess.Popen(list(cmd), cwd=cwd, stderr=subprocess.PIPE, text=True, errors="replace")
    user_code = None
    for line in proc.stderr:
        sys.stderr.write(line)
        m = USER_EXIT.search(line)
        if m:
            user_code = int(m.group(1))
    sys.stderr.flush()
    rc = proc.wait()
    if rc != 0 and user_code:
        return user_code
    return rc


def submit_serverless(a: argparse.Namespace, job_args: list[str], conf: dict[str, str]) -> int:
    """``--target serverless``: print the StartJobRun body; with ``--run``, start it and follow it."""
    from promptscore.tools import serverless

    if not a.jobs_uri:
        raise SubmitError("--target serverless needs --jobs-uri (the OSS folder holding convert.py)")
    if a.deploy_mode or a.driver_python:
        raise SubmitError("--target serverless: --deploy-mode and --driver-python do not apply (the service runs "
                          "the driver)")
    if a.run and not (a.workspace_id and a.region):
        raise SubmitError("--target serverless --run needs --workspace-id and --region")
    body = serverless_request(a.job, job_args, a.jobs_uri, a.py_files, name=a.name, queue=a.queue,
                              release=a.release, env_archive=a.env_archive, environment_id=a.environment_id,
                              profile=a.profile, conf=conf, client_token=a.client_token, timeout_s=a.timeout_seconds)
    if not a.run:
        print(json.dumps(body, indent=2), flush=True)
        return 0
    try:
        client = serverless.Client(a.region, serverless.credentials_from_chain(), endpoint=a.api_endpoint)
        print(json.dumps(body, indent=2), flush=True)
        return serverless.run_to_end(client, a.workspace_id, body, poll_s=a.poll_seconds)
    except serverless.ServerlessError as e:
        print(f"submit: error: {e}", file=sys.stderr)
        return 2
    except serverless.ServerlessUnavailable as e:
        print(f"submit: error: {e}; run the same command again (with --client-token {body['clientToken']} it "
              "finds the run if it started)", file=sys.stderr)
        return 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SubmitError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m promptscore.tools.submit", description=__doc__.splitlines()[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Everything after -- goes to the job (jobs/JOB.py --help lists it).")
    p.add_argument("job", nargs="?", choices=sorted(PROFILES), help="the job to submit")
    p.add_argument("--conf-args", metavar="PROFILE",
                   help="only print PROFILE as shell-quoted --conf pairs, for a spark-submit line of your own")
    p.add_argument("--target", choices=("emr", "serverless"), default="emr",
                   help="emr: a spark-submit line (EMR on ECS, or local with --profile conf/local.conf); "
                        "serverless: an EMR Serverless Spark StartJobRun body (convert only)")
    p.add_argument("--profile", "--conf-file", dest="profile", metavar="FILE",
                   help="Spark properties file (default: the job's profile in conf/)")
    p.add_argument("--deploy-mode", choices=("client", "cluster"),
                   help="cluster: the driver runs in YARN (DataWorks nodes, EMR Workflow); default: the profile's")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark property on top of the profile (repeatable)")
    p.add_argument("--py-files", help="the package zip (make package) as a URI; not needed where "
                                      "install-python-env.sh installed the package")
    p.add_argument("--jobs-uri", help="where jobs/*.py were uploaded (default: this checkout's jobs/)")
    p.add_argument("--env-archive", help="a packed Python environment (.tar.gz) for --archives, unpacked as "
                                         f"{ENV_DIR} in every YARN container")
    p.add_argument("--driver-python", help="the driver's Python (client mode runs the driver on this machine)")
    s = p.add_argument_group("EMR Serverless Spark (--target serverless; docs/serverless.md)")
    s.add_argument("--environment-id", metavar="ID",
                   help="the workspace's runtime environment that holds the package's dependencies "
                        "(spark.emr.serverless.environmentId); or ship one with --env-archive")
    s.add_argument("--name", help="the job run's name (default promptscore-JOB)")
    s.add_argument("--queue", default="root_queue", help="resource queue (default root_queue)")
    s.add_argument("--release", help="engine version as ListReleaseVersions names it (default: an esr-4.x "
                                     "engine with Spark 3.5)")
    s.add_argument("--timeout-seconds", type=int, default=6 * 3600,
                   help="executionTimeoutSeconds: the service stops the run after this long (default 21600)")
    s.add_argument("--client-token", metavar="TOKEN",
                   help="idempotence token (default: a new one per call); the same token returns the same "
                        "run, e.g. one derived from the scheduler's instance ID")
    s.add_argument("--workspace-id", metavar="ID", help="with --run: the workspace (w-...)")
    s.add_argument("--region", help="with --run: the workspace's region (e.g. cn-hangzhou)")
    s.add_argument("--api-endpoint", metavar="HOST",
                   help="with --run: the API endpoint (default emr-serverless-spark.REGION.aliyuncs.com)")
    s.add_argument("--poll-seconds", type=float, default=30.0, help="with --run: GetJobRun every N s (default 30)")
    p.add_argument("--format", choices=("shell", "lines", "plain"), default="shell",
                   help="how the line is printed: shell (quoted), lines (one option per line), plain "
                        "(unquoted, for a DataWorks EMR Spark node)")
    p.add_argument("--run", action="store_true",
                   help="run the spark-submit line after printing it; serverless: start the job run (credentials "
                        "from the environment or the ECS RAM role) and wait for its end")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    job_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, job_args = argv[:i], argv[i + 1:]
    try:
        a = build_parser().parse_args(argv)
        if a.conf_args:
            if a.job:
                raise SubmitError("--conf-args PROFILE takes no job")
            print(shlex.join(conf_args(a.conf_args)))
            return 0
        if not a.job:
            raise SubmitError("a job is required: convert or score (see --help)")
        conf = parse_conf(a.conf)
        for where, value in (("--py-files", a.py_files), ("--jobs-uri", a.jobs_uri), ("--env-archive", a.env_archive)):
            check_uri(value, where)
        for word in job_args:
            check_uri(word.partition("=")[2] if word.startswith("-") else word, "a job argument")
        if a.target == "serverless":
            return submit_serverless(a, job_args, conf)
        only = [f for f, v in (("--environment-id", a.environment_id), ("--workspace-id", a.workspace_id),
                               ("--region", a.region), ("--api-endpoint", a.api_endpoint),
                               ("--client-token", a.client_token), ("--release", a.release)) if v]
        if only:
            raise SubmitError(f"{only[0]} is for --target serverless")
        cmd = spark_submit_args(a.job, job_args, a.profile, a.deploy_mode, a.py_files, a.jobs_uri,
                                a.env_archive, a.driver_python, conf)
        text = format_command(cmd, a.format)
    except SubmitError as e:
        print(f"submit: error: {e}", file=sys.stderr)
        return 2
    print(text, flush=True)
    if not a.run:
        return 0
    try:
        return run(cmd)
    except FileNotFoundError:
        print(f"submit: error: {cmd[0]} not found on PATH (run this on the master or a gateway node)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
