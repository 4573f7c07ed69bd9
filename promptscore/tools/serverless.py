"""An EMR Serverless Spark job run from start to end: StartJobRun, then GetJobRun until a final state.

Used by ``python -m promptscore.tools.submit convert --target serverless --run``. Only the standard
library: the EMR Serverless Spark OpenAPI (version 2023-08-08, ROA style) over HTTPS, each request
signed with ACS3-HMAC-SHA256 (signature V3).

- ``StartJobRun``: ``POST /api/v1/workspaces/{workspaceId}/jobRuns?regionId=...``, JSON body; the
  body's ``clientToken`` makes the call idempotent, so a request retried after a lost answer (or the
  same command run again with the same ``--client-token``) does not start a second run.
- ``GetJobRun``: ``GET /api/v1/workspaces/{workspaceId}/jobRuns/{jobRunId}?regionId=...``; states
  Submitted, Pending, Running, Success, Failed, Cancelling, Cancelled, CancelFailed. Polled until
  Success, Failed or Cancelled.

Credentials come from the environment (``ALIBABA_CLOUD_ACCESS_KEY_ID``,
``ALIBABA_CLOUD_ACCESS_KEY_SECRET``, ``ALIBABA_CLOUD_SECURITY_TOKEN``) or else from the RAM role
of the ECS instance this runs on (its metadata service; ``ALIBABA_CLOUD_ECS_METADATA`` names the
role), as the Alibaba Cloud credentials provider chain looks them up. Never from arguments, never
printed. Sources: docs/serverless.md#sources.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Callable, TextIO

API_VERSION = "2023-08-08"
ALGORITHM = "ACS3-HMAC-SHA256"
# "emr-serverless-spark.<region-id>.aliyuncs.com" ("Start a Spark task", Endpoints).
ENDPOINT = "https://emr-serverless-spark.{region}.aliyuncs.com"
# An engine of the esr-4.x series, Spark 3.5.2 ("Engine versions"), written as ListReleaseVersions
# names them. The versions on offer differ by region and time: `--release` picks another.
DEFAULT_RELEASE = "esr-4.3.0 (Spark 3.5.2, Scala 2.12, Java Runtime)"
FINAL_STATES = ("Success", "Failed", "Cancelled")
# ``spark.emr.serverless.environmentId``: the runtime environment of a job run ("Custom Spark
# parameters"). The environment holds the Python libraries the job needs.
ENVIRONMENT_CONF = "spark.emr.serverless.environmentId"
CLIENT_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")
USER_EXIT = re.compile(r"(?:exited with (?:status|code)|exit code)[ :=]*(\d+)", re.I)
# Answers worth asking again: throttling and the service's own failures.
RETRY_STATUS = (429, 500, 502, 503, 504)
RETRY_CODES = re.compile(r"Throttling|ServiceUnavailable|InternalError", re.I)


class ServerlessError(Exception):
    """The call is wrong or was refused (exit 2): a bad flag, no credentials, an API error."""


class ServerlessUnavailable(Exception):
    """The service did not answer after the retries (exit 1: the same command may work later)."""


# -- credentials ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """An AccessKey pair, with an STS token when it is temporary. Never shown."""

    access_key_id: str = field(repr=False)
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


def credentials_from_chain(environ: dict | None = None) -> Callable[[], Credentials]:
    """A function returning current credentials: the environment's, else the ECS instance's RAM role.

    Checked now, so that missing credentials fail before anything is sent.
    """
    env = os.environ if environ is None else environ
    key_id, secret = env.get("ALIBABA_CLOUD_ACCESS_KEY_ID"), env.get("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    if key_id and secret:
        fixed = Credentials(key_id, secret, env.get("ALIBABA_CLOUD_SECURITY_TOKEN") or None)
        return lambda: fixed
    from promptscore.tools.ecs_metadata import Metadata, MetadataError, RoleCredentialsProvider

    provider = RoleCredentialsProvider(Metadata(timeout_s=2.0), role=env.get("ALIBABA_CLOUD_ECS_METADATA") or None)

    def from_role() -> Credentials:
        c = provider.get_credentials()
        return Credentials(c.access_key_id, c.access_key_secret, c.security_token)

    try:
        from_role()
    except MetadataError as e:
        raise ServerlessError(f"no credentials: set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET "
                              f"in the environment, or run this on an ECS instance with a RAM role ({e})") from None
    return from_role


# -- signing (V3) -----------------------------------------------------------------------------------

def percent_encode(text: str) -> str:
    """RFC 3986 encoding: only A-Z a-z 0-9 - _ . ~ stay as they are."""
    return urllib.parse.quote(text, safe="-_.~")


def encode_path(path: str) -> str:
    """A resource path with each segment percent-encoded (``/`` kept)."""
    return "/".join(percent_encode(part) for part in path.split("/")) or "/"


def canonical_query(query: dict[str, str]) -> str:
    """The query parameters sorted by name, names and values percent-encoded."""
    return "&".join(f"{percent_encode(k)}={percent_encode(str(v))}" for k, v in sorted(query.items()))


def sign(method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes,
         credentials: Credentials) -> dict[str, str]:
    """``headers`` plus ``x-acs-content-sha256`` and ``Authorization`` for this request (signature V3).

    ``headers`` must hold ``host``, ``x-acs-action``, ``x-acs-version``, ``x-acs-date`` and
    ``x-acs-signature-nonce``. Signed are ``host``, ``content-type`` and every ``x-acs-*`` header.
    """
    out = {k.lower(): v.strip() for k, v in headers.items()}
    out["x-acs-content-sha256"] = hashlib.sha256(body).hexdigest()
    if credentials.security_token:
        out["x-acs-security-token"] = credentials.security_token
    signed = sorted(k for k in out if k in ("host", "content-type") or k.startswith("x-acs-"))
    canonical_uri = encode_path(path)
    canonical_request = "\n".join([
        method.upper(), canonical_uri, canonical_query(query),
        "".join(f"{k}:{out[k]}\n" for k in signed), ";".join(signed), out["x-acs-content-sha256"]])
    string_to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    signature = hmac.new(credentials.access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"{ALGORITHM} Credential={credentials.access_key_id},"
                            f"SignedHeaders={';'.join(signed)},Signature={signature}")
    return out


# -- the API ----------------------------------------------------------------------------------------

class Client:
    """StartJobRun and GetJobRun of one region's EMR Serverless Spark, retrying what may pass."""

    def __init__(self, region: str, credentials: Callable[[], Credentials], endpoint: str | None = None,
                 timeout_s: float = 30.0, attempts: int = 6, backoff_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep):
        url = endpoint or ENDPOINT.format(region=region)
        if "://" not in url:
            url = f"https://{url}"
        parts = urllib.parse.urlsplit(url)
        self.scheme, self.host, self.region = parts.scheme, parts.netloc, region
        self.credentials, self.timeout_s = credentials, timeout_s
        self.attempts, self.backoff_s, self.sleep = attempts, backoff_s, sleep

    def call(self, action: str, method: str, path: str, body: dict | None = None) -> dict:
        """One API call: the decoded JSON answer. The same request (same body, same clientToken)
        is sent again after a connection failure, throttling or a 5xx answer."""
        query = {"regionId": self.region}
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        url = f"{self.scheme}://{self.host}{encode_path(path)}?{canonical_query(query)}"
        last = ""
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(min(self.backoff_s * 2 ** (attempt - 1), 60.0))
            headers = {"host": self.host, "x-acs-action": action, "x-acs-version": API_VERSION,
                       "x-acs-date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "x-acs-signature-nonce": uuid.uuid4().hex, "accept": "application/json"}
            if body is not None:
                headers["content-type"] = "application/json"
            signed = sign(method, path, query, headers, data, self.credentials())
            req = urllib.request.Request(url, data=data if body is not None else None, method=method,
                                         headers={k: v for k, v in signed.items() if k != "host"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    return json.loads(r.read().decode() or "{}")
            except urllib.error.HTTPError as e:
                code, message, request_id = _error_fields(e)
                if e.code in RETRY_STATUS or RETRY_CODES.search(code):
                    last = f"HTTP {e.code} {code}".strip()
                    continue
                raise ServerlessError(f"{action} refused: HTTP {e.code} {code}: {message}"
                                      f"{f' (request {request_id})' if request_id else ''}") from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                last = type(e).__name__ if not str(e) else f"{type(e).__name__}: {e}"
                continue
        raise ServerlessUnavailable(f"{action}: no answer from {self.host} after {self.attempts} attempts ({last})")

    def start_job_run(self, workspace: str, body: dict) -> str:
        """Start the job run; its ID."""
        answer = self.call("StartJobRun", "POST", f"/api/v1/workspaces/{workspace}/jobRuns", body)
        run_id = answer.get("jobRunId")
        if not run_id:
            raise ServerlessError(f"StartJobRun answered without a jobRunId (request {answer.get('requestId')})")
        return run_id

    def get_job_run(self, workspace: str, run_id: str) -> dict:
        """The job run's details (``jobRun`` of GetJobRun)."""
        return self.call("GetJobRun", "GET", f"/api/v1/workspaces/{workspace}/jobRuns/{run_id}").get("jobRun") or {}


def _error_fields(e: urllib.error.HTTPError) -> tuple[str, str, str]:
    try:
        doc = json.loads(e.read().decode() or "{}")
    except (ValueError, OSError):
        doc = {}
    pick = lambda *names: next((str(doc[n]) for n in names if doc.get(n)), "")  # noqa: E731
    return pick("code", "Code"), pick("message", "Message") or e.reason, pick("requestId", "RequestId")


# -- a run from start to end ------------------------------------------------------------------------

def new_client_token() -> str:
    """A fresh idempotence token (32 hex digits)."""
    return uuid.uuid4().hex


def exit_code(run: dict) -> int:
    """The exit code a final job run stands for: 0 for Success; for Failed the job's own code (2, 3 or
    4) when the state change reason carries it, else 1; 1 for Cancelled."""
    state = run.get("state")
    if state == "Success":
        return 0
    reason = run.get("stateChangeReason") or {}
    m = USER_EXIT.search(f"{reason.get('message') or ''} {reason.get('code') or ''}")
    if state == "Failed" and m and int(m.group(1)) in (2, 3, 4):
        return int(m.group(1))
    return 1


def run_to_end(client: Client, workspace: str, body: dict, poll_s: float = 30.0, max_wait_s: float | None = None,
               out: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> int:
    """Start ``body`` as a job run in ``workspace``, poll it to a final state, say where its logs are;
    return the exit code it stands for (``exit_code``)."""
    import sys

    out = out or sys.stderr
    run_id = client.start_job_run(workspace, body)
    print(f"serverless: job run {run_id} started in workspace {workspace} (clientToken {body.get('clientToken')})",
          file=out, flush=True)
    started = clock()
    limit = max_wait_s if max_wait_s is not None else float(body.get("executionTimeoutSeconds") or 86400) + 1800
    last_state = None
    while True:
        run = client.get_job_run(workspace, run_id)
        state = run.get("state") or "?"
        if state != last_state:
            print(f"serverless: {run_id} {state} after {clock() - started:.0f} s", file=out, flush=True)
            last_state = state
        if state in FINAL_STATES:
            break
        if clock() - started > limit:
            print(f"serverless: error: {run_id} still {state} after {limit:.0f} s; it was not cancelled: see it in "
                  "the workspace's job history", file=out, flush=True)
            return 1
        sleep(poll_s)
    for name, where in (run.get("log") or {}).items():
        if where:
            print(f"serverless: log {name}: {where}", file=out)
    if run.get("webUI"):
        print(f"serverless: Spark UI: {run['webUI']}", file=out)
    code = exit_code(run)
    reason = run.get("stateChangeReason") or {}
    why = " ".join(str(reason.get(k)) for k in ("code", "message") if reason.get(k))
    print(f"serverless: {run_id} {state}{f': {why}' if why else ''}; exit {code}", file=out, flush=True)
    return code
