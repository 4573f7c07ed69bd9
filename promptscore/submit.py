"""The full submission of a job, printed (and run when asked): ``make submit JOB=convert ARGS=...``.

    python -m promptscore.submit convert -- --input oss://b/raw/ --output oss://b/prompts/
    python -m promptscore.submit score --run -- --input ... --output ... --model /mnt/models/rm
    python -m promptscore.submit convert --target serverless --jobs-uri oss://b/jobs -- ...

``--target emr`` (default) gives the ``spark-submit`` line for an EMR cluster (its master node, an
EMR Shell node of DataWorks, a job step): the job's properties file from ``conf/``, the package
as ``--py-files``, and, with ``--env-archive``, a packed Python environment as ``--archives``.
``--target serverless`` gives the request body of EMR Serverless Spark's StartJobRun (a Spark
Submit job run), with the same parameters. Credentials are never part of either.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILES = {"convert": "conf/emr-convert.conf", "score": "conf/emr-score-gpu.conf"}


def spark_submit_args(job: str, job_args: list[str], py_files: str, jobs_uri: str | None = None,
                      conf_file: str | None = None, env_archive: str | None = None,
                      spark_submit: str = "spark-submit") -> list[str]:
    """The ``spark-submit`` command line for ``job`` on an EMR cluster."""
    cmd = [spark_submit, "--properties-file", conf_file or PROFILES[job], "--py-files", py_files]
    if env_archive:
        # The executors unpack the environment and run its Python (YARN: ./environment/...).
        cmd += ["--archives", f"{env_archive}#environment",
                "--conf", "spark.pyspark.python=./environment/bin/python"]
    entry = f"{jobs_uri.rstrip('/')}/{job}.py" if jobs_uri else f"jobs/{job}.py"
    return cmd + [entry, *job_args]


def serverless_request(job: str, job_args: list[str], py_files: str, jobs_uri: str, name: str | None = None,
                       queue: str = "root_queue", release: str = "<Spark 3.5 engine version>",
                       env_archive: str | None = None) -> dict:
    """The StartJobRun body for EMR Serverless Spark (job driver: spark-submit)."""
    params = ["--py-files", py_files]
    if env_archive:
        params += ["--archives", f"{env_archive}#environment",
                   "--conf", "spark.pyspark.python=./environment/bin/python"]
    params += ["--conf", "spark.sql.parquet.compression.codec=zstd"]
    if job == "convert":
        params += ["--conf", "spark.sql.files.openCostInBytes=8k"]
    return {
        "name": name or f"promptscore-{job}",
        "releaseVersion": release,
        "resourceQueueId": queue,
        "codeType": "PYTHON",
        "jobDriver": {"sparkSubmit": {
            "entryPoint": f"{jobs_uri.rstrip('/')}/{job}.py",
            "entryPointArguments": job_args,
            "sparkSubmitParameters": shlex.join(params),
        }},
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    job_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, job_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m promptscore.submit", description=__doc__.splitlines()[0])
    p.add_argument("job", choices=sorted(PROFILES))
    p.add_argument("--target", choices=("emr", "serverless"), default="emr")
    p.add_argument("--py-files", default="dist/promptscore.zip", help="the package zip (make package), or a URI")
    p.add_argument("--jobs-uri", help="where jobs/*.py were uploaded (default: this checkout's jobs/)")
    p.add_argument("--conf-file", help="properties file (default: the job's EMR profile in conf/)")
    p.add_argument("--env-archive", help="a packed Python environment (.tar.gz) to ship with --archives")
    p.add_argument("--queue", default="root_queue", help="serverless: resource queue")
    p.add_argument("--release", default="<Spark 3.5 engine version>", help="serverless: engine version")
    p.add_argument("--run", action="store_true", help="run the spark-submit line instead of only printing it")
    a = p.parse_args(argv)
    if a.target == "serverless":
        if not a.jobs_uri:
            p.error("--target serverless needs --jobs-uri (the OSS folder holding convert.py and score.py)")
        print(json.dumps(serverless_request(a.job, job_args, a.py_files, a.jobs_uri, queue=a.queue,
                                            release=a.release, env_archive=a.env_archive), indent=2))
        return 0
    cmd = spark_submit_args(a.job, job_args, a.py_files, a.jobs_uri, a.conf_file, a.env_archive)
    print(shlex.join(cmd), flush=True)
    if not a.run:
        return 0
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
