"""An EMR Serverless Spark run from start to end (promptscore.tools.serverless, submit --target serverless --run),
against a local HTTP server that answers with the recorded API responses in tests/serverless_api/ and
checks every request's V3 signature the way the service does. No network."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shlex
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from conftest import ROOT

from promptscore.tools import serverless
from promptscore.tools.serverless import Client, Credentials, ServerlessUnavailable, exit_code, sign

RESPONSES = Path(__file__).parents[1] / "serverless_api"
KEY_ID, SECRET = "LTAI5tFAKEserverlessKEYid", "FAKEserverlessSECRETforTESTSonly42"
WORKSPACE = "w-d2d82aa09155****"


def recorded(name: str) -> dict:
    return json.loads((RESPONSES / f"{name}.json").read_text())


def test_the_signature_is_the_documented_example():
    # The request of the V3 signature documentation's example ("ROA风格请求体&签名机制", Alibaba Cloud
    # Model Studio; docs/serverless.md#sources): its Authorization header, to the last hex digit.
    headers = {"host": "ecs.cn-shanghai.aliyuncs.com", "x-acs-action": "RunInstances", "x-acs-version": "2014-05-26",
               "x-acs-date": "2023-10-26T09:01:01Z", "x-acs-signature-nonce": "d410180a5abf7fe235dd9b74aca91fc0"}
    query = {"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"}
    signed = sign("POST", "/", query, headers, b"", Credentials("YourAccessKeyId", "YourAccessKeySecret"))
    assert signed["x-acs-content-sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert signed["authorization"] == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
        "x-acs-date;x-acs-signature-nonce;x-acs-version,"
        "Signature=e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804")


def check_signature(method: str, raw_path: str, headers: dict[str, str], body: bytes, secrets: dict[str, str]) -> str:
    """The service's side: recompute the signature from the request as it arrived. Returns '' when it
    holds, else what is wrong."""
    auth = headers.get("authorization", "")
    if not auth.startswith("ACS3-HMAC-SHA256 "):
        return "no ACS3-HMAC-SHA256 authorization"
    fields = dict(part.split("=", 1) for part in auth.removeprefix("ACS3-HMAC-SHA256 ").split(","))
    if fields["Credential"] not in secrets:
        return "InvalidAccessKeyId"
    if hashlib.sha256(body).hexdigest() != headers.get("x-acs-content-sha256"):
        return "body hash differs"
    names = fields["SignedHeaders"].split(";")
    if not {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce",
            "x-acs-content-sha256"} <= set(names) or names != sorted(names):
        return "headers not signed"
    url = urlsplit(raw_path)
    query = "&".join(sorted(url.query.split("&"))) if url.query else ""
    canonical = "\n".join([method, url.path, query, "".join(f"{n}:{headers[n].strip()}\n" for n in names),
                           ";".join(names), headers["x-acs-content-sha256"]])
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    expected = hmac.new(secrets[fields["Credential"]].encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return "" if hmac.compare_digest(expected, fields["Signature"]) else "SignatureDoesNotMatch"


class FakeService:
    """EMR Serverless Spark's two operations on 127.0.0.1: StartJobRun (idempotent on clientToken)
    and GetJobRun answering with the recorded responses in ``states`` order (the last repeats)."""

    def __init__(self, states: list[str], start_failures: int = 0, secrets: dict | None = None,
                 tokens: dict | None = None):
        self.states, self.start_failures = list(states), start_failures
        self.secrets = secrets or {KEY_ID: SECRET}
        self.tokens = tokens or {}
        self.requests: list[dict] = []
        self.runs: dict[str, str] = {}  # clientToken -> jobRunId
        service = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer = service.handle(self.command, self.path, headers, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # A short poll: shutdown() waits for the loop to see it.
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def handle(self, method: str, raw_path: str, headers: dict, body: bytes) -> tuple[int, dict]:
        url = urlsplit(raw_path)
        self.requests.append({"method": method, "path": unquote(url.path), "query": dict(parse_qsl(url.query)),
                              "headers": headers, "body": json.loads(body) if body else None})
        problem = check_signature(method, raw_path, headers, body, self.secrets)
        key_id = headers.get("authorization", "").split("Credential=")[-1].split(",")[0]
        if not problem and self.tokens.get(key_id) != headers.get("x-acs-security-token"):
            problem = "InvalidSecurityToken"
        if problem:
            return 403, {"requestId": "R-1", "code": problem,
                         "message": f"Specified signature is not valid ({problem})"}
        if headers.get("x-acs-version") != "2023-08-08" or dict(parse_qsl(url.query)).get("regionId") != "cn-hangzhou":
            return 400, {"requestId": "R-2", "code": "InvalidParameter", "message": "version or region"}
        path = unquote(url.path)
        start = path == f"/api/v1/workspaces/{WORKSPACE}/jobRuns" and headers["x-acs-action"] == "StartJobRun"
        if method == "POST" and start:
            if self.start_failures:
                self.start_failures -= 1
                return 503, {"requestId": "R-3", "code": "ServiceUnavailable", "message": "try again"}
            token = json.loads(body)["clientToken"]
            answer = recorded("start-job-run")
            self.runs.setdefault(token, answer["jobRunId"])
            return 200, answer
        if method == "GET" and path == f"/api/v1/workspaces/{WORKSPACE}/jobRuns/jr-93d98d2f7061****":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return 200, recorded(f"get-job-run-{state}")
        return 404, {"requestId": "R-4", "code": "NotFound", "message": path}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service():
    made = []

    def make(*args, **kwargs) -> FakeService:
        made.append(FakeService(*args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIBABA_CLOUD_", "OSS_"))}
    return {**env, **extra}


def run_cli(url: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["convert", "--target", "serverless", "--jobs-uri", "oss://my-bucket/promptscore/jobs",
            "--environment-id", "ev-cq3mmfdlhtgm****", "--run", "--workspace-id", WORKSPACE, "--region", "cn-hangzhou",
            "--api-endpoint", url, "--poll-seconds", "0.01", *extra,
            "--", "--input", "oss://my-bucket/raw/", "--output", "oss://my-bucket/prompts/"]
    if env is None:
        env = clean_env(ALIBABA_CLOUD_ACCESS_KEY_ID=KEY_ID, ALIBABA_CLOUD_ACCESS_KEY_SECRET=SECRET)
    return subprocess.run([sys.executable, "-m", "promptscore.tools.submit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def test_a_run_from_start_to_end(service):
    api = service(["submitted", "running", "running", "success"], start_failures=1)
    proc = run_cli(api.url)
    assert proc.returncode == 0, proc.stderr
    starts = [r for r in api.requests if r["method"] == "POST"]
    # The first StartJobRun got a 503; the retry carried the same body and clientToken: one run.
    assert len(starts) == 2 and starts[0]["body"] == starts[1]["body"] and len(api.runs) == 1
    body = starts[0]["body"]
    assert body == json.loads(proc.stdout)  # what was printed is what was sent
    assert body["releaseVersion"].startswith("esr-4.") and "Spark 3.5" in body["releaseVersion"]
    assert body["executionTimeoutSeconds"] == 21600 and body["codeType"] == "PYTHON"
    assert body["resourceQueueId"] == "root_queue" and len(body["clientToken"]) == 32
    params = shlex.split(body["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"])
    assert "spark.emr.serverless.environmentId=ev-cq3mmfdlhtgm****" in params
    assert body["jobDriver"]["sparkSubmit"]["entryPoint"] == "oss://my-bucket/promptscore/jobs/convert.py"
    gets = [r for r in api.requests if r["method"] == "GET"]
    assert len(gets) == 4 and all(r["headers"]["x-acs-action"] == "GetJobRun" for r in gets)
    lines = proc.stderr.splitlines()
    assert [line.split()[2] for line in lines if " after " in line and line.startswith("serverless: jr-")] == \
        ["Submitted", "Running", "Success"]  # each state once, as it changed
    assert any("log driverStdError: oss://my-bucket/spark-logs/" in line for line in lines)
    assert lines[-1].endswith("Success; exit 0")
    assert SECRET not in proc.stdout + proc.stderr and KEY_ID not in proc.stdout + proc.stderr


@pytest.mark.parametrize("final, code, says", [
    ("failed", 1, "Failed: ERR-100000 connection refused; exit 1"),
    ("failed-exit-3", 3, "User application exited with status 3; exit 3"),
    ("cancelled", 1, "Cancelled: ERR-100000 cancelled; exit 1"),
])
def test_the_exit_code_follows_the_final_state(service, final, code, says):
    api = service(["running", final])
    proc = run_cli(api.url)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(says)


def test_the_same_client_token_finds_the_same_run(service):
    api = service(["success"])
    first = run_cli(api.url, "--client-token", "convert-20261122-1")
    again = run_cli(api.url, "--client-token", "convert-20261122-1")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert list(api.runs) == ["convert-20261122-1"]
    assert json.loads(first.stdout)["clientToken"] == json.loads(again.stdout)["clientToken"] == "convert-20261122-1"


def test_credentials_from_the_instance_ram_role(service, monkeypatch):
    from standins import ROLE_CREDENTIALS, MetadataStandIn

    role = {ROLE_CREDENTIALS["AccessKeyId"]: ROLE_CREDENTIALS["AccessKeySecret"]}
    api = service(["success"], secrets=role,
                  tokens={ROLE_CREDENTIALS["AccessKeyId"]: ROLE_CREDENTIALS["SecurityToken"]})
    with MetadataStandIn("hardened") as metadata:
        proc = run_cli(api.url, env=clean_env(PROMPTSCORE_ECS_METADATA_URL=metadata.url))
    assert proc.returncode == 0, proc.stderr
    assert all(r["headers"]["x-acs-security-token"] == ROLE_CREDENTIALS["SecurityToken"] for r in api.requests)
    assert not any(v in proc.stdout + proc.stderr for v in ROLE_CREDENTIALS.values())


@pytest.mark.parametrize("env, says", [
    ({"ALIBABA_CLOUD_ACCESS_KEY_ID": KEY_ID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "not-the-secret"},
     "StartJobRun refused: HTTP 403 SignatureDoesNotMatch"),
    ({"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI5tUNKNOWN", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": SECRET},
     "StartJobRun refused: HTTP 403 InvalidAccessKeyId"),
    ({"PROMPTSCORE_ECS_METADATA_URL": "http://127.0.0.1:9"}, "no credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID"),
])
def test_refused_credentials_are_one_line_and_exit_2(service, env, says):
    api = service(["success"])
    proc = run_cli(api.url, env=clean_env(**env))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("submit: error: ") and says in errors[0], proc.stderr
    assert "not-the-secret" not in proc.stderr and SECRET not in proc.stderr


def test_a_service_that_does_not_answer_is_exit_1_and_retried_with_the_same_token(service):
    api = service(["success"], start_failures=100)
    slept = []
    client = Client("cn-hangzhou", lambda: Credentials(KEY_ID, SECRET), endpoint=api.url, attempts=4,
                    sleep=slept.append)
    with pytest.raises(ServerlessUnavailable, match=r"StartJobRun: no answer from 127.0.0.1:\d+ after 4 attempts"):
        client.start_job_run(WORKSPACE, {"clientToken": "t-1", "name": "x"})
    assert slept == [2.0, 4.0, 8.0]
    assert [r["body"]["clientToken"] for r in api.requests] == ["t-1"] * 4 and not api.runs
    closed = Client("cn-hangzhou", lambda: Credentials(KEY_ID, SECRET), endpoint="http://127.0.0.1:9", attempts=2,
                    sleep=slept.append)
    with pytest.raises(ServerlessUnavailable, match="after 2 attempts"):
        closed.get_job_run(WORKSPACE, "jr-1")


def test_a_run_that_never_ends_is_given_up_after_its_timeout(service):
    api = service(["running"])
    ticks = iter(range(0, 10_000, 600))
    client = Client("cn-hangzhou", lambda: Credentials(KEY_ID, SECRET), endpoint=api.url)
    out = []

    class Out:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    code = serverless.run_to_end(client, WORKSPACE, {"clientToken": "t", "executionTimeoutSeconds": 600},
                                 poll_s=0, out=Out(), clock=lambda: next(ticks), sleep=lambda s: None)
    assert code == 1 and "still Running after 2400 s; it was not cancelled" in "".join(out)


@pytest.mark.parametrize("state, reason, code", [
    ("Success", {}, 0), ("Failed", {"message": "User application exited with status 2"}, 2),
    ("Failed", {"message": "Container exited with code 137"}, 1), ("Failed", {}, 1), ("Cancelled", {}, 1)])
def test_exit_codes_of_final_states(state, reason, code):
    assert exit_code({"state": state, "stateChangeReason": reason}) == code


@pytest.mark.parametrize("args, error", [
    ([], "needs --environment-id ID"),
    (["--environment-id", "ev-1", "--client-token", "has space"], "--client-token: 1 to 64 characters"),
    (["--environment-id", "ev-1", "--run"], "--run needs --workspace-id and --region"),
    (["--environment-id", "ev-1", "--deploy-mode", "cluster"], "--deploy-mode and --driver-python do not apply"),
    (["--environment-id", "ev-1", "--timeout-seconds", "0"], "--timeout-seconds must be positive"),
])
def test_bad_serverless_calls_are_one_line_and_exit_2(args, error):
    proc = subprocess.run([sys.executable, "-m", "promptscore.tools.submit", "convert", "--target", "serverless",
                           "--jobs-uri", "oss://b/jobs", *args, "--", "--input", "x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and error in proc.stderr, proc.stderr


def test_an_env_archive_stands_in_for_a_runtime_environment():
    from promptscore.tools.submit import serverless_request

    body = serverless_request("convert", [], "oss://b/jobs", env_archive="oss://b/env.tar.gz", client_token="t-2")
    params = shlex.split(body["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"])
    assert params[:2] == ["--archives", "oss://b/env.tar.gz#environment"] and body["clientToken"] == "t-2"
    assert "spark.pyspark.python=./environment/bin/python" in params
    assert not [p for p in params if p.startswith(serverless.ENVIRONMENT_CONF)]
