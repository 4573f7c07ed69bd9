"""The ECS instance metadata service: the instance's region and its RAM role's credentials.

An instance may allow only the security hardening mode (``HttpTokens=required``): a client first
asks for a token, ``PUT /latest/api/token`` with ``X-aliyun-ecs-metadata-token-ttl-seconds``, and
sends it as ``X-aliyun-ecs-metadata-token`` with every ``GET /latest/meta-data/...``. ``Metadata``
always asks for a token first and falls back to plain GETs (normal mode) when it gets none.

The service's address is ``http://100.100.100.200``, or ``$PROMPTSCORE_ECS_METADATA_URL`` (for
tests). Nothing read here is ever printed: errors name the item, never its value.
"""

from __future__ import annotations

import calendar
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

DEFAULT_URL = "http://100.100.100.200"
URL_ENV = "PROMPTSCORE_ECS_METADATA_URL"
TOKEN_TTL_HEADER = "X-aliyun-ecs-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aliyun-ecs-metadata-token"
TOKEN_TTL_S = 21600  # the longest the service grants


class MetadataError(Exception):
    """The metadata service did not answer (one line: which item, and why)."""


class Metadata:
    """A client of the instance's metadata service, hardened mode first."""

    def __init__(self, url: str | None = None, timeout_s: float = 3.0):
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._token_until = 0.0
        self._lock = threading.Lock()

    def _new_token(self) -> str | None:
        req = urllib.request.Request(f"{self.url}/latest/api/token", method="PUT",
                                     headers={TOKEN_TTL_HEADER: str(TOKEN_TTL_S)})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.read().decode().strip() or None
        except (OSError, ValueError, http.client.HTTPException):
            return None  # no hardened mode here (or not now): plain GETs

    def _current_token(self, renew: bool = False) -> str | None:
        with self._lock:
            if renew or self._token is None or time.monotonic() >= self._token_until:
                self._token = self._new_token()
                self._token_until = time.monotonic() + TOKEN_TTL_S - 60
            return self._token

    def _read(self, path: str, token: str | None) -> str:
        headers = {TOKEN_HEADER: token} if token else {}
        req = urllib.request.Request(f"{self.url}/latest/meta-data/{path}", headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
            return r.read().decode().strip()

    def get(self, path: str) -> str:
        """The metadata item ``path`` (e.g. ``region-id``), as text."""
        token = self._current_token()
        try:
            try:
                return self._read(path, token)
            except urllib.error.HTTPError as e:
                if e.code not in (401, 403):
                    raise
                # A token that expired or was revoked early, or a service that wanted one.
                return self._read(path, self._current_token(renew=True))
        except (OSError, ValueError, http.client.HTTPException) as e:
            reason = f"HTTP {e.code}" if isinstance(e, urllib.error.HTTPError) else type(e).__name__
            raise MetadataError(f"cannot read ECS metadata {path} from {self.url}: {reason}") from None


@dataclass(frozen=True)
class RoleCredentials:
    """Temporary (STS) credentials of a RAM role, with the methods oss2 reads credentials by."""

    access_key_id: str = field(repr=False)
    access_key_secret: str = field(repr=False)
    security_token: str = field(repr=False)
    expiration: float  # Unix time

    def get_access_key_id(self) -> str:
        """For oss2."""
        return self.access_key_id

    def get_access_key_secret(self) -> str:
        """For oss2."""
        return self.access_key_secret

    def get_security_token(self) -> str:
        """For oss2."""
        return self.security_token


def role_credentials(metadata: Metadata, role: str | None = None) -> RoleCredentials:
    """The current credentials of ``role``, or of the RAM role attached to the instance."""
    if not role:
        roles = metadata.get("ram/security-credentials/").split()
        if not roles:
            raise MetadataError("no RAM role is attached to this instance")
        role = roles[0]
    text = metadata.get(f"ram/security-credentials/{role}")
    try:
        doc = json.loads(text)
        if doc.get("Code") != "Success":
            raise MetadataError(f"the credentials of RAM role {role} are not available (Code {doc.get('Code')!r})")
        return RoleCredentials(doc["AccessKeyId"], doc["AccessKeySecret"], doc["SecurityToken"],
                               calendar.timegm(time.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ")))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MetadataError(f"the credentials of RAM role {role} are malformed") from None


class RoleCredentialsProvider:
    """The instance's RAM role credentials for oss2 (``get_credentials``), fetched again some minutes
    before they expire; a failed refresh keeps the old ones while they last."""

    def __init__(self, metadata: Metadata | None = None, role: str | None = None, refresh_before_s: float = 900):
        self.metadata = metadata or Metadata()
        self.role = role
        self.refresh_before_s = refresh_before_s
        self._credentials: RoleCredentials | None = None
        self._lock = threading.Lock()

    def get_credentials(self) -> RoleCredentials:
        """Credentials valid for at least a while longer."""
        with self._lock:
            current = self._credentials
            if current is None or time.time() >= current.expiration - self.refresh_before_s:
                try:
                    self._credentials = role_credentials(self.metadata, self.role)
                except MetadataError:
                    if current is None or time.time() >= current.expiration:
                        raise
            assert self._credentials is not None
            return self._credentials
